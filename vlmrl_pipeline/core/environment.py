"""The software and hardware a number was computed with: versions that decide results, and the GPU.

Every materialization records :func:`environment_fingerprint`; the report compares the before and after
evaluations' with :func:`environment_differences`, because a torch, transformers or vLLM upgrade between the two
changes the numbers as surely as training does.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

RESULT_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "unsloth", "vllm", "bitsandbytes",
                   "dagster")
"""Packages whose version changes what a run computes (read from the installed metadata, never imported)."""


def package_version(name: str) -> str:
    """The installed version of ``name``, or ``"not installed"``.

    >>> package_version("surely-not-a-package-here")
    'not installed'
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cuda_runtime() -> str:
    try:
        import torch
    except ImportError:
        return "no torch"
    return torch.version.cuda or "none (CPU build)"


def _gpu_names() -> str:
    """The visible GPUs' names from ``nvidia-smi`` (no CUDA context in this process: the step may hand the GPU to a
    child process), or ``"none"``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none"
    try:
        out = subprocess.run([smi, "--query-gpu=index,name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    gpus = [line.split(",", 1) for line in out.strip().splitlines() if "," in line]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        wanted = {v.strip() for v in visible.split(",") if v.strip()}
        gpus = [g for g in gpus if g[0].strip() in wanted]
    names = [g[1].strip() for g in gpus]
    if not names:
        return "none"
    if len(set(names)) == 1:
        return names[0] if len(names) == 1 else f"{len(names)} x {names[0]}"
    return ", ".join(names)


@functools.lru_cache(maxsize=1)
def environment_fingerprint() -> dict[str, str]:
    """Python, the CUDA runtime torch was built for, :data:`RESULT_PACKAGES` and the GPU(s): all strings, JSON-safe.
    Computed once per process (none of it changes while a process runs)."""
    return {
        "python": platform.python_version(),
        # torch's build, not the machine: "12.8" here says nothing of a GPU; "gpu" says whether there is one.
        "torch_cuda_build": _cuda_runtime(),
        **{name: package_version(name) for name in RESULT_PACKAGES},
        "gpu": _gpu_names(),
    }


LEGACY_KEYS = {"cuda": "torch_cuda_build"}
"""Fingerprint keys of earlier records and their names now."""


def _current_keys(env: Mapping[str, Any]) -> dict[str, Any]:
    return {LEGACY_KEYS.get(k, k): v for k, v in env.items()}


def environment_differences(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """``"key: before -> after"`` for every entry that differs; empty when both ran in one environment (or when
    either side predates fingerprints, which it says).

    >>> environment_differences({"torch": "2.11.0", "gpu": "H200"}, {"torch": "2.13.0", "gpu": "H200"})
    ['torch: 2.11.0 -> 2.13.0']
    >>> environment_differences(None, {"torch": "2.13.0"})
    ['before: no environment recorded']
    """
    if not before or not after:
        return [f"{side}: no environment recorded" for side, env in (("before", before), ("after", after))
                if not env]
    before, after = _current_keys(before), _current_keys(after)
    return [f"{k}: {before.get(k, 'unrecorded')} -> {after.get(k, 'unrecorded')}"
            for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as ``taskset`` or a container's cpuset set it), not the
    machine's: llama.cpp's threads spin while they wait, so two runs side by side, each taking every core, slow
    each other down many times over."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
