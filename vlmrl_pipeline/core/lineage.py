"""Provenance that travels with every artifact: which model, data, rewards and adapter produced a number."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.evaluation import write_json_atomic

MODEL_REF_NAME = "model_ref.json"


def write_model_ref(folder: str | os.PathLike, *, model_name: str, revision: str | None, is_demo: bool,
                    checkpoint_dir: str | None) -> Path:
    """Record which base model the lineage uses: a local checkpoint built here, or a hub id (+ revision)."""
    return write_json_atomic(
        Path(folder) / MODEL_REF_NAME,
        {"model_name": model_name, "revision": revision, "is_demo": is_demo, "checkpoint_dir": checkpoint_dir},
    )


def read_model_ref(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MODEL_REF_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {MODEL_REF_NAME} in {folder}: materialize base_model first")
    return json.loads(path.read_text())


def model_load_path(ref: dict[str, Any], base_model_folder: str | os.PathLike) -> str:
    """What to pass to ``from_pretrained``: the built checkpoint (relative to the asset folder) or the hub id."""
    if ref.get("checkpoint_dir"):
        return str(Path(base_model_folder) / ref["checkpoint_dir"])
    return ref["model_name"]
