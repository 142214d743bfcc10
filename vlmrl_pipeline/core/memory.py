"""Peak host and GPU memory of a block of work, for the stages whose size decides which machine they fit on.

Host memory is sampled from ``/proc`` (this process and its children, such as llama.cpp's converter), because
``ru_maxrss`` only knows the whole process's lifetime peak: in a long-lived process (a test, Dagster's in-process
executor) that would report the largest earlier step, not this one.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GB = 1e9


def _rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                children = [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            stack.extend(children)
    return found


def tree_rss_bytes(pid: int | None = None) -> int:
    """RSS of a process and all its descendants, summed."""
    pid = pid or os.getpid()
    return _rss_bytes(pid) + sum(_rss_bytes(child) for child in _descendants(pid))


@contextmanager
def peak_memory(interval_s: float = 0.1) -> Iterator[dict[str, float]]:
    """Measure the block's peak host memory (this process tree, sampled) and peak GPU memory (torch's counter).

    Yields a dict that is filled when the block ends: ``host_peak_gb``, ``host_start_gb`` and, with CUDA,
    ``gpu_peak_allocated_gb`` / ``gpu_peak_reserved_gb`` (this process's tensors, torch's counters) and
    ``gpu_peak_used_gb`` (the whole device, sampled: it includes child processes such as the training launch).
    Where ``/proc`` is missing (not Linux) the host figure falls back to ``ru_maxrss`` of this process and its
    waited-for children.
    """
    result: dict[str, float] = {}
    have_proc = Path("/proc/self/statm").exists()
    peak = [tree_rss_bytes() if have_proc else 0]
    result["host_start_gb"] = round(peak[0] / GB, 3)
    stop = threading.Event()

    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    gpu_used = [0]

    def device_used() -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], tree_rss_bytes())
            if cuda:
                gpu_used[0] = max(gpu_used[0], device_used())
    thread = threading.Thread(target=sample, name="peak-memory", daemon=True)
    if have_proc:
        thread.start()
    started = time.perf_counter()
    try:
        yield result
    finally:
        stop.set()
        if have_proc:
            thread.join()
            peak[0] = max(peak[0], tree_rss_bytes())
        else:
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            peak[0] = max(own, children)
        result["host_peak_gb"] = round(peak[0] / GB, 3)
        result["seconds"] = round(time.perf_counter() - started, 1)
        if cuda:
            import torch

            result["gpu_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
            result["gpu_peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GB, 3)
            result["gpu_peak_used_gb"] = round(max(gpu_used[0], device_used()) / GB, 3)


def _meminfo_bytes(key: str) -> int:
    """One ``/proc/meminfo`` figure in bytes, or 0 where it cannot be read (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def host_memory_total_bytes() -> int:
    """Physical memory of this machine (``MemTotal``), or 0 where it cannot be read."""
    return _meminfo_bytes("MemTotal")

