"""The lineage every number carries: base model id and revision, data set hash, reward version, adapter sha256."""

from pathlib import Path

from vlmrl_pipeline.core.export import sha256_file
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
