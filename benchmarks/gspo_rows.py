"""gspo_benchmark.py's side of the results file, and its children run from the parent: rows merged by
(model, backend, kind), a failure never replacing a success; each child in a fresh process with a timeout."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_common import make_log, write_rows_atomically
from benchmarks.gspo_configs import ARCHS, BACKENDS

log = make_log("bench")

CHILD_SCRIPT = Path(__file__).with_name("gspo_benchmark.py")
"""The script a child runs as (``--child SPEC``): the same command line as before the split."""


def load_results(path: Path) -> list[dict]:
    if path.exists():
        return json.loads(path.read_text())
    return []


def merge_result(path: Path, entry: dict) -> None:
    """Replace the entry with the same (model, backend, kind), except that a failure never replaces a success."""
    entries = load_results(path)
    key = (entry["model"], entry["backend"], entry["kind"])
    kept = []
    for e in entries:
        if (e["model"], e["backend"], e["kind"]) == key:
            if e.get("status") == "ok" and entry.get("status") != "ok":
                log(f"keeping the earlier successful entry for {key}; this run: {entry.get('status')}")
                return
            continue
        kept.append(e)
    kept.append(entry)
    order = {n: i for i, n in enumerate(a["name"] for a in ARCHS.values())}
    kept.sort(key=lambda e: (order.get(e["model"], 9), e["kind"] == "eval", e["kind"],
                             BACKENDS.index(e["backend"]) if e["backend"] in BACKENDS else 9))
    write_rows_atomically(path, kept)


def run_child(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        spec = dict(spec, result_path=str(Path(d) / "result.json"))
        spec_path = Path(d) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.Popen([sys.executable, str(CHILD_SCRIPT), "--child", str(spec_path)], start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "failed", "error": f"timeout after {timeout:.0f}s (--deadline-s)"}
        rp = Path(spec["result_path"])
        if rp.exists():
            return json.loads(rp.read_text())
        return {"status": "failed", "error": f"child exited with {rc} and wrote no result"}


def run_timed_child(spec: dict, timeout: float, label: str) -> dict:
    """:func:`run_child` with its wall time recorded and a failure logged under ``label``."""
    t0 = time.perf_counter()
    res = run_child(spec, timeout)
    res["child_wall_s"] = round(time.perf_counter() - t0, 1)
    if res.get("status") != "ok":
        log(f"{label} failed: {res.get('error')}")
    return res


def unsloth_skip_reason() -> str | None:
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (Unsloth needs one)"
    return None
