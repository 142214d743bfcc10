"""Training stage: GSPO with LoRA on the training split."""

import json
from dataclasses import asdict

from dagster import AssetCheckResult, AssetExecutionContext, MaterializeResult, MetadataValue, asset, asset_check

from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.provenance import lineage
from vlmrl_pipeline.core.export import inspect_lora_adapter
from vlmrl_pipeline.core.modeling import apply_lora, load_model, peft_lora_config
from vlmrl_pipeline.core.plots import png_markdown, training_curves_png
from vlmrl_pipeline.core.rewards import REWARD_VERSION, reward_set
from vlmrl_pipeline.core.samples import SPLIT_TRAIN, filter_context_overflow, read_manifest, split_rows, trl_dataset
from vlmrl_pipeline.core.training import train_gspo
from vlmrl_pipeline.execution import GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import (
    ArtifactStore,
    DataSettingsResource,
    ModelSettingsResource,
    TrainingSettingsResource,
)


@asset(group_name="training", deps=[base_model, resized_images], kinds={"pytorch", "trl"}, code_version="training-2",
       pool=GPU_POOL, tags=GPU_TAGS, op_tags=gpu_op_tags())
def lora_adapter(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    training_settings: TrainingSettingsResource,
) -> MaterializeResult:
    """A LoRA adapter trained with GSPO (TRL ``GRPOTrainer``, ``importance_sampling_level="sequence"``).

    Rewards follow ``answer_format``: the seeds' formatting and correctness functions weighted 0.3 and 1.0
    (``tags``), or RLinf's +1/0 boxed-answer reward (``boxed``). Prompts that overflow the context are dropped and
    counted first. LoRA sits on the language model's attention and MLP projections; the vision tower is frozen.
    Trains on the training split only. Saved in PEFT's format (``adapter_model.safetensors`` +
    ``adapter_config.json``) with the trainer's log history.
    """
    model_cfg = model_settings.to_core()
    data = data_settings.to_core()
    gspo = training_settings.to_core()
    rewards = reward_set(data.answer_format)
    load_path, ref = base_model_path(artifacts)
    train_rows = split_rows(read_manifest(artifacts.asset_dir("resized_images")), SPLIT_TRAIN)
    model, processor, backend = load_model(
        load_path, backend=model_cfg.backend, revision=ref.get("revision"), dtype=model_cfg.dtype,
        load_in_4bit=model_cfg.load_in_4bit, max_seq_length=model_cfg.max_seq_length,
        fast_inference=model_cfg.fast_inference, gpu_memory_utilization=model_cfg.gpu_memory_utilization,
    )
    # Unsloth wraps LoRA itself; on the transformers path TRL applies PEFT's config.
    peft_config = None
    if backend == "unsloth":
        model = apply_lora(model, model_cfg.lora, backend, seed=gspo.seed)
    else:
        peft_config = peft_lora_config(model_cfg.lora)
    # TRL no longer truncates prompts; an overlong one would cut image placeholders mid-run.
    train_rows, overflow = filter_context_overflow(train_rows, processor, data.prompt_style, model_cfg.max_seq_length,
                                                   gspo.max_completion_length)
    if overflow:
        context.log.warning(f"dropped {len(overflow)} training rows whose prompt overflows the context: "
                            f"{[item['pid'] for item in overflow[:20]]}")
    if train_rows.empty:
        raise ValueError(f"every training prompt overflows max_seq_length={model_cfg.max_seq_length}")
    context.log.info(f"GSPO on {len(train_rows)} training rows with {backend} ({ref['model_name']})")
    with artifacts.staging("lora_adapter") as tmp:
        trained, result = train_gspo(
            model, processor, trl_dataset(train_rows, data.prompt_style), gspo, tmp / "trainer",
            rewards.functions, rewards.weights, peft_config=peft_config, log=context.log.info,
        )
        trained.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps(
            {"log_history": result.log_history, "global_step": result.global_step, "settings": asdict(gspo),
             "base_model": ref, "reward_version": REWARD_VERSION, "answer_format": data.answer_format,
             "reward_functions": [f.__name__ for f in rewards.functions], "reward_weights": list(rewards.weights),
             "dropped_context_overflow": overflow}, indent=2, default=str))
        curves = training_curves_png(result.log_history)
        (tmp / "training_curves.png").write_bytes(curves)
        stats = inspect_lora_adapter(tmp)
    logged = [v for _, v in result.series("reward")]
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(artifacts.asset_dir("lora_adapter"))),
            "backend": backend,
            **lineage(artifacts),  # adapter_sha256 below: this run's adapter
            "train_rows": len(train_rows),
            "global_step": result.global_step,
            "train_runtime_s": round(result.train_runtime_s, 1),
            "num_context_overflow": len(overflow),
            "first_logged_reward": float(logged[0]) if logged else float("nan"),
            "final_logged_reward": float(logged[-1]) if logged else float("nan"),
            "adapter_sha256": stats["sha256"],
            "lora_b_nonzero": f"{stats['num_lora_b_nonzero']}/{stats['num_lora_b']}",
            "lora_all_finite": stats["all_finite"],
            "training_curves": MetadataValue.md(png_markdown(curves, "GSPO training curves")),
        }
    )


@asset_check(asset=lora_adapter, blocking=True,
             description="Every LoRA weight is finite and at least one LoRA B matrix is non-zero")
def lora_weights_trained(artifacts: ArtifactStore) -> AssetCheckResult:
    """An adapter with NaN/inf weights, or whose B matrices are all still zero (PEFT's initialisation: the
    adapter changes nothing), must not be evaluated, merged or exported as if it were a trained policy."""
    stats = inspect_lora_adapter(artifacts.asset_dir("lora_adapter"))
    return AssetCheckResult(
        passed=bool(stats["all_finite"]) and stats["num_lora_b"] > 0 and stats["num_lora_b_nonzero"] > 0,
        metadata={
            "all_finite": bool(stats["all_finite"]),
            "num_lora_b": stats["num_lora_b"],
            "num_lora_b_nonzero": stats["num_lora_b_nonzero"],
            "max_abs_lora_b": stats["max_abs_lora_b"],
            "adapter_sha256": stats["sha256"],
        },
    )
