"""A stand-in for ``trl vllm-serve`` in the rollout server tests: it speaks the same health protocol (``GET /health``
answers 200 once it serves, ``GET /v1/models`` names the model) and can misbehave on request."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0, help="answer 503 on /health for this long")
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--exit-code", type=int, default=None, help="print --say and exit with this code at once")
    parser.add_argument("--say", default="")
    parser.add_argument("--spawn-child", default=None, help="start a sleeping child and write its pid here")
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()
    print(f"fake rollout server on {args.host}:{args.port}", flush=True)
    if args.say:
        print(args.say, flush=True)
    if args.exit_code is not None:
        sys.exit(args.exit_code)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_child:  # like vLLM's engine-core process: in the server's process group
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                  "signal.SIG_IGN); time.sleep(3600)"])
        with open(args.spawn_child, "w") as f:
            f.write(str(child.pid))
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            ready = not args.never_ready and time.monotonic() - started >= args.ready_after
            if self.path == "/health":
                self.send_response(200 if ready else 503)
                self.end_headers()
            elif self.path == "/v1/models" and ready:
                body = json.dumps({"data": [{"id": "fake"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *a):
            pass

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
