"""File helpers every stage uses: content hashes, sizes, and JSON or text written whole (temp file, then rename)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_file


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (adapters and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_dir(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> str:
    """One sha256 over every file of a folder (relative names and contents, in sorted order), but the top-level
    files named in ``exclude`` (a model card, which documents the bytes and is not one of them)."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not (p.parent == root and p.name in exclude)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def dir_size_bytes(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON to a temp file in the same folder, then rename it into place."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=_json_default))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to a temp file in the same folder, then rename it into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(value: Any):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
