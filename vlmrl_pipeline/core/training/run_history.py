"""TensorBoard history across materializations: one run folder per training run, kept within a disk budget.

The adapter folder is replaced whole on each materialization (``core.atomic``), and with it the event files inside
it. The history folder sits beside it instead and gains one run folder per materialization, named like transformers'
own ``runs/<timestamp>_<host>`` folders (plus a short id, so two runs in one second stay apart), so
``tensorboard --logdir <history>`` lists every kept run side by side. When the folders together pass the budget the
oldest go first; the newest is kept whatever its size.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmrl_pipeline.core.atomic import atomic_dir

EVENTS_GLOB = "events.out.tfevents.*"
"""The event files TensorBoard reads (written by ``torch.utils.tensorboard`` / tensorboardX)."""


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes of every regular file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def run_folder_name(run_id: str, when: float | None = None, host: str | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>_<host>_<run id, 8 chars>``: sorts by time, like transformers' ``runs/`` folders.

    >>> run_folder_name("0123456789abcdef", when=0.0, host="gpu-1")
    '19700101-000000_gpu-1_01234567'
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if when is None else when))
    host = (host or socket.gethostname()).replace(os.sep, "_").replace("_", "-") or "host"
    return f"{stamp}_{host}_{run_id[:8]}"


def run_folders(history: str | os.PathLike) -> list[Path]:
    """The kept run folders, oldest first (their names start with the time they were kept)."""
    root = Path(history)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class KeptRun:
    folder: Path
    """This run's folder in the history."""
    num_event_files: int
    removed: tuple[str, ...]
    """Older run folders removed to stay within the budget, oldest first."""
    history_bytes: int
    """What the history holds afterwards."""


def keep_run(
    sources: Sequence[str | os.PathLike],
    history: str | os.PathLike,
    name: str,
    budget_bytes: int,
    log: Callable[[str], None] | None = None,
) -> KeptRun:
    """Copy the event folders ``sources`` (each a folder the trainer wrote, e.g. ``runs/<timestamp>_<host>``: a
    resumed run has one per attempt) into ``history/name``, then remove the oldest run folders while the history
    holds more than ``budget_bytes``; the new one is never removed. Each removal is logged through ``log``.

    The copy is written beside and renamed into place (a reader never sees half a run); folders a killed copy left
    (``.<name>.*``) are cleared first. Call it while holding the asset's lock: one writer per history.
    """
    if budget_bytes < 0:
        raise ValueError(f"the history's budget must be >= 0 bytes, got {budget_bytes}")
    root = Path(history)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.iterdir():
        if leftover.name.startswith(".") and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    final = root / name
    if final.exists():
        raise FileExistsError(f"run folder {final} is already in the history")
    with atomic_dir(final) as tmp:
        for source in sources:
            source = Path(source)
            if source.is_dir():
                shutil.copytree(source, tmp / source.name)
    num_events = len(list(final.rglob(EVENTS_GLOB)))
    sizes = {folder: folder_bytes(folder) for folder in run_folders(root)}
    total = sum(sizes.values())
    removed = []
    for folder in sorted(sizes):  # oldest first
        if total <= budget_bytes or folder == final:
            continue
        shutil.rmtree(folder)
        total -= sizes[folder]
        removed.append(folder.name)
        if log is not None:
            log(
                f"TensorBoard history over its budget ({budget_bytes / 1e6:.1f} MB): removed the oldest run "
                f"{folder.name} ({sizes[folder] / 1e6:.2f} MB); {total / 1e6:.2f} MB kept"
            )
    return KeptRun(folder=final, num_event_files=num_events, removed=tuple(removed), history_bytes=total)
