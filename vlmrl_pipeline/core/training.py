"""GSPO training: TRL's ``GRPOTrainer`` with sequence-level importance sampling.

GSPO is not a separate trainer: it is GRPO whose importance ratio is computed per sequence (the geometric mean of
the token ratios) instead of per token, switched on by ``importance_sampling_level="sequence"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.modeling import vision_token_ids


@dataclass(frozen=True)
class GSPOSettings:
    """The ``GRPOConfig`` options this project exposes. Defaults are the seed notebook's (Qwen3-VL 8B, one GPU).

    Note: with ``steps_per_generation`` left at its default (= ``gradient_accumulation_steps``) and
    ``num_iterations=1`` every update is on-policy, the sequence ratio is exactly 1 and GSPO's clipping never acts;
    it only differs from GRPO when the same generations are reused (``steps_per_generation >
    gradient_accumulation_steps`` or ``num_iterations > 1``).
    """

    learning_rate: float = 5e-6
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0
    """Linear warm-up: an int is a step count, a float in [0, 1) a share of all steps (transformers 5 merged
    ``warmup_ratio`` into this field)."""
    weight_decay: float = 0.0
    optim: str = "adamw_8bit"
    """``adamw_8bit`` needs bitsandbytes and CUDA; on a CPU it falls back to ``adamw_torch`` (logged)."""
    per_device_train_batch_size: int = 8
    """Completions per device per micro-step (prompts per step = this / num_generations)."""
    gradient_accumulation_steps: int = 4
    num_generations: int = 4
    """Completions sampled per prompt: the group whose rewards are normalised into advantages."""
    max_completion_length: int = 1024
    num_train_epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run ``num_train_epochs``)."""
    max_grad_norm: float = 0.1
    importance_sampling_level: str = "sequence"
    """``"sequence"`` is GSPO; ``"token"`` is GRPO."""
    loss_type: str = "dr_grpo"
    """The seed's choice. TRL warns that with sequence-level ratios ``dr_grpo`` weights sequences by length; the
    GSPO paper uses ``"grpo"``."""
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    """KL coefficient against the reference model; 0 skips loading a reference copy."""
    temperature: float = 1.0
    steps_per_generation: int | None = None
    num_iterations: int = 1
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    logging_steps: int = 1
    seed: int = 3407

    @property
    def reuses_generations(self) -> bool:
        """True when updates run on generations from an older policy, the only case where GSPO's sequence ratio
        (and its clipping) can differ from 1."""
        spg = self.steps_per_generation or self.gradient_accumulation_steps
        return spg > self.gradient_accumulation_steps or self.num_iterations > 1


def paper_gspo_settings(base: GSPOSettings | None = None) -> GSPOSettings:
    """GSPO as its paper runs it, on top of ``base`` (default: the seed's settings).

    ``loss_type="grpo"`` (sequence-level ratios without ``dr_grpo``'s length weighting), ``beta=0``, the paper's
    asymmetric sequence clip ``epsilon=3e-4`` / ``epsilon_high=4e-4``, and each generation batch reused for two
    optimizer steps (``steps_per_generation = 2 * gradient_accumulation_steps``), so the second update sees a
    policy that has moved since sampling and the sequence ratio actually departs from 1.
    """
    base = base or GSPOSettings()
    return replace(
        base, loss_type="grpo", beta=0.0, epsilon=3e-4, epsilon_high=4e-4,
        steps_per_generation=2 * base.gradient_accumulation_steps, num_iterations=1,
    )


def resolve_optim(optim: str) -> str:
    """8-bit optimizers need bitsandbytes on CUDA; elsewhere use the equivalent full-precision AdamW."""
    if "8bit" not in optim:
        return optim
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        return optim
    return "adamw_torch"


def build_grpo_config(settings: GSPOSettings, output_dir: str | Path, processor, reward_weights: Sequence[float]):
    """A ``trl.GRPOConfig`` from ``settings``, with the vision special tokens suppressed in every rollout."""
    import torch
    from trl import GRPOConfig

    values = asdict(settings)
    values["optim"] = resolve_optim(settings.optim)
    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(output_dir),
        **values,
        reward_weights=list(reward_weights),
        # TRL suppresses only <|image_pad|>; a sampled vision start/end or video pad breaks the next forward too.
        generation_kwargs={"suppress_tokens": vision_token_ids(processor)},
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def _progress_callback(log: Callable[[str], None] | None):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Forwards each logged step to ``log`` and stops on a non-finite loss, naming the step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise NonFiniteLossError(
                    f"GSPO loss became {loss} at step {state.global_step}: lower learning_rate or max_grad_norm"
                )
            if log is not None and "reward" in logs:
                keys = ("loss", "reward", "reward_std", "completions/mean_length", "frac_reward_zero_std")
                shown = " ".join(f"{k}={float(logs[k]):.4g}" for k in keys if k in logs)
                log(f"GSPO step {state.global_step}/{state.max_steps}: {shown}")

    return ProgressCallback()


@dataclass
class TrainingResult:
    global_step: int
    train_runtime_s: float
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one logged metric, e.g. ``"reward"``."""
        return [(int(h["step"]), float(h[key])) for h in self.log_history if key in h and "step" in h]


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
):
    """Run GSPO on ``train_dataset`` (columns ``prompt``, ``image``, ``answer``, ...) and return the trained model.

    ``model`` is either already wrapped with LoRA (Unsloth's path) or a plain model plus ``peft_config`` (PEFT's
    path). Returns ``(trained_model, TrainingResult)``; the trained model is the PEFT model, ready to
    ``save_pretrained`` as an adapter.
    """
    from trl import GRPOTrainer

    if len(train_dataset) == 0:
        raise ValueError("GSPO needs at least one training row")
    config = build_grpo_config(settings, output_dir, processor, reward_weights)
    if log is not None and config.optim != settings.optim:
        log(f"optimizer {settings.optim} needs CUDA + bitsandbytes; using {config.optim}")
    if log is not None and settings.importance_sampling_level == "sequence" and not settings.reuses_generations:
        log("note: every update is on-policy (steps_per_generation = gradient_accumulation_steps, num_iterations=1), "
            "so GSPO's sequence ratio is exactly 1 and its clipping never acts; paper_gspo_settings() reuses "
            "generations")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=config,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[_progress_callback(log)],
    )
    # Progress goes through ``log`` (the Dagster run log); TRL's own printer would dump every dict to stdout too.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    result = TrainingResult(
        global_step=int(trainer.state.global_step),
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        log_history=list(trainer.state.log_history),
    )
    return trainer.model, result

