"""What an artifact folder held when it was written, and whether it still does before a step reads it.

Every asset folder gets an ``integrity.json`` as its last file (``record_files``, called on the staging folder just
before it moves into place): each file's relative path, size, sha256, and its mtime and inode. A step that reads an
upstream folder first calls ``verify_files`` on it: a file that is missing, has another size, or whose content no
longer hashes to the recorded sha256 stops the step at once, naming the file and the asset to materialize again.

Hashing is done once: the move into place keeps every file's inode and mtime, so a file whose size, mtime and inode
are still the recorded ones is taken as written without reading it (as make and rsync decide what changed); any
other file is hashed, and that result is kept in a cache file by (path, size, mtime, inode), so a large checkpoint
copied elsewhere is read once, not by every step. A damage that keeps size, mtime and inode (bit rot under the
filesystem) is not seen; that is the price of not reading gigabytes before every step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_file
from vlmrl_pipeline.core.files import sha256_file

RECORD_NAME = "integrity.json"
RECORD_VERSION = 1


class ArtifactIntegrityError(RuntimeError):
    """An artifact's files are not what its materialization wrote."""


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def record_files(folder: str | os.PathLike) -> Path:
    """Write ``folder/integrity.json``: every other file under ``folder`` with its size, mtime, inode and sha256."""
    root = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(root).as_posix()
        if relative == RECORD_NAME:
            continue
        size, mtime_ns, inode = _stat_key(path.stat())
        files[relative] = {"size": size, "sha256": sha256_file(path), "mtime_ns": mtime_ns, "inode": inode}
    with atomic_file(root / RECORD_NAME) as tmp:
        tmp.write_text(json.dumps({"version": RECORD_VERSION, "files": files}, indent=1, sort_keys=True))
    return root / RECORD_NAME


def record_changed_files(folder: str | os.PathLike, names: list[str]) -> Path:
    """Update ``folder/integrity.json`` for the files ``names`` (relative paths) that were rewritten in place on
    purpose, leaving every other entry as its materialization recorded it (the report's evaluation added to a
    model card). A folder without a record is recorded whole."""
    root = Path(folder)
    path = root / RECORD_NAME
    if not path.exists():
        return record_files(root)
    record = json.loads(path.read_text())
    for relative in names:
        size, mtime_ns, inode = _stat_key((root / relative).stat())
        record["files"][relative] = {"size": size, "sha256": sha256_file(root / relative), "mtime_ns": mtime_ns,
                                     "inode": inode}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    return path


def _load_cache(cache_file: Path | None) -> dict[str, list]:
    if cache_file is None:
        return {}
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def verify_files(folder: str | os.PathLike, asset: str, cache_file: str | os.PathLike | None = None
                 ) -> dict[str, int] | None:
    """Check ``folder`` against its ``integrity.json``; raise :class:`ArtifactIntegrityError` naming the file and
    ``asset`` (the asset to materialize again) on any difference.

    Returns ``{"files": checked, "hashed": read in full}``, or None when the folder has no record (written before
    records existed: the caller says it could not verify). Files that are not in the record are not checked.
    """
    root = Path(folder)
    record_path = root / RECORD_NAME
    again = f"materialize {asset} again (and what depends on it)"
    if not record_path.exists():
        if not root.is_dir():
            raise ArtifactIntegrityError(f"{root} does not exist: materialize {asset} first")
        return None
    try:
        record = json.loads(record_path.read_text())
        files = record["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactIntegrityError(f"{record_path} is damaged ({type(exc).__name__}: {exc}), so {asset}'s files "
                                     f"cannot be verified: {again}") from None
    cache_path = Path(cache_file) if cache_file is not None else None
    cache, updated, hashed = _load_cache(cache_path), {}, 0
    for relative, expected in sorted(files.items()):
        path = root / relative
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ArtifactIntegrityError(f"{path} is missing: it was written by {asset}, and later deleted or "
                                         f"moved; {again}") from None
        size, mtime_ns, inode = _stat_key(stat)
        if size != expected["size"]:
            raise ArtifactIntegrityError(f"{path} is {size} bytes, but {asset} wrote {expected['size']} (truncated "
                                         f"or overwritten); {again}")
        if [mtime_ns, inode] == [expected.get("mtime_ns"), expected.get("inode")]:
            continue  # untouched since it was written and hashed
        cache_id = str(path.resolve())
        known = cache.get(cache_id)
        if isinstance(known, list) and len(known) == 4 and known[:3] == [size, mtime_ns, inode]:
            digest = known[3]
        else:
            digest = sha256_file(path)
            hashed += 1
            updated[cache_id] = [size, mtime_ns, inode, digest]
        if digest != expected["sha256"]:
            raise ArtifactIntegrityError(
                f"{path} has changed since {asset} wrote it: sha256 {digest[:16]}... instead of the recorded "
                f"{expected['sha256'][:16]}... (same size: overwritten in place or damaged); {again}")
    if updated and cache_path is not None:
        with atomic_file(cache_path) as tmp:
            tmp.write_text(json.dumps({**cache, **updated}, sort_keys=True))
    return {"files": len(files), "hashed": hashed}
