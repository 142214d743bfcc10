"""The lineage every number carries: base model id and revision, data set hash, reward version, adapter sha256,
and the environment (versions that decide results, and the GPU) every materialization ran in."""

import hashlib
import json
from pathlib import Path

import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

from vlmrl_pipeline.core.environment import environment_fingerprint
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.lineage import read_model_ref
from vlmrl_pipeline.core.rewards import REWARD_VERSION
from vlmrl_pipeline.core.samples import MANIFEST_NAME
from vlmrl_pipeline.resources import ArtifactStore

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEAGE_KEYS = ("base_model", "base_model_revision", "dataset_sha256", "adapter_sha256", "reward_version")
"""What every number's metadata names (``lineage`` also gives the manifest's hash)."""


def adapter_sha256(artifacts: ArtifactStore) -> str:
    return sha256_file(artifacts.asset_dir("lora_adapter") / ADAPTER_WEIGHTS)


def lineage(artifacts: ArtifactStore, adapter_dir: Path | None = None, *, with_rewards: bool = True) -> dict:
    """Provenance of whatever is computed now from the current upstream artifacts (JSON-safe, metadata-ready).

    ``with_rewards=False`` for what the rewards do not touch (generation, export): their version belongs to the
    scores, not to those artifacts.
    """
    ref = read_model_ref(artifacts.asset_dir("base_model"))
    provenance = {
        "base_model": ref["model_name"],
        "base_model_revision": ref.get("revision") or "unpinned",
        "dataset_sha256": sha256_file(artifacts.asset_dir("mathvista_filtered") / "filtered.parquet"),
        "manifest_sha256": sha256_file(artifacts.asset_dir("resized_images") / MANIFEST_NAME),
        "adapter_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS) if adapter_dir else "none (base model)",
    }
    if with_rewards:
        provenance["reward_version"] = REWARD_VERSION
    return provenance


def environment_metadata() -> dict:
    """``environment`` (python, CUDA, torch, transformers, trl, peft, accelerate, unsloth, vllm, bitsandbytes,
    dagster, GPU) and ``environment_id``, a short hash of it that the UI's metadata plots and tables can compare."""
    fingerprint = environment_fingerprint()
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return {"environment": MetadataValue.json(fingerprint), "environment_id": digest}


def table_metadata(frame: pd.DataFrame) -> dict:
    """Dagster's table conventions: ``dagster/row_count`` and ``dagster/column_schema`` (each column's dtype), which
    the UI shows on the asset and plots across materializations."""
    schema = TableSchema(columns=[TableColumn(str(name), str(dtype)) for name, dtype in frame.dtypes.items()])
    return {"dagster/row_count": len(frame), "dagster/column_schema": MetadataValue.table_schema(schema)}
