"""One GSPO training job as the training process runs it: load, filter, resume or start, train, save.

The ``lora_adapter`` asset writes a :class:`TrainingJob` file and launches ``vlmrl_pipeline.training_process`` on it
with ``accelerate launch``; every process of the launch calls :func:`run_training_job` with the same job. Nothing
here knows about Dagster: the entry point passes in how to log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.training.checkpoints import PROGRESS_FILE, latest_checkpoint
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
from vlmrl_pipeline.core.training.trainer import explain_out_of_memory, train_gspo

TRAINING_LOG = "training_log.json"
VLLM_4BIT_CACHE = "vllm-4bit-base"
"""Beside the work folders: the 4-bit copies of 16-bit bases that Unsloth's vLLM engine serves
(``core.model.loading.vllm_4bit_checkpoint``); kept across runs, unlike the work folders."""


@dataclass(frozen=True)
class TrainingJob:
    """Everything a training process needs, as plain JSON (written by the asset, read by every process)."""

    base_model_path: str
    """What ``from_pretrained`` loads: the built checkpoint folder or a hub id."""
    base_model_ref: dict[str, Any]
    manifest_dir: str
    """The ``resized_images`` folder (manifest + images); training uses its ``train`` split only."""
    adapter_dir: str
    """Where the adapter and ``training_log.json`` are written (the asset's staging folder)."""
    work_dir: str
    """This run's checkpoint folder (keyed by its inputs, see ``core.training.checkpoints``); survives a killed run."""
    checkpoint_key: str
    model: dict[str, Any]
    """``asdict(ModelSettings)``."""
    prompt_style: dict[str, Any]
    """``prompt_field``, ``answer_format``, ``system_prompt``."""
    gspo: dict[str, Any]
    """``asdict(GSPOSettings)``."""
    num_processes: int
    """Processes of the launch (``gspo["num_processes"]`` resolved on the launching machine)."""
    training_lock: str = ""
    """A path whose lock (``core.atomic.exclusive``) rank 0 holds while it trains, so a training process that
    outlived its killed Dagster step is seen by the next launch; empty for none."""
    rollout_engine: dict[str, str] = field(default_factory=dict)
    """What ``training_settings.rollout_engine`` resolved to (``core.training.rollout_engine``): ``engine``,
    ``setting``, ``reason``; ``model`` and ``gspo`` already carry the switches it set. Empty in job files written before
    it."""

    def write(self, path: str | os.PathLike) -> Path:
        from vlmrl_pipeline.core.atomic import atomic_file

        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True, default=str))
        return Path(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainingJob:
        return cls(**json.loads(Path(path).read_text()))

    def gspo_settings(self) -> GSPOSettings:
        return GSPOSettings(**self.gspo)


def process_rank() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` of this process under ``accelerate launch`` / torchrun ((0, 0, 1) alone)."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def _step_tracker():
    from transformers import TrainerCallback

    class StepTracker(TrainerCallback):
        step: int | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.step = state.global_step + 1

    return StepTracker()


def run_training_job(job: TrainingJob, log: Callable[[str], None], warn: Callable[[str], None] | None = None,
                     ) -> dict[str, Any]:
    """Train the job's adapter, resuming from the newest complete checkpoint in its work folder if there is one.

    Every process of a launch calls this. The main process writes the adapter and ``training_log.json`` into
    ``job.adapter_dir`` and returns the summary the asset reports; the others return the same summary unwritten.
    An out-of-memory error comes back as ``TrainingOutOfMemoryError`` naming the settings to lower; a NaN or
    infinite loss as ``NonFiniteLossError`` naming the step.
    """
    import torch

    from vlmrl_pipeline.core.model.loading import LoraSettings, apply_lora, load_model, peft_lora_config
    from vlmrl_pipeline.core.prompts import PromptStyle
    from vlmrl_pipeline.core.rewards import gspo_reward_set, reward_name, reward_set_version
    from vlmrl_pipeline.core.samples import (
        SPLIT_TRAIN,
        SPLIT_VALIDATION,
        filter_context_overflow,
        read_manifest,
        split_rows,
        trl_dataset,
    )

    warn = warn or log
    gspo = job.gspo_settings()
    model_cfg = job.model
    style = PromptStyle(job.prompt_style["prompt_field"], job.prompt_style["answer_format"],
                        job.prompt_style.get("system_prompt") or None)
    # The one place the training's reward set is built; evaluation's records build the same (core.rewards).
    rewards = gspo_reward_set(style.answer_format, gspo)
    rank, local_rank, world_size = process_rank()
    if world_size != job.num_processes:
        raise RuntimeError(f"the job was planned for {job.num_processes} process(es) but {world_size} were launched")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # each process its own GPU; 4-bit loading quantizes on the current one
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    manifest = read_manifest(job.manifest_dir)
    train_rows = split_rows(manifest, SPLIT_TRAIN)
    # Validation rows only: the held-out (eval) rows are never read here, so they cannot steer training or the
    # choice of the kept adapter.
    validation_rows = split_rows(manifest, SPLIT_VALIDATION) if gspo.eval_steps else None
    tracker = _step_tracker()
    with explain_out_of_memory(gspo, step=lambda: tracker.step, max_seq_length=model_cfg["max_seq_length"],
                               load_in_4bit=model_cfg["load_in_4bit"]):
        model, processor, backend = load_model(
            job.base_model_path, backend=model_cfg["backend"], revision=job.base_model_ref.get("revision"),
            dtype=model_cfg["dtype"], load_in_4bit=model_cfg["load_in_4bit"],
            max_seq_length=model_cfg["max_seq_length"], fast_inference=model_cfg["fast_inference"],
            gpu_memory_utilization=model_cfg["gpu_memory_utilization"], device=device,
            vllm_standby=model_cfg.get("vllm_standby", True),
            vllm_4bit_cache=Path(job.work_dir).parent / VLLM_4BIT_CACHE, log=log if rank == 0 else None,
        )
        lora = LoraSettings(**model_cfg["lora"])
        # Unsloth wraps LoRA itself; on the transformers path TRL applies PEFT's config.
        peft_config = None
        if backend == "unsloth":
            model = apply_lora(model, lora, backend, seed=gspo.seed)
        else:
            peft_config = peft_lora_config(lora)
        # TRL no longer truncates prompts; an overlong one would cut image placeholders mid-run.
        train_rows, overflow = filter_context_overflow(train_rows, processor, style, model_cfg["max_seq_length"],
                                                       gspo.max_completion_length)
        if overflow and rank == 0:
            warn(f"dropped {len(overflow)} training rows whose prompt overflows the context: "
                 f"{[item['pid'] for item in overflow[:20]]}")
        if train_rows.empty:
            raise ValueError(f"every training prompt overflows max_seq_length={model_cfg['max_seq_length']}")
        callbacks = [tracker]
        validation_overflow: list = []
        if validation_rows is not None:
            from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
            from vlmrl_pipeline.core.training.validation import validation_callback

            validation_rows, validation_overflow = filter_context_overflow(
                validation_rows, processor, style, model_cfg["max_seq_length"], gspo.max_completion_length)
            if validation_rows.empty:
                raise ValueError(f"every validation prompt overflows max_seq_length={model_cfg['max_seq_length']}")
            # Greedy, as the held-out evaluation decodes; as long as a rollout may be.
            validation_generation = GenerationSettings(max_new_tokens=gspo.max_completion_length,
                                                       batch_size=gspo.per_device_train_batch_size)
            callbacks.append(validation_callback(
                validation_rows, processor, style, gspo.eval_steps, validation_generation, rewards,
                keep_best=gspo.keep_checkpoint == "best_validation", work_dir=job.work_dir, is_main=rank == 0,
                log=log if rank == 0 else None))
        resume = latest_checkpoint(job.work_dir)
        if rank == 0:
            if resume is not None:
                log(f"resuming from {resume[0]} (step {resume[1]}): adapter, optimizer, scheduler, RNG and trainer "
                    "state are loaded and the step count continues")
            else:
                log(f"no checkpoint for these inputs (key {job.checkpoint_key}): training from step 0")
            log(f"GSPO on {len(train_rows)} training rows with {backend} ({job.base_model_ref['model_name']}) on "
                f"{world_size} process(es)" + (f", {gspo.distributed}" if world_size > 1 else "")
                + (f"; checkpoints every {gspo.save_steps} steps in {job.work_dir}" if gspo.save_steps
                   else "; no checkpoints (save_steps=0)")
                + (f"; validation on {len(validation_rows)} rows every {gspo.eval_steps} steps, keeping the "
                   f"{gspo.keep_checkpoint} adapter" if validation_rows is not None else ""))
            log("rewards: " + ", ".join(f"{w:g} x {reward_name(f)}" for f, w in
                                        zip(rewards.functions, rewards.weights, strict=True)))
        _, result = train_gspo(
            model, processor, trl_dataset(train_rows, style), gspo, job.work_dir, rewards.functions,
            rewards.weights, peft_config=peft_config, log=log,
            resume_from_checkpoint=resume[0] if resume is not None else None,
            progress_file=Path(job.work_dir) / PROGRESS_FILE, callbacks=callbacks, save_adapter_to=job.adapter_dir,
            max_seq_length=model_cfg["max_seq_length"],
        )
    from vlmrl_pipeline.core.training.validation import copy_kept_adapter, kept_checkpoint, validation_entries

    kept = kept_checkpoint(gspo.keep_checkpoint, result.log_history, result.global_step, job.work_dir)
    if rank == 0:
        copy_kept_adapter(kept, job.adapter_dir)
        log(f"kept adapter: step {kept['step']} ({kept['why']})")
    summary = {
        "backend": backend,
        "train_rows": len(train_rows),
        "global_step": result.global_step,
        "train_runtime_s": round(result.train_runtime_s, 1),
        "num_context_overflow": len(overflow),
        "resumed_from_step": result.resumed_from_step,
        "steps_run": result.steps_run,
        "num_processes": world_size,
        "distributed": gspo.distributed if world_size > 1 else "none",
        "checkpoint_key": job.checkpoint_key,
        "kept_checkpoint": kept["policy"],
        "kept_checkpoint_step": kept["step"],
        "reward_functions": ", ".join(reward_name(f) for f in rewards.functions),
    }
    if validation_rows is not None:
        summary["validation_rows"] = len(validation_rows)
        summary["validation_evaluations"] = len(validation_entries(result.log_history))
    if rank == 0:
        from vlmrl_pipeline.core.files import write_json_atomic

        write_json_atomic(Path(job.adapter_dir) / TRAINING_LOG, {
            "log_history": result.log_history, "global_step": result.global_step, "settings": job.gspo,
            "base_model": job.base_model_ref, "reward_version": reward_set_version(rewards),
            "answer_format": style.answer_format,
            "reward_functions": [reward_name(f) for f in rewards.functions], "reward_weights": list(rewards.weights),
            "reward_paths": list(gspo.reward_funcs),
            "kept_checkpoint": {k: v for k, v in kept.items() if k != "folder"},
            "validation": {"rows": len(validation_rows) if validation_rows is not None else 0,
                           "eval_steps": gspo.eval_steps,
                           "dropped_context_overflow": validation_overflow,
                           "pids": [str(p) for p in validation_rows["pid"]] if validation_rows is not None else []},
            "dropped_context_overflow": overflow, "backend": backend, "rollout_engine": job.rollout_engine,
            "train_rows": len(train_rows),
            "train_runtime_s": result.train_runtime_s,
            "resume": {"resumed_from_step": result.resumed_from_step,
                       "resumed_from": str(resume[0]) if resume is not None else None,
                       "steps_run": result.steps_run, "optimizer_state_step": result.optimizer_state_step,
                       "scheduler_last_epoch": result.scheduler_last_epoch},
            "launch": {"num_processes": world_size, "distributed": summary["distributed"],
                       "checkpoint_key": job.checkpoint_key, "work_dir": job.work_dir},
            # With dynamic sampling: which training rows each extra round drew (this process's steps only).
            "dynamic_sampling_draws": result.dynamic_sampling_draws,
        })
    return summary


class TrainingProcessError(RuntimeError):
    """The training process failed; the message carries each failed rank's own error and what is left to resume."""


def describe_failure(job_file: str | os.PathLike, work_dir: str | os.PathLike, cause: str) -> str:
    """What went wrong in a failed launch, from the error files the ranks wrote (see ``training_process``), and
    the checkpoint a new materialization would resume from."""
    errors = []
    for path in sorted((Path(job_file).parent / "errors").glob("rank-*.json")):
        try:
            error = json.loads(path.read_text())
            errors.append(f"rank {error['rank']}: {error['type']}: {error['message']}")
        except (OSError, json.JSONDecodeError, KeyError):
            continue
    if not errors:
        errors.append(f"{cause}; no Python error was recorded, so the process was killed (by a signal, or the "
                      "operating system's out-of-memory killer: then lower the batch or completion length)")
        killed = True
    else:
        killed = False
    message = "GSPO training failed. " + "; ".join(errors)
    resume = latest_checkpoint(work_dir)  # verified: a checkpoint that would fail to load is never offered
    if resume is None:
        return message
    if killed:
        return message + (f". {resume[0].name} is kept in {work_dir} and verifies: materialize lora_adapter again "
                          f"with the same settings to resume from step {resume[1]}")
    # A Python error would most likely recur on the same settings and data: resuming is the step after the fix.
    return message + (f". {resume[0].name} is kept in {work_dir} and verifies: once the cause above is fixed, "
                      f"materializing lora_adapter again resumes from step {resume[1]}")
