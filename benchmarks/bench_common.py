"""What the benchmark scripts share: their log line, the library versions a row records, the atomic write of a
results file, and the unit their memory figures are in.

Imported as ``benchmarks.bench_common`` after a script has put the repository root on ``sys.path`` (the scripts
run as ``python benchmarks/<script>.py``). Nothing here imports torch: a script's ``--help`` works on any machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO_ROOT / "benchmarks" / "results.json"
"""The project's committed results file, the default ``--out`` of the scripts that write rows."""

GB = 1e9
"""Memory figures are decimal gigabytes (the GPU data sheets' unit); caps given in GiB say so."""


def make_log(tag: str) -> Callable[[str], None]:
    """A ``log(msg)`` that prints ``[tag HH:MM:SS] msg`` and flushes (child processes' lines interleave)."""

    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    return log


def library_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Each package's installed version, ``None`` where it is not installed."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_rows_atomically(path: Path, rows: list[dict]) -> None:
    """Write the results list through a temporary file and a rename, so a run killed mid-write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1, default=str))
    os.replace(tmp, path)
