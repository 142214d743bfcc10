"""Where GSPO checkpoints live between materializations, and which one (if any) a new run may resume from.

A run's checkpoints go to ``<checkpoints root>/<key>/checkpoint-<step>``, where ``key`` is a hash of everything the
training result depends on: the GSPO settings (less the checkpoint cadence and logging), the model settings, the
prompt style, the base model (its reference and, for a local checkpoint, its files' sizes and sha256), the
training manifest's hash, the reward version, the process count and the code version. A run only ever looks
inside its own key's folder, so a checkpoint written under other settings, data or base model is never resumed;
such folders are listed so the asset can say it ignored them. The folder is outside the asset's staging folder: it
survives a killed run, and the asset removes it once the adapter is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_file

KEY_EXCLUDED_SETTINGS = ("save_steps", "save_total_limit", "logging_steps", "report_to", "tensorboard_history_mb",
                         "vllm_server_base_url")
"""GSPO settings that change when checkpoints and log lines are written, where metrics go, and which rollout server
(of the same base model) answers; not what is trained."""
INPUTS_FILE = "inputs.json"
PROGRESS_FILE = "progress.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def local_files_state(path: str | os.PathLike, cache_file: str | os.PathLike | None = None) -> list[list[Any]] | None:
    """``[relative path, size, sha256]`` of every file under a local model folder; None for a hub id.

    The key follows content, not modification times: a base model rebuilt with identical bytes (the demo job
    rebuilds it on every run) keeps its checkpoints resumable. Hashing a multi-GB checkpoint takes a while, so
    with ``cache_file`` a file's hash is reused while its path, size and mtime are unchanged (as make and rsync
    decide what changed).
    """
    root = Path(path)
    if not root.is_dir():
        return None
    cache: dict[str, list[Any]] = {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
    entries, updated = [], {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        cache_id = str(file.resolve())
        known = cache.get(cache_id)
        if isinstance(known, list) and len(known) == 3 and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            digest = known[2]
        else:
            digest = _sha256(file)
        updated[cache_id] = [stat.st_size, stat.st_mtime_ns, digest]
        entries.append([file.relative_to(root).as_posix(), stat.st_size, digest])
    if cache_file is not None and updated != {k: cache.get(k) for k in updated}:
        with atomic_file(cache_file) as tmp:
            tmp.write_text(json.dumps({**cache, **updated}, sort_keys=True))
    return entries


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_inputs(*, gspo: dict[str, Any], model: dict[str, Any], prompt_style: dict[str, Any],
                    base_model_ref: dict[str, Any], base_model_files: list | None, manifest_sha256: str,
                    reward_version: str, num_processes: int, code_version: str) -> dict[str, Any]:
    """Everything a checkpoint's validity depends on, as plain JSON (what ``checkpoint_key`` hashes)."""
    return {
        "gspo": {k: v for k, v in sorted(gspo.items()) if k not in KEY_EXCLUDED_SETTINGS},
        "num_processes": int(num_processes),
        "model": model,
        "prompt_style": prompt_style,
        "base_model_ref": base_model_ref,
        "base_model_files": base_model_files,
        "manifest_sha256": manifest_sha256,
        "reward_version": reward_version,
        "code_version": code_version,
    }


def checkpoint_key(inputs: dict[str, Any]) -> str:
    """A short, stable hash of ``training_inputs``: the name of this run's checkpoint folder."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_work_dir(root: str | os.PathLike, inputs: dict[str, Any]) -> Path:
    """``root/<key>``, created with its ``inputs.json`` (kept for people: what these checkpoints were made from).

    A folder whose ``inputs.json`` disagrees with ``inputs`` (a hash collision, or an edited file) is refused
    rather than resumed.
    """
    key = checkpoint_key(inputs)
    work = Path(root) / key
    work.mkdir(parents=True, exist_ok=True)
    recorded = work / INPUTS_FILE
    canonical = json.loads(json.dumps(inputs, sort_keys=True, default=str))
    if recorded.exists():
        try:
            previous = json.loads(recorded.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != canonical:
            raise RuntimeError(f"{work} holds checkpoints whose {INPUTS_FILE} does not match this run's inputs; "
                               "remove the folder to start over")
    else:
        with atomic_file(recorded) as tmp:
            tmp.write_text(json.dumps(canonical, indent=2, sort_keys=True))
    return work


def other_work_dirs(root: str | os.PathLike, key: str) -> list[Path]:
    """Checkpoint folders under ``root`` written for other inputs (never resumed by this run)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != key and (p / INPUTS_FILE).exists())


UNUSABLE_PREFIX = "unusable-"
"""A checkpoint that failed verification is renamed ``unusable-checkpoint-<step>``: kept for a person to look at,
but out of the trainer's ``checkpoint-*`` rotation and never resumed or overwritten file by file."""


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file would not load, or None: its header must parse and its tensors must fill the file
    exactly (a truncated or padded file fails here, as ``safetensors`` would fail later without naming the file)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{path.name} is {size} bytes, shorter than a safetensors header"
            length = struct.unpack("<Q", prefix)[0]
            if length > size - 8:
                return f"{path.name}: its header claims {length} bytes but the file has {size}"
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name}: unreadable safetensors header ({type(exc).__name__}: {exc})"
    if not isinstance(header, dict):
        return f"{path.name}: the safetensors header is not an object"
    ends = [int(info["data_offsets"][1]) for name, info in header.items()
            if name != "__metadata__" and isinstance(info, dict) and "data_offsets" in info]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"{path.name} is {size} bytes but its header describes {expected} (truncated or damaged)"
    return None


def _torch_file_problem(path: Path, load: bool) -> str | None:
    """Why a ``torch.save`` file would not load, or None: every member's CRC (torch's zip format), then, with
    ``load``, ``torch.load`` itself as the trainer calls it (weights only, on the CPU)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{path.name}: member {bad} fails its CRC check (damaged)"
        elif not load:
            return f"{path.name} is not a torch checkpoint file ({path.stat().st_size} bytes)"
        if load:
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises (EOFError, BadZipFile, ...) means "unusable"
        return f"{path.name} cannot be loaded ({type(exc).__name__}: {str(exc)[:200] or 'no message'})"
    return None


_verified: dict[str, tuple[tuple, str | None]] = {}
"""Verdicts by folder, with the (name, size, mtime, inode) of its files they were reached on: a watcher polling the
newest checkpoint (the tests' killers, a progress display) reads each file once, not on every poll."""


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """:func:`verify_checkpoint`, remembered while the folder's files are unchanged."""
    folder = Path(folder)
    try:
        state = tuple(sorted((p.name, *(lambda st: (st.st_size, st.st_mtime_ns, st.st_ino))(p.stat()))
                             for p in folder.iterdir()))
    except OSError:
        return verify_checkpoint(folder)
    known = _verified.get(str(folder))
    if known is not None and known[0] == state:
        return known[1]
    problem = verify_checkpoint(folder)
    _verified[str(folder)] = (state, problem)
    return problem


def verify_checkpoint(folder: str | os.PathLike) -> str | None:
    """Why the trainer could not resume from ``folder``, or None when every file it loads does load.

    A killed save leaves a folder without (or with a partial) ``trainer_state.json``, the file written last; a
    damaged disk or an interrupted copy leaves files of the right names that do not load. Checked: the trainer
    state parses and names the folder's step; the adapter (or model) weights' safetensors headers cover their
    files; the optimizer and scheduler state load with ``torch.load`` (FSDP's sharded folders: present); the RNG
    states pass their CRC check.
    """
    folder = Path(folder)
    match = _CHECKPOINT.match(folder.name)
    if match is None:
        return f"{folder.name} is not named checkpoint-<step>"
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as exc:
        return f"trainer_state.json is missing or incomplete ({type(exc).__name__}), so the save was cut short"
    if not isinstance(state, dict) or state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json names step {state.get('global_step') if isinstance(state, dict) else None!r}"
    weights = [folder / n for n in ("adapter_model.safetensors", "model.safetensors") if (folder / n).exists()]
    if not weights and not any(folder.glob("pytorch_model_fsdp*")):
        return "no adapter or model weights"
    for path in weights:
        if (problem := _safetensors_problem(path)) is not None:
            return problem
    if (folder / "optimizer.pt").exists():
        if (problem := _torch_file_problem(folder / "optimizer.pt", load=True)) is not None:
            return problem
    elif not any(folder.glob("optimizer_*")):
        return "no optimizer state (optimizer.pt)"
    if not (folder / "scheduler.pt").exists():
        return "no scheduler state (scheduler.pt)"
    if (problem := _torch_file_problem(folder / "scheduler.pt", load=True)) is not None:
        return problem
    for rng in sorted(folder.glob("rng_state*.pth")):
        # Unpickling RNG state needs more than weights-only loading allows; the CRCs cover its bytes.
        if (problem := _torch_file_problem(rng, load=False)) is not None:
            return problem
    return None


def resume_candidates(work_dir: str | os.PathLike) -> tuple[tuple[Path, int] | None, list[tuple[Path, str]]]:
    """The newest checkpoint in ``work_dir`` that verifies (``checkpoint_problem``) and its step, or None; and
    every newer one that did not, with why (newest first)."""
    work = Path(work_dir)
    if not work.is_dir():
        return None, []
    found = []
    for folder in work.iterdir():
        match = _CHECKPOINT.match(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    skipped = []
    for step, folder in sorted(found, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return (folder, step), skipped
        skipped.append((folder, problem))
    return None, skipped


def latest_checkpoint(work_dir: str | os.PathLike) -> tuple[Path, int] | None:
    """The newest ``checkpoint-<step>`` folder in ``work_dir`` that the trainer can resume from, and its step.

    A folder left half-written by a killed save, or one whose files no longer load, is skipped in favour of the
    one before it (``resume_candidates`` says why).
    """
    return resume_candidates(work_dir)[0]


def set_aside(folder: str | os.PathLike) -> Path:
    """Rename a checkpoint that failed verification to ``unusable-checkpoint-<step>`` (see ``UNUSABLE_PREFIX``);
    a previous unusable copy of the same step is replaced."""
    folder = Path(folder)
    target = folder.with_name(UNUSABLE_PREFIX + folder.name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(folder, target)
    return target


def remove_work_dir(work_dir: str | os.PathLike) -> None:
    """Delete a finished run's checkpoints, and the root folder too once no run's checkpoints are left."""
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.parent.rmdir()  # only succeeds when empty
    except OSError:
        pass
