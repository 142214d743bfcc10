"""Evaluation stage: the same held-out samples, scored before and after RL."""

from dataclasses import asdict
from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.data import mathvista_filtered, resized_images
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.training import lora_adapter
from vlmrl_pipeline.core.evaluation import evaluate_policy, save_records, summarize_records
from vlmrl_pipeline.core.export import sha256_file
from vlmrl_pipeline.core.modeling import load_policy
from vlmrl_pipeline.core.rewards import REWARD_VERSION
from vlmrl_pipeline.core.samples import MANIFEST_NAME, SPLIT_EVAL, filter_context_overflow, read_manifest, split_rows
from vlmrl_pipeline.resources import ArtifactStore, DataSettingsResource, EvalSettingsResource, ModelSettingsResource

PREVIEW_COLUMNS = ["pid", "answer", "pred", "correct", "correct_numeric", "correct_mathvista", "format_ok",
                   "total_reward"]


def _evaluate(
    name: str,
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
    adapter_dir: Path | None,
) -> MaterializeResult:
    model_cfg = model_settings.to_core()
    data = data_settings.to_core()
    load_path, ref = base_model_path(artifacts)
    rows = split_rows(read_manifest(artifacts.asset_dir("resized_images")), SPLIT_EVAL)
    model, processor, backend = load_policy(
        load_path, backend=model_cfg.backend, revision=ref.get("revision"), dtype=model_cfg.dtype,
        load_in_4bit=model_cfg.load_in_4bit, max_seq_length=model_cfg.max_seq_length, adapter_dir=adapter_dir,
    )
    settings = eval_settings.to_core()
    # Same base processor and settings before and after, so both evaluations drop the same rows.
    rows, overflow = filter_context_overflow(rows, processor, data.prompt_style, model_cfg.max_seq_length,
                                             settings.max_new_tokens)
    for item in overflow:
        context.log.warning(f"{name}: pid {item['pid']} dropped: prompt of {item['prompt_tokens']} tokens exceeds "
                            f"the {item['budget']}-token budget (max_seq_length - max_new_tokens)")
    if rows.empty:
        raise ValueError(f"every evaluation prompt overflows max_seq_length={model_cfg.max_seq_length}")
    records, seconds = evaluate_policy(
        model, processor, rows, settings, data.prompt_style,
        progress=lambda done, total: context.log.info(f"{name}: generated {done}/{total}"),
    )
    summary = summarize_records(records)
    provenance = {
        "base_model": ref["model_name"],
        "base_model_revision": ref.get("revision"),
        "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors") if adapter_dir else None,
        "dataset_sha256": sha256_file(artifacts.asset_dir("mathvista_filtered") / "filtered.parquet"),
        "manifest_sha256": sha256_file(artifacts.asset_dir("resized_images") / MANIFEST_NAME),
        "reward_version": REWARD_VERSION,
        "answer_format": data.answer_format,
        "prompt_field": data.prompt_field,
        "generation": asdict(settings),
        "backend": backend,
        "dropped_context_overflow": overflow,
        "summary": summary,
    }
    with artifacts.staging(name) as tmp:
        save_records(records, tmp, name, provenance)
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(artifacts.asset_dir(name) / f"{name}.json")),
            **{k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in summary.items()},
            "num_context_overflow": len(overflow),
            "generation_seconds": round(seconds, 2),
            "samples_per_second": round(len(records) / seconds, 2) if seconds > 0 else 0.0,
            "base_model": ref["model_name"],
            "adapter_sha256": provenance["adapter_sha256"] or "none (base model)",
            "dataset_sha256": provenance["dataset_sha256"],
            "reward_version": REWARD_VERSION,
            "preview": MetadataValue.md(records[PREVIEW_COLUMNS].head(20).to_markdown(index=False)),
        }
    )


@asset(group_name="evaluation", deps=[base_model, resized_images, mathvista_filtered], kinds={"pytorch"},
       code_version="2")
def baseline_records(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
) -> MaterializeResult:
    """Per-sample records of the base policy on the held-out split: completion, ``pred``, ``correct`` (strict),
    ``correct_numeric``, ``correct_mathvista`` (MathVista's rules), ``format_ok`` and reward values, saved as
    ``baseline_records.json`` and ``.parquet``.

    This is the "before" of the before/after comparison; generation is greedy and batched. Prompts that would
    overflow the model's context are dropped and listed.
    """
    return _evaluate("baseline_records", context, artifacts, model_settings, data_settings, eval_settings, None)


@asset(group_name="evaluation", deps=[lora_adapter, base_model, resized_images, mathvista_filtered],
       kinds={"pytorch", "peft"}, code_version="2")
def after_records(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
) -> MaterializeResult:
    """The same records as ``baseline_records``, for the base policy plus the trained LoRA adapter (the "after")."""
    return _evaluate("after_records", context, artifacts, model_settings, data_settings, eval_settings,
                     artifacts.asset_dir("lora_adapter"))
