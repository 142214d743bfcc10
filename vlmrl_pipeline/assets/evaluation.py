"""Evaluation stage, split in two so a reward change re-scores without generating again.

``*_completions`` generate (GPU, slow; their code version is the generation code's). ``*_records`` score the
stored completions (CPU, seconds; their code version is the rewards' source hash, ``REWARD_VERSION``), so editing
a reward marks only the records and the report unsynced, and "Materialize unsynced" re-scores.
"""

import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from vlmrl_pipeline.assets.data import mathvista_filtered, resized_images
from vlmrl_pipeline.assets.metadata import environment_metadata, table_metadata
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.provenance import LINEAGE_KEYS, lineage
from vlmrl_pipeline.assets.training import lora_adapter
from vlmrl_pipeline.core.environment import environment_fingerprint
from vlmrl_pipeline.core.evaluation.records import (
    generate_for_rows,
    generate_for_rows_vllm,
    load_completions,
    save_completions,
    save_records,
    score_stored_completions,
    summarize_records,
)
from vlmrl_pipeline.core.model.loading import load_policy, load_processor, vllm_dtype
from vlmrl_pipeline.core.rewards import REWARD_VERSION, gspo_reward_set, reward_name, reward_set_version
from vlmrl_pipeline.core.samples import SPLIT_EVAL, filter_context_overflow, read_manifest, split_rows
from vlmrl_pipeline.execution import CPU_TAGS, GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import (
    NO_OP_CONFIG,
    ArtifactStore,
    AssetRef,
    DataSettingsResource,
    EvalSettingsResource,
    ModelSettingsResource,
    TrainingSettingsResource,
    asset_folder,
)

GENERATION_CODE_VERSION = "generation-1"
PREVIEW_COLUMNS = ["pid", "answer", "pred", "correct", "correct_numeric", "correct_mathvista", "format_ok", "answered",
                   "total_reward"]


def records_file(artifacts: ArtifactStore, records: AssetRef, suffix: str) -> Path:
    """What a records asset saved (``save_records``, its folder's name as the stem): ``suffix`` ``.parquet`` for
    the table, ``.json`` for the records with their provenance."""
    return artifacts.asset_dir(records) / f"{asset_folder(records)}{suffix}"


def _generate(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
    adapter_dir: Path | None,
) -> MaterializeResult:
    name = asset_folder(context.asset_key)
    model_cfg = model_settings.to_core()
    data = data_settings.to_core()
    settings = eval_settings.to_core()
    # Everything generation reads, checked against what was written: a damaged weight file or a deleted image
    # fails here, naming it, instead of generating from garbage or failing later without the file's name.
    artifacts.verify(mathvista_filtered, resized_images, base_model, *([lora_adapter] if adapter_dir else []),
                     log=context.log.warning)
    load_path, ref = base_model_path(artifacts)
    rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL)
    if settings.engine == "vllm":
        model, processor, backend = None, load_processor(load_path, revision=ref.get("revision")), "vllm"
    else:
        model, processor, backend = load_policy(
            load_path, backend=model_cfg.backend, revision=ref.get("revision"), dtype=model_cfg.dtype,
            load_in_4bit=model_cfg.load_in_4bit, max_seq_length=model_cfg.max_seq_length, adapter_dir=adapter_dir,
        )
    # Same base processor and settings before and after, so both evaluations drop the same rows.
    rows, overflow = filter_context_overflow(rows, processor, data.prompt_style, model_cfg.max_seq_length,
                                             settings.max_new_tokens)
    for item in overflow:
        context.log.warning(f"{name}: pid {item['pid']} dropped: prompt of {item['prompt_tokens']} tokens exceeds "
                            f"the {item['budget']}-token budget (max_seq_length - max_new_tokens)")
    if rows.empty:
        raise ValueError(f"every evaluation prompt overflows max_seq_length={model_cfg.max_seq_length}")
    progress = lambda done, total: context.log.info(f"{name}: generated {done}/{total}")  # noqa: E731
    engine_info: dict = {"engine": settings.engine}
    if settings.engine == "vllm":
        scratch = artifacts.asset_dir(context.asset_key).parent / f".{name}.vllm-scratch"
        completions, seconds, engine_info = generate_for_rows_vllm(
            load_path, processor, rows, settings, data.prompt_style, model_cfg.max_seq_length,
            adapter_dir=adapter_dir, scratch_dir=scratch, dtype=vllm_dtype(model_cfg.dtype),
            revision=ref.get("revision"), progress=progress,
        )
        shutil.rmtree(scratch, ignore_errors=True)
        context.log.info(f"{name}: vLLM served the {engine_info['served']} ({engine_info['dtype']}); "
                         f"{engine_info['new_tokens']} new tokens in {engine_info['decode_seconds']} s")
    else:
        completions, seconds = generate_for_rows(model, processor, rows, settings, data.prompt_style,
                                                 progress=progress)
    # Generation does not depend on the rewards: their version belongs to the records.
    provenance = lineage(artifacts, adapter_dir, with_rewards=False)
    info = {
        **provenance,
        "prompt_field": data.prompt_field,
        "system_prompt": data.system_prompt,
        "generation": asdict(settings),
        "backend": backend,
        "engine": engine_info,
        "generation_seconds": seconds,
        "eval_pids": [str(p) for p in rows["pid"]],
        "dropped_context_overflow": overflow,
        "environment": environment_fingerprint(),
    }
    with artifacts.staging(context.asset_key) as tmp:
        save_completions(tmp, rows["pid"].tolist(), completions, info)
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key))),
            "num_completions": len(completions),
            "num_context_overflow": len(overflow),
            "generation_seconds": round(seconds, 2),
            "samples_per_second": round(len(completions) / seconds, 2) if seconds > 0 else 0.0,
            "backend": backend,
            "engine": settings.engine,
            **provenance,
        }
    )


def _score(context: AssetExecutionContext, completions_asset: AssetsDefinition, artifacts: ArtifactStore,
           data_settings: DataSettingsResource, training_settings: TrainingSettingsResource) -> MaterializeResult:
    data = data_settings.to_core()
    # Exactly the rewards GSPO trains with (functions, weights, boxed values), so the records' rewards are its.
    rewards = gspo_reward_set(data.answer_format, training_settings.to_core())
    version = reward_set_version(rewards)
    artifacts.verify(completions_asset, resized_images, log=context.log.warning)
    completions, info = load_completions(artifacts.asset_dir(completions_asset))
    rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL)
    records = score_stored_completions(rows, completions, data.answer_format, rewards=rewards,
                                       style=data.prompt_style)
    summary = summarize_records(records)
    reward_info = {"reward_functions": [reward_name(f) for f in rewards.functions],
                   "reward_weights": list(rewards.weights)}
    provenance = {**info, "reward_version": version, "answer_format": data.answer_format, **reward_info,
                  "completions_from": asset_folder(completions_asset), "summary": summary}
    with artifacts.staging(context.asset_key) as tmp:
        save_records(records, tmp, asset_folder(context.asset_key), provenance)
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            **table_metadata(records),
            "path": MetadataValue.path(str(records_file(artifacts, context.asset_key, ".json"))),
            **{k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in summary.items()
               if k not in ("top_answer", "collapse")},
            "top_answer": str(summary["top_answer"]),
            # Text, so the UI shows it: "none", or why these answers look like a collapsed policy.
            "collapse": "; ".join(summary["collapse"]) or "none",
            **{k: info[k] for k in LINEAGE_KEYS if k in info},
            "reward_version": version,
            "reward_functions": ", ".join(reward_info["reward_functions"]),
            "reward_weights": MetadataValue.json(reward_info["reward_weights"]),
            "answer_format": data.answer_format,
            "preview": MetadataValue.md(records[PREVIEW_COLUMNS].head(20).to_markdown(index=False)),
        }
    )


@asset(config_schema=NO_OP_CONFIG,
       group_name="evaluation", deps=[base_model, resized_images, mathvista_filtered], kinds={"pytorch"},
       code_version=GENERATION_CODE_VERSION, pool=GPU_POOL, tags=GPU_TAGS, op_tags=gpu_op_tags())
def baseline_completions(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
) -> MaterializeResult:
    """The base policy's completions for every held-out sample (greedy, batched, vision tokens suppressed).

    Stored as ``completions.parquet`` with ``generation.json`` (model, data and generation settings), so the
    records can be re-scored after a reward change without generating again. Prompts that would overflow the
    model's context are dropped and listed.
    """
    with artifacts.lock(context.asset_key):  # a second writer fails now, not after generating
        return _generate(context, artifacts, model_settings, data_settings, eval_settings, None)


@asset(config_schema=NO_OP_CONFIG,
       group_name="evaluation", deps=[lora_adapter, base_model, resized_images, mathvista_filtered],
       kinds={"pytorch", "peft"}, code_version=GENERATION_CODE_VERSION, pool=GPU_POOL, tags=GPU_TAGS,
       op_tags=gpu_op_tags())
def after_completions(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
) -> MaterializeResult:
    """The same completions as ``baseline_completions``, from the base policy plus the trained LoRA adapter."""
    with artifacts.lock(context.asset_key):  # a second writer fails now, not after generating
        return _generate(context, artifacts, model_settings, data_settings, eval_settings,
                         artifacts.asset_dir(lora_adapter))


@asset(config_schema=NO_OP_CONFIG,
       group_name="evaluation", deps=[baseline_completions, resized_images], kinds={"pandas"},
       code_version=REWARD_VERSION, tags=CPU_TAGS)
def baseline_records(context: AssetExecutionContext, artifacts: ArtifactStore,
                     data_settings: DataSettingsResource,
                     training_settings: TrainingSettingsResource) -> MaterializeResult:
    """Per-sample records of the base policy: completion, ``pred``, ``correct`` (strict, the seed's metric),
    ``correct_numeric``, ``correct_mathvista`` (MathVista's rules), ``format_ok`` and the reward values, saved as
    ``baseline_records.json`` (with provenance) and ``.parquet``.

    This is the "before" of the comparison. It only scores stored completions, so its code version is the
    rewards' source hash: a reward change re-runs this in seconds, not the generation.
    """
    return _score(context, baseline_completions, artifacts, data_settings, training_settings)


@asset(config_schema=NO_OP_CONFIG,
       group_name="evaluation", deps=[after_completions, resized_images], kinds={"pandas"},
       code_version=REWARD_VERSION, tags=CPU_TAGS)
def after_records(context: AssetExecutionContext, artifacts: ArtifactStore,
                  data_settings: DataSettingsResource,
                  training_settings: TrainingSettingsResource) -> MaterializeResult:
    """The same records as ``baseline_records``, for the policy after GSPO (base plus the LoRA adapter)."""
    return _score(context, after_completions, artifacts, data_settings, training_settings)


def _records_complete(artifacts: ArtifactStore, records_asset: AssetsDefinition,
                      completions_asset: AssetsDefinition) -> AssetCheckResult:
    records = pd.read_parquet(records_file(artifacts, records_asset, ".parquet"))
    _, info = load_completions(artifacts.asset_dir(completions_asset))
    eval_rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL)
    dropped = {item["pid"] for item in info["dropped_context_overflow"]}
    expected = set(eval_rows["pid"].astype(str)) - dropped
    got = records["pid"].astype(str)
    missing, extra = sorted(expected - set(got)), sorted(set(got) - expected)
    return AssetCheckResult(
        passed=not missing and not extra and not got.duplicated().any() and len(records) > 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"num_records": len(records), "num_expected": len(expected), "num_overflow_dropped": len(dropped),
                  "missing_pids": MetadataValue.json(missing[:50]), "extra_pids": MetadataValue.json(extra[:50]),
                  "duplicated_pids": int(got.duplicated().sum())},
    )


@asset_check(asset=baseline_records, blocking=True,
             description="One record per held-out sample (less prompts dropped for overflowing the context)")
def baseline_records_complete(artifacts: ArtifactStore) -> AssetCheckResult:
    return _records_complete(artifacts, baseline_records, baseline_completions)


@asset_check(asset=after_records, blocking=True,
             description="One record per held-out sample (less prompts dropped for overflowing the context)")
def after_records_complete(artifacts: ArtifactStore) -> AssetCheckResult:
    return _records_complete(artifacts, after_records, after_completions)
