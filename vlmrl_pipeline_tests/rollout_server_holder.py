"""A process that holds a rollout server through the Dagster resource, as the ``lora_adapter`` step does, prints
the server's pids and waits: the test SIGKILLs it and checks that no server process outlives it."""

from __future__ import annotations

import json
import sys
import time

from vlmrl_pipeline.resources import RolloutServerResource


def main() -> None:
    log_dir, child_pid_file = sys.argv[1], sys.argv[2]
    command = [sys.executable, "-m", "vlmrl_pipeline_tests.rollout_fake_server", "--host", "{host}", "--port",
               "{port}", "--spawn-child", child_pid_file]
    resource = RolloutServerResource(gpus="0", startup_timeout_s=60, stop_grace_s=1)
    with resource.serving("unused-model", log_dir=log_dir, command=command) as server:
        print(json.dumps({"server_pid": server.process.pid, "watchdog_pid": server.watchdog.pid,
                          "base_url": server.base_url}), flush=True)
        time.sleep(3600)


if __name__ == "__main__":
    main()
