"""GSPO training: TRL's ``GRPOTrainer`` with sequence-level importance sampling.

GSPO is not a separate trainer: it is GRPO whose importance ratio is computed per sequence (the geometric mean of
the token ratios) instead of per token, switched on by ``importance_sampling_level="sequence"``. Its settings
and the ``GRPOConfig`` built from them are ``core.training.gspo_config``; here are the loop, its callbacks and its
errors.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, build_grpo_config

ROLLOUT_METRICS = (
    "sampling/sampling_logp_difference/mean",
    "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
    "entropy",
)
"""What TRL logs each step about the rollout/train mismatch (with vLLM rollouts and the correction on) and the
policy's mean token entropy (always): the training curves plot them and the adapter's metadata reports them."""


def rollout_summary(log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """First/last/mean of each :data:`ROLLOUT_METRICS` series that was logged, keyed like
    ``logp_difference_mean/mean`` (empty when none was: no vLLM rollouts and no entropy logged).

    >>> rollout_summary([{"step": 1, "entropy": 2.0}, {"step": 2, "entropy": 1.0}])
    {'entropy/first': 2.0, 'entropy/last': 1.0, 'entropy/mean': 1.5}
    """
    summary: dict[str, float] = {}
    for key in ROLLOUT_METRICS:
        values = [float(h[key]) for h in log_history if h.get(key) is not None and math.isfinite(float(h[key]))]
        if not values:
            continue
        name = key.replace("sampling/sampling_", "").replace("sampling/", "").replace("/", "_")
        summary[f"{name}/first"] = round(values[0], 6)
        summary[f"{name}/last"] = round(values[-1], 6)
        summary[f"{name}/mean"] = round(sum(values) / len(values), 6)
    return summary


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the optimizer step."""


def non_finite_loss_message(loss: float, step: int, max_steps: int | None = None) -> str:
    of = f"/{max_steps}" if max_steps and max_steps > 0 else ""
    return (
        f"GSPO loss became {loss} at step {step}{of}; training stopped before that step's update was applied. "
        "Lower learning_rate or max_grad_norm, and check that every reward function returns finite numbers."
    )


class TrainingOutOfMemoryError(MemoryError):
    """The GPU ran out of memory while loading or training; the message says which settings to lower."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, whichever way the library raised it."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "cublas_status_alloc_failed" in text)


def out_of_memory_message(settings: GSPOSettings, *, step: int | None = None, max_seq_length: int | None = None,
                          load_in_4bit: bool | None = None, detail: str = "") -> str:
    """What to change after an out-of-memory error, with the values in force now."""
    where = f"at step {step}" if step else "while loading the model or before the first step finished"
    lower = [
        f"per_device_train_batch_size (now {settings.per_device_train_batch_size}; raise "
        f"gradient_accumulation_steps, now {settings.gradient_accumulation_steps}, to keep the batch)",
        f"num_generations (now {settings.num_generations})",
        f"max_completion_length (now {settings.max_completion_length})",
    ]
    if max_seq_length is not None:
        lower.append(f"max_seq_length (now {max_seq_length}; longer prompts are dropped, not truncated)")
    enable = []
    if load_in_4bit is not True:
        enable.append("load_in_4bit (4-bit base weights)")
    if not settings.gradient_checkpointing:
        enable.append("gradient_checkpointing")
    message = f"Out of GPU memory {where}. Lower " + ", ".join(lower)
    if enable:
        message += "; or enable " + " and ".join(enable)
    message += "; or shard the model over several GPUs (num_processes > 1 with distributed='fsdp')."
    if detail:
        message += f" [{detail.strip().splitlines()[0][:300]}]"
    return message


@contextmanager
def explain_out_of_memory(settings: GSPOSettings, *, step: Callable[[], int | None] = lambda: None,
                          max_seq_length: int | None = None, load_in_4bit: bool | None = None):
    """Re-raise an out-of-memory error inside the block as ``TrainingOutOfMemoryError`` saying what to lower."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise TrainingOutOfMemoryError(out_of_memory_message(
            settings, step=step(), max_seq_length=max_seq_length, load_in_4bit=load_in_4bit, detail=str(exc),
        )) from exc


def _clock(seconds: float) -> str:
    """``H:MM:SS`` of a duration.

    >>> _clock(3725.4), _clock(59.6)
    ('1:02:05', '0:01:00')
    """
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def step_progress(global_step: int, max_steps: int, steps_run: int, elapsed_s: float) -> dict[str, Any]:
    """Where training stands after ``global_step`` of ``max_steps``, ``steps_run`` of them by this process in
    ``elapsed_s`` seconds: the share done and the time left at this process's own pace (a resumed run does not
    count the steps an earlier process ran).

    >>> step_progress(20, 80, 10, 50.0)["text"]
    'GSPO step 20/80 (25%), 0:00:50 elapsed, ~0:05:00 left'
    >>> step_progress(80, 80, 80, 400.0)["eta_s"]
    0.0
    """
    percent = 100.0 * global_step / max_steps if max_steps > 0 else 100.0
    eta = elapsed_s / steps_run * max(max_steps - global_step, 0) if steps_run > 0 else None
    text = f"GSPO step {global_step}/{max_steps} ({percent:.0f}%), {_clock(elapsed_s)} elapsed"
    if eta is not None:
        text += f", ~{_clock(eta)} left"
    return {"global_step": global_step, "max_steps": max_steps, "percent": round(percent, 1),
            "elapsed_s": round(elapsed_s, 1), "eta_s": None if eta is None else round(eta, 1), "text": text}


def _progress_callback(log: Callable[[str], None] | None, progress_file: str | Path | None = None):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Forwards each step to ``log`` with the share done, the time elapsed and the time left (with the metrics
        on logged steps), stops on a non-finite logged loss naming the step, counts the steps this process ran
        and (main process) writes ``progress_file`` after each one."""

        def __init__(self):
            self.steps_run = 0
            self.current_step: int | None = None
            self.started: float | None = None
            self.progress: dict[str, Any] | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_step_begin(self, args, state, control, **kwargs):
            self.current_step = state.global_step + 1
            if self.started is None:
                self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_run += 1
            elapsed = time.monotonic() - (self.started or time.monotonic())
            self.progress = step_progress(state.global_step, state.max_steps, self.steps_run, elapsed)
            main = getattr(state, "is_world_process_zero", True)
            if progress_file is not None and main:
                from vlmrl_pipeline.core.atomic import atomic_file

                with atomic_file(progress_file) as tmp:
                    tmp.write_text(json.dumps({"pid": os.getpid(), "global_step": state.global_step,
                                               "max_steps": state.max_steps, "steps_run": self.steps_run,
                                               **{k: v for k, v in self.progress.items() if k != "text"}}))
            logging_steps = getattr(args, "logging_steps", 1) or 1
            # A logged step's line comes from on_log with its metrics; the others get the progress alone, so the
            # first line does not wait for the first logging step.
            if log is not None and main and state.global_step % logging_steps != 0:
                log(self.progress["text"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise NonFiniteLossError(non_finite_loss_message(float(loss), state.global_step, state.max_steps))
            if log is not None and "reward" in logs and getattr(state, "is_world_process_zero", True):
                keys = ("loss", "reward", "reward_std", "completions/mean_length", "frac_reward_zero_std",
                        "dynamic_sampling/groups_dropped")
                shown = " ".join(f"{k}={float(logs[k]):.4g}" for k in keys if k in logs)
                progress = self.progress if self.progress and self.progress["global_step"] == state.global_step \
                    else None
                head = progress["text"] if progress else f"GSPO step {state.global_step}/{state.max_steps}"
                log(f"{head}: {shown}")

    return ProgressCallback()


def _checked_trainer_class(base):
    """``base`` (TRL's or Unsloth's ``GRPOTrainer``) stopping at the first micro-batch whose loss is not finite.

    The check runs after the backward pass and before the optimizer step, so the bad update is never applied and
    the error names the optimizer step it belongs to (transformers itself would only average it away in the logs).
    """

    class CheckedGRPOTrainer(base):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            value = float(loss.detach().float().item())
            if not math.isfinite(value):
                raise NonFiniteLossError(non_finite_loss_message(value, self.state.global_step + 1,
                                                                 self.state.max_steps))
            return loss

    return CheckedGRPOTrainer


@dataclass
class TrainingResult:
    global_step: int
    train_runtime_s: float
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0
    """The checkpoint's step this run resumed from (0: started fresh)."""
    steps_run: int = 0
    """Optimizer steps this process ran (``global_step - resumed_from_step`` unless stopped early)."""
    optimizer_state_step: int | None = None
    """The optimizer's own step counter at the end: equals ``global_step`` only if a resumed run loaded the
    checkpoint's optimizer state (a fresh optimizer would count ``steps_run``)."""
    scheduler_last_epoch: int | None = None
    """The learning-rate scheduler's step counter at the end, same meaning."""
    world_size: int = 1
    dynamic_sampling_draws: list[dict[str, Any]] = field(default_factory=list)
    """With ``dynamic_sampling``: each extra round's optimizer step, round and the training rows it drew."""

    def series(self, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one logged metric, e.g. ``"reward"``."""
        return [(int(h["step"]), float(h[key])) for h in self.log_history if key in h and "step" in h]


def _optimizer_step_count(optimizer) -> int | None:
    try:
        state = optimizer.state_dict()["state"]
    except Exception:  # an optimizer without a standard state dict
        return None
    steps = [int(v["step"]) for v in state.values() if isinstance(v, dict) and "step" in v]
    return max(steps) if steps else None


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a trainer checkpoint folder was written at (from its ``trainer_state.json``)."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def train_gspo(
    model,
    processor,
    train_dataset,
    settings: GSPOSettings,
    output_dir: str | Path,
    reward_funcs: Sequence[Callable],
    reward_weights: Sequence[float],
    peft_config=None,
    log: Callable[[str], None] | None = None,
    *,
    resume_from_checkpoint: str | Path | None = None,
    progress_file: str | Path | None = None,
    callbacks: Sequence = (),
    save_adapter_to: str | Path | None = None,
    max_seq_length: int | None = None,
):
    """Run GSPO on ``train_dataset`` (columns ``prompt``, ``image``, ``answer``, ...) and return the trained model.

    ``model`` is either already wrapped with LoRA (Unsloth's path) or a plain model plus ``peft_config`` (PEFT's
    path). Checkpoints (every ``settings.save_steps``) go to ``output_dir``; ``resume_from_checkpoint`` (one of
    those folders) continues from it with its adapter, optimizer, scheduler, RNG and trainer state. Under
    ``accelerate launch`` with several processes every process calls this; only the main one logs, writes
    ``progress_file`` and, with ``save_adapter_to``, saves the adapter (gathered first under FSDP). Returns
    ``(trained_model, TrainingResult)``; the trained model is the PEFT model, ready to ``save_pretrained``.
    """
    from trl import GRPOTrainer

    if len(train_dataset) == 0:
        raise ValueError("GSPO needs at least one training row")
    config = build_grpo_config(settings, output_dir, processor, reward_weights, max_seq_length=max_seq_length)
    is_main = config.process_index == 0
    log = log if is_main else None
    if log is not None and config.optim != settings.optim:
        log(f"optimizer {settings.optim} needs CUDA + bitsandbytes; using {config.optim}")
    if log is not None and settings.importance_sampling_level == "sequence" and not settings.reuses_generations:
        log("note: every update is on-policy (steps_per_generation = gradient_accumulation_steps, num_iterations=1), "
            "so GSPO's sequence ratio is exactly 1 and its clipping never acts; paper_gspo_settings() reuses "
            "generations")
    progress = _progress_callback(log, progress_file)
    trainer_class = _checked_trainer_class(GRPOTrainer)
    if settings.dynamic_sampling:
        from vlmrl_pipeline.core.training.dynamic_sampling import dynamic_sampling_trainer_class

        trainer_class = dynamic_sampling_trainer_class(trainer_class, settings.dynamic_sampling_max_rounds, log)
    trainer = trainer_class(
        model=model,
        reward_funcs=list(reward_funcs),
        args=config,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[progress, *callbacks],
    )
    # Progress goes through ``log`` (the Dagster run log); TRL's own printer would dump every dict to stdout too.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if settings.use_vllm:
        from vlmrl_pipeline.core.training.vllm_rollouts import feed_unexpanded_image_prompts

        feed_unexpanded_image_prompts(trainer, processor, log)
    resumed_from = checkpoint_step(resume_from_checkpoint) if resume_from_checkpoint is not None else 0
    output = trainer.train(resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None)
    if save_adapter_to is not None:
        _save_adapter(trainer, save_adapter_to)
    result = TrainingResult(
        global_step=int(trainer.state.global_step),
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        log_history=list(trainer.state.log_history),
        resumed_from_step=resumed_from,
        steps_run=progress.steps_run,
        optimizer_state_step=_optimizer_step_count(trainer.optimizer),
        scheduler_last_epoch=getattr(getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler),
                                     "last_epoch", None),
        world_size=int(config.world_size),
        dynamic_sampling_draws=list(getattr(trainer, "dynamic_sampling_draws", [])),
    )
    return trainer.model, result


def _save_adapter(trainer, folder: str | Path) -> None:
    """Save the LoRA adapter from the main process; under FSDP every process first joins gathering it."""
    accelerator = trainer.accelerator
    if trainer.is_fsdp_enabled:
        state_dict = accelerator.get_state_dict(trainer.model)
        if accelerator.is_main_process:
            accelerator.unwrap_model(trainer.model).save_pretrained(folder, state_dict=state_dict)
    elif accelerator.is_main_process:
        accelerator.unwrap_model(trainer.model).save_pretrained(folder)
    accelerator.wait_for_everyone()
