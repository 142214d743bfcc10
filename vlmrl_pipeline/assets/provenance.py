"""The lineage every number carries: base model id and revision, data set hash, reward version, adapter sha256.

It reads the upstream folders of the data and model assets, named by their definitions; the adapter's folder is an
argument (the training asset's own metadata carries lineage too, so this module cannot import it). The environment
every materialization ran in is ``assets.metadata``'s.
"""

from pathlib import Path

from vlmrl_pipeline.assets.data import FILTERED_NAME, mathvista_filtered, resized_images
from vlmrl_pipeline.assets.model import base_model
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.lineage import read_model_ref
from vlmrl_pipeline.core.rewards import REWARD_VERSION
from vlmrl_pipeline.core.samples import MANIFEST_NAME
from vlmrl_pipeline.resources import ArtifactStore

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEAGE_KEYS = ("base_model", "base_model_revision", "dataset_sha256", "adapter_sha256", "reward_version")
"""What every number's metadata names (``lineage`` also gives the manifest's hash)."""


def lineage(artifacts: ArtifactStore, adapter_dir: Path | None = None, *, with_rewards: bool = True) -> dict:
    """Provenance of whatever is computed now from the current upstream artifacts (JSON-safe, metadata-ready).

    ``with_rewards=False`` for what the rewards do not touch (generation, export): their version belongs to the
    scores, not to those artifacts.
    """
    ref = read_model_ref(artifacts.asset_dir(base_model))
    provenance = {
        "base_model": ref["model_name"],
        "base_model_revision": ref.get("revision") or "unpinned",
        "dataset_sha256": sha256_file(artifacts.asset_dir(mathvista_filtered) / FILTERED_NAME),
        "manifest_sha256": sha256_file(artifacts.asset_dir(resized_images) / MANIFEST_NAME),
        "adapter_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS) if adapter_dir else "none (base model)",
    }
    if adapter_dir and (Path(adapter_dir) / "training_log.json").is_file():
        provenance["kept_checkpoint"] = kept_checkpoint_text(adapter_dir)
    if with_rewards:
        provenance["reward_version"] = REWARD_VERSION
    return provenance



def card_facts(artifacts: ArtifactStore, base_reference: str, adapter_sha256: str, style,
               training: dict | None = None):
    """What a model card (``core.model.card``) records: this lineage, the adapter, the prompt it was trained with."""
    from vlmrl_pipeline.core.model.card import CardFacts

    found = lineage(artifacts)
    return CardFacts(base_model=found["base_model"], base_revision=read_model_ref(
        artifacts.asset_dir(base_model)).get("revision"), base_reference=base_reference,
        dataset_sha256=found["dataset_sha256"], manifest_sha256=found["manifest_sha256"],
        adapter_sha256=adapter_sha256, reward_version=found["reward_version"], answer_format=style.answer_format,
        instruction=style.instruction, system_prompt=style.system_prompt, training=training or {})


def card_sample(artifacts: ArtifactStore, style):
    """The first held-out sample, the model card's snippets' example."""
    from vlmrl_pipeline.core.model.card import sample_for_card
    from vlmrl_pipeline.core.samples import SPLIT_EVAL, read_manifest, split_rows

    manifest = read_manifest(artifacts.asset_dir(resized_images))
    # A lineage without held-out rows still trains; its card's example is then a training row.
    rows = split_rows(manifest, SPLIT_EVAL) if (manifest["split"] == SPLIT_EVAL).any() else manifest
    row = rows.iloc[0].to_dict()
    return sample_for_card(row, artifacts.root, style)


def kept_checkpoint_text(adapter_dir: Path) -> str:
    """Which training step the adapter in ``adapter_dir`` is, and why (``keep_checkpoint``), from its training log.

    An adapter trained before ``keep_checkpoint`` existed is the last step's."""
    import json

    log = json.loads((Path(adapter_dir) / "training_log.json").read_text())
    kept = log.get("kept_checkpoint") or {}
    step = kept.get("step", log.get("global_step"))
    return f"step {step} of {kept.get('final_step', log.get('global_step'))}: " + (
        kept.get("why") or "the adapter after the final step (keep_checkpoint='last')")

