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
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_file

KEY_EXCLUDED_SETTINGS = ("save_steps", "save_total_limit", "logging_steps", "report_to")
"""GSPO settings that change when checkpoints and log lines are written, and where metrics go; not what is trained."""
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


def _complete(folder: Path) -> bool:
    """A checkpoint the trainer finished writing: its trainer state (written last) parses and names its step, and
    the adapter, optimizer and scheduler state are there."""
    match = _CHECKPOINT.match(folder.name)
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    has_weights = any((folder / n).exists() for n in ("adapter_model.safetensors", "model.safetensors")) or any(
        folder.glob("pytorch_model_fsdp*"))
    has_optimizer = (folder / "optimizer.pt").exists() or any(folder.glob("optimizer_*"))
    return (match is not None and int(state.get("global_step", -1)) == int(match.group(1)) and has_weights
            and has_optimizer and (folder / "scheduler.pt").exists())


def latest_checkpoint(work_dir: str | os.PathLike) -> tuple[Path, int] | None:
    """The newest complete ``checkpoint-<step>`` folder in ``work_dir`` and its step, or None.

    A folder left half-written by a killed save is skipped in favour of the one before it.
    """
    work = Path(work_dir)
    if not work.is_dir():
        return None
    found = []
    for folder in work.iterdir():
        match = _CHECKPOINT.match(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    for step, folder in sorted(found, reverse=True):
        if _complete(folder):
            return folder, step
    return None


def remove_work_dir(work_dir: str | os.PathLike) -> None:
    """Delete a finished run's checkpoints, and the root folder too once no run's checkpoints are left."""
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.parent.rmdir()  # only succeeds when empty
    except OSError:
        pass
