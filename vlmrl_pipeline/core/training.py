"""GSPO training: TRL's ``GRPOTrainer`` with sequence-level importance sampling.

GSPO is not a separate trainer: it is GRPO whose importance ratio is computed per sequence (the geometric mean of
the token ratios) instead of per token, switched on by ``importance_sampling_level="sequence"``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.modeling import vision_token_ids

DISTRIBUTED_MODES = ("ddp", "fsdp")
VLLM_MODES = ("colocate",)
"""How TRL runs vLLM for rollouts. ``server`` (a separate ``trl vllm-serve`` process on other GPUs) is not offered:
nothing in the lineage starts or owns such a server."""
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
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
LAUNCH_FIELDS = ("num_processes", "distributed")
"""``GSPOSettings`` fields that shape the launch (``core.launch``), not ``GRPOConfig``."""
PROJECT_FIELDS = LAUNCH_FIELDS + ("rehearsal_reward_weight", "reward_max_val", "reward_min_val", "report_to")
"""``GSPOSettings`` fields the project acts on itself; every other field is a ``GRPOConfig`` option."""


REPORT_TARGETS = ("none", "tensorboard", "wandb", "mlflow")
"""``GSPOSettings.report_to`` values: transformers' integrations this project supports."""
REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
"""The package each target needs (any one of them)."""


def report_targets(report_to: str) -> list[str]:
    """``report_to`` as the list transformers takes.

    >>> report_targets("tensorboard, wandb")
    ['tensorboard', 'wandb']
    >>> report_targets("none")
    ['none']
    """
    return [t.strip() for t in str(report_to).split(",") if t.strip()] or ["none"]


def report_to_problems(settings: GSPOSettings) -> list[str]:
    """Targets whose package is not installed, naming the setting (checked before anything is launched)."""
    import importlib.util

    return [f"training_settings.report_to={settings.report_to!r}: {target} needs the {REPORT_PACKAGES[target][0]} "
            f"package, which is not installed (pip install {REPORT_PACKAGES[target][0]}), or drop it from report_to"
            for target in report_targets(settings.report_to) if target in REPORT_PACKAGES
            and not any(importlib.util.find_spec(pkg) for pkg in REPORT_PACKAGES[target])]


@dataclass(frozen=True)
class GSPOSettings:
    """The ``GRPOConfig`` options this project exposes. Defaults are the seed notebook's (Qwen3-VL 8B, one GPU).

    Note: with ``steps_per_generation`` left at its default (= ``gradient_accumulation_steps``) and
    ``num_iterations=1`` every update is on-policy, the sequence ratio is exactly 1 and GSPO's clipping never acts;
    it only differs from GRPO when the same generations are reused (``steps_per_generation >
    gradient_accumulation_steps`` or ``num_iterations > 1``).
    """

    learning_rate: float = field(default=5e-6, metadata={"help": (
        "Peak learning rate of the LoRA weights (the seeds' 5e-6 for an 8B model).")})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": (
        "transformers' learning-rate schedule after the warm-up (``cosine``, ``linear``, ``constant``, ...).")})
    warmup_steps: float = field(default=0.0, metadata={"help": (
        "Linear warm-up: an int is a step count, a float in [0, 1) a share of all steps (transformers 5 merged "
        "``warmup_ratio`` into this field).")})
    weight_decay: float = field(default=0.0, metadata={"help": (
        "AdamW's decoupled weight decay.")})
    adam_beta1: float = field(default=0.9, metadata={"help": (
        "AdamW's first-moment decay.")})
    adam_beta2: float = field(default=0.999, metadata={"help": (
        "AdamW's second-moment decay: transformers' default 0.999 (seed 000 sets none); Unsloth's vision "
        "notebooks (seed 003) use 0.99.")})
    optim: str = field(default="adamw_8bit", metadata={"help": (
        "``adamw_8bit`` needs bitsandbytes and CUDA; on a CPU it falls back to ``adamw_torch`` (logged).")})
    per_device_train_batch_size: int = field(default=8, metadata={"help": (
        "Completions per device per micro-step (prompts per step = this / num_generations).")})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": (
        "Micro-steps per optimizer step; a step's batch is per_device_train_batch_size x this x processes "
        "completions, divisible by num_generations.")})
    num_generations: int = field(default=4, metadata={"help": (
        "Completions sampled per prompt: the group whose rewards are normalised into advantages.")})
    max_completion_length: int = field(default=1024, metadata={"help": (
        "Most tokens a rollout may generate; longer ones are cut (and count as truncated).")})
    num_train_epochs: float = field(default=1.0, metadata={"help": (
        "Passes over the training split when max_steps is -1.")})
    max_steps: int = field(default=-1, metadata={"help": (
        "Stop after this many optimizer steps (-1: run ``num_train_epochs``).")})
    max_grad_norm: float = field(default=0.1, metadata={"help": (
        "Gradients are clipped to this global norm (the seeds' 0.1).")})
    importance_sampling_level: str = field(default="sequence", metadata={"help": (
        "``\"sequence\"`` is GSPO; ``\"token\"`` is GRPO.")})
    loss_type: str = field(default="dr_grpo", metadata={"help": (
        "The seed's choice. TRL warns that with sequence-level ratios ``dr_grpo`` weights sequences by length; "
        "the GSPO paper uses ``\"grpo\"``.")})
    epsilon: float = field(default=0.2, metadata={"help": (
        "Lower clipping range of the importance ratio: ratios below 1 - epsilon are clipped.")})
    epsilon_high: float | None = field(default=None, metadata={"help": (
        "Upper clipping range (1 + epsilon_high); null: the same as epsilon.")})
    beta: float = field(default=0.0, metadata={"help": (
        "KL coefficient against the reference model; 0 skips loading a reference copy.")})
    temperature: float = field(default=1.0, metadata={"help": (
        "Sampling temperature of the rollouts (also used to compute the training log-probabilities).")})
    steps_per_generation: int | None = field(default=None, metadata={"help": (
        "Optimizer micro-steps served by one round of generation; null: gradient_accumulation_steps (on-policy).")})
    num_iterations: int = field(default=1, metadata={"help": (
        "Updates per generated batch (GRPO's mu); above 1 reuses rollouts off-policy.")})
    scale_rewards: str = field(default="group", metadata={"help": (
        "How advantages are scaled: ``group`` (by each group's reward std), ``batch`` or ``none``.")})
    mask_truncated_completions: bool = field(default=False, metadata={"help": (
        "Leave completions cut at max_completion_length out of the loss.")})
    logging_steps: int = field(default=1, metadata={"help": (
        "Log the trainer's metrics every this many optimizer steps.")})
    report_to: str = field(default="tensorboard", metadata={"help": (
        "Where the trainer also sends its metrics, comma-separated: ``tensorboard`` (event files, offline; the "
        "asset keeps them in the adapter's ``tensorboard/`` folder), ``wandb``, ``mlflow`` (configured through "
        "their own environment variables), or ``none``. The run log and the training curves get them either way.")})
    seed: int = field(default=3407, metadata={"help": (
        "Seed of training (sampling, dropout, data order).")})
    gradient_checkpointing: bool = field(default=True, metadata={"help": (
        "Recompute activations in the backward pass instead of keeping them (TRL's default): less memory, about a "
        "third more compute per step. Turn it on before lowering the batch when a step runs out of memory.")})
    save_steps: int = field(default=25, metadata={"help": (
        "Write a checkpoint (adapter, optimizer, scheduler, RNG and trainer state) every this many optimizer "
        "steps into the asset's checkpoint folder; materializing ``lora_adapter`` again after a killed run "
        "resumes from the newest complete one. 0 writes none (a killed run then starts over).")})
    save_total_limit: int = field(default=2, metadata={"help": (
        "Checkpoints kept (the newest ones); at least 1. Two, so that a run killed while writing one still has "
        "the previous one complete.")})
    num_processes: int = field(default=1, metadata={"help": (
        "Training processes ``accelerate launch`` starts, one per GPU: each holds a replica of the policy "
        "(``ddp``) or a shard of it (``fsdp``) and generates and trains on its own "
        "``per_device_train_batch_size`` completions, so a step covers ``num_processes`` times as many. 0 means "
        "one per visible GPU. A CPU-only machine runs 1.")})
    rehearsal_reward_weight: float = field(default=0.0, metadata={"help": (
        "Weight of :func:`vlmrl_pipeline.core.rehearsal.ascii_share_reward`, added to the recipe's rewards only "
        "when above 0. For rehearsals on stand-in checkpoints with random weights, which never earn a task "
        "reward: every group's advantages would be 0, the LoRA would stay zero and the ``lora_weights_trained`` "
        "check would stop the run. Leave at 0 for real training.")})
    use_vllm: bool = field(default=False, metadata={"help": (
        "Generate the rollouts with vLLM instead of ``model.generate`` (several times faster; TRL's "
        "``use_vllm``). The transformers backend runs TRL's colocated engine (same GPU, weights synced after "
        "every update); the Unsloth backend needs ``model_settings.fast_inference=True`` (Unsloth's engine, "
        "sharing the weights). Needs the ``vllm`` extra.")})
    vllm_mode: str = field(default="colocate", metadata={"help": (
        "``colocate``: vLLM runs inside the training process on the same GPU (the only mode offered here).")})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": (
        "Transformers backend with ``use_vllm``: the share of GPU memory the colocated vLLM engine takes for its "
        "weights and KV cache (the rest is training's). The Unsloth backend uses "
        "``model_settings.gpu_memory_utilization`` instead.")})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": (
        "Transformers backend with ``use_vllm``: vLLM frees its weights and KV cache while the optimizer steps "
        "and reloads them for the next generation (less memory, some seconds per step).")})
    vllm_importance_sampling_correction: bool = field(default=True, metadata={"help": (
        "With ``use_vllm``: weight each update by pi_train / pi_vLLM of the sampled tokens, since the two "
        "engines' numerics differ (the rollout/train mismatch, seed 004's TIS). Also what makes TRL log the "
        "mismatch metrics.")})
    vllm_importance_sampling_mode: str = field(default="sequence_mask", metadata={"help": (
        "How the correction treats ratios outside [clip_min, clip_max]: ``token_truncate`` clips each token's "
        "ratio (RLinf's TIS), ``sequence_truncate`` clips the sequence's, ``*_mask`` drops the token / sequence "
        "instead (TRL's default ``sequence_mask``).")})
    vllm_importance_sampling_clip_max: float | None = field(default=3.0, metadata={"help": (
        "Upper bound C_max of the mismatch ratio (RLinf's ``importance_sampling_clip``: 2).")})
    vllm_importance_sampling_clip_min: float | None = field(default=None, metadata={"help": (
        "Lower bound C_min of the mismatch ratio (none by default).")})
    reward_max_val: float = field(default=1.0, metadata={"help": (
        "``boxed`` answers only: the reward of a correct answer (RLinf's ``reward_max_val``).")})
    reward_min_val: float = field(default=0.0, metadata={"help": (
        "``boxed`` answers only: the reward of a wrong or missing answer (RLinf's ``reward_min_val``).")})
    distributed: str = field(default="ddp", metadata={"help": (
        "With more than one process: ``ddp`` (data parallel; every GPU holds the whole model, gradients are "
        "averaged) or ``fsdp`` (FSDP2; parameters, gradients and optimizer state are sharded across the GPUs, for "
        "a model that does not fit on one). Ignored with one process.")})

    def __post_init__(self) -> None:
        if self.distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {DISTRIBUTED_MODES}, got {self.distributed!r}")
        if self.num_processes < 0:
            raise ValueError(f"num_processes must be >= 0 (0: one per visible GPU), got {self.num_processes}")
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, got {self.save_total_limit}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}: 'server' needs a "
                             "separate vLLM server process, which this pipeline does not start")
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}"
                             ": training needs the rest of the GPU")
        if self.vllm_importance_sampling_mode not in IMPORTANCE_SAMPLING_MODES:
            raise ValueError(f"vllm_importance_sampling_mode must be one of {IMPORTANCE_SAMPLING_MODES}, got "
                             f"{self.vllm_importance_sampling_mode!r}")
        cmin, cmax = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if cmax is not None and not cmax > 0:
            raise ValueError(f"vllm_importance_sampling_clip_max must be > 0 (or null), got {cmax}")
        if cmin is not None and (cmin < 0 or (cmax is not None and cmin >= cmax)):
            raise ValueError(f"vllm_importance_sampling_clip_min must be >= 0 and below clip_max={cmax}, got {cmin}")
        if not self.reward_max_val > self.reward_min_val:
            raise ValueError(f"reward_max_val ({self.reward_max_val}) must be above reward_min_val "
                             f"({self.reward_min_val}): a correct answer must earn more than a wrong one")
        targets = report_targets(self.report_to)
        unknown = [t for t in targets if t not in REPORT_TARGETS]
        if unknown or ("none" in targets and len(targets) > 1):
            raise ValueError(f"report_to must be 'none' or a comma-separated list of {REPORT_TARGETS[1:]}, got "
                             f"{self.report_to!r}")
        if self.rehearsal_reward_weight < 0:
            raise ValueError(f"rehearsal_reward_weight must be >= 0, got {self.rehearsal_reward_weight}")
        # Refused here, when the settings are made (the run's start), instead of inside TRL minutes into the run.
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length",
                     "num_iterations", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2, got {self.num_generations}: GSPO/GRPO compares each "
                             "completion with the others of its prompt's group, so a group of one has no advantage "
                             "to learn from")
        if self.steps_per_generation is not None and self.steps_per_generation < 1:
            raise ValueError(f"steps_per_generation must be >= 1 (or null), got {self.steps_per_generation}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be positive, or -1 to run num_train_epochs, got {self.max_steps}")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")
        if self.importance_sampling_level not in ("sequence", "token"):
            raise ValueError("importance_sampling_level must be 'sequence' (GSPO) or 'token' (GRPO), got "
                             f"{self.importance_sampling_level!r}")
        if self.num_processes:  # 0 (one per GPU) is resolved on the training machine, which checks again then
            self.check_generation_batch(self.num_processes)

    def check_generation_batch(self, processes: int) -> None:
        """TRL samples ``per_device_train_batch_size x processes x steps_per_generation`` completions per
        generation, in whole groups of ``num_generations``: refuse a batch that does not split into groups."""
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        batch = self.per_device_train_batch_size * processes * steps
        if batch % self.num_generations:
            raise ValueError(
                f"the generation batch per_device_train_batch_size x processes x steps_per_generation = "
                f"{self.per_device_train_batch_size} x {processes} x {steps} = {batch} is not divisible by "
                f"num_generations={self.num_generations}: make per_device_train_batch_size a multiple of "
                f"num_generations (or change num_generations)")

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


SUPPRESSED_LOGIT_BIAS = -100.0
"""vLLM's strongest logit bias (its API clamps to [-100, 100]): what suppressing a token means there."""


def suppressed_token_kwargs(processor, engine: str) -> dict[str, Any]:
    """Generation arguments that keep the vision special tokens out of sampled text, for ``engine``.

    ``model.generate`` takes ``suppress_tokens``; vLLM's ``SamplingParams`` has no such field (TRL passes
    ``generation_kwargs`` straight into it) and takes a logit bias instead.
    """
    ids = vision_token_ids(processor)
    if not ids:
        return {}
    if engine == "vllm":
        return {"logit_bias": {int(i): SUPPRESSED_LOGIT_BIAS for i in ids}}
    return {"suppress_tokens": list(ids)}


def build_grpo_config(settings: GSPOSettings, output_dir: str | Path, processor, reward_weights: Sequence[float],
                      max_seq_length: int | None = None):
    """A ``trl.GRPOConfig`` from ``settings``, with the vision special tokens suppressed in every rollout.

    ``max_seq_length`` (the model's) bounds vLLM's context with ``use_vllm``; vLLM would otherwise size its KV
    cache for the checkpoint's whole context (262,144 tokens for Qwen3-VL) and refuse to start.
    """
    import torch
    from trl import GRPOConfig

    values = {k: v for k, v in asdict(settings).items() if k not in PROJECT_FIELDS}
    values["optim"] = resolve_optim(settings.optim)
    if settings.save_steps == 0:
        values.pop("save_steps")  # GRPOConfig wants a positive number even when nothing is saved
    if settings.use_vllm and max_seq_length is not None:
        values["vllm_max_model_length"] = int(max_seq_length)
    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(output_dir),
        **values,
        save_strategy="steps" if settings.save_steps > 0 else "no",
        reward_weights=list(reward_weights),
        # TRL suppresses only <|image_pad|>; a sampled vision start/end or video pad breaks the next forward too.
        generation_kwargs=suppressed_token_kwargs(processor, "vllm" if settings.use_vllm else "transformers"),
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        report_to=report_targets(settings.report_to),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # transformers' default hides a NaN/inf loss from the logs (it logs the running average instead); the
        # trainer below stops on the first one, so the logs must not paper over it either.
        logging_nan_inf_filter=False,
    )


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


def _progress_callback(log: Callable[[str], None] | None, progress_file: str | Path | None = None):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Forwards each logged step to ``log``, stops on a non-finite logged loss naming the step, counts the steps
        this process ran and (main process) writes ``progress_file`` after each one."""

        def __init__(self):
            self.steps_run = 0
            self.current_step: int | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.current_step = state.global_step + 1

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_run += 1
            if progress_file is not None and getattr(state, "is_world_process_zero", True):
                from vlmrl_pipeline.core.atomic import atomic_file

                with atomic_file(progress_file) as tmp:
                    tmp.write_text(json.dumps({"pid": os.getpid(), "global_step": state.global_step,
                                               "max_steps": state.max_steps, "steps_run": self.steps_run}))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise NonFiniteLossError(non_finite_loss_message(float(loss), state.global_step, state.max_steps))
            if log is not None and "reward" in logs and getattr(state, "is_world_process_zero", True):
                keys = ("loss", "reward", "reward_std", "completions/mean_length", "frac_reward_zero_std")
                shown = " ".join(f"{k}={float(logs[k]):.4g}" for k in keys if k in logs)
                log(f"GSPO step {state.global_step}/{state.max_steps}: {shown}")

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
    trainer = _checked_trainer_class(GRPOTrainer)(
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
        from vlmrl_pipeline.core.vllm_rollouts import feed_unexpanded_image_prompts

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
