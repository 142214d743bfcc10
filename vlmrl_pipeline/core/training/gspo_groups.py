"""The groups :class:`~vlmrl_pipeline.core.training.gspo_config.GSPOSettings` is composed of, each a small frozen
dataclass with its fields' help and its own checks (one rule per field, here; rules across groups stay in
``GSPOSettings``). The first five are ``GRPOConfig`` options, grouped as TRL's ``grpo_config.py`` docstring groups
them; the rest are the project's own, which never reach ``GRPOConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DISTRIBUTED_MODES = ("ddp", "fsdp")
VLLM_MODES = ("colocate", "server")
"""How TRL runs vLLM for rollouts: in the training process (``colocate``), or in a ``trl vllm-serve`` process that
the ``lora_adapter`` step starts on GPUs of its own and stops when it ends (``server``,
``core.training.rollout_server``)."""
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
IMPORTANCE_SAMPLING_LEVELS = ("sequence", "token")
ROLLOUT_ENGINES = ("auto", "vllm", "generate")
"""``GSPOSettings.rollout_engine`` values; ``core.training.rollout_engine`` resolves them on the training machine."""
KEEP_CHECKPOINTS = ("last", "best_validation")
"""``GSPOSettings.keep_checkpoint`` values: which adapter ``lora_adapter`` writes."""
REPORT_TARGETS = ("none", "tensorboard", "wandb", "mlflow")
"""``GSPOSettings.report_to`` values: transformers' integrations this project supports."""


def report_targets(report_to: str) -> list[str]:
    """``report_to`` as the list transformers takes.

    >>> report_targets("tensorboard, wandb")
    ['tensorboard', 'wandb']
    >>> report_targets("none")
    ['none']
    """
    return [t.strip() for t in str(report_to).split(",") if t.strip()] or ["none"]


def _at_least_one(settings, *names: str) -> None:
    # Refused when the settings are made (the run's start), instead of inside TRL minutes into the run.
    for name in names:
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(settings, name)}")


# ---- GRPOConfig's options ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer, its schedule and the run's length: the options ``GRPOConfig`` takes from transformers'
    ``TrainingArguments``."""

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
    max_grad_norm: float = field(default=0.1, metadata={"help": (
        "Gradients are clipped to this global norm (the seeds' 0.1).")})
    num_train_epochs: float = field(default=1.0, metadata={"help": (
        "Passes over the training split when max_steps is -1.")})
    max_steps: int = field(default=-1, metadata={"help": (
        "Stop after this many optimizer steps (-1: run ``num_train_epochs``).")})
    seed: int = field(default=3407, metadata={"help": (
        "Seed of training (sampling, dropout, data order).")})
    gradient_checkpointing: bool = field(default=True, metadata={"help": (
        "Recompute activations in the backward pass instead of keeping them (TRL's default): less memory, about a "
        "third more compute per step. Turn it on before lowering the batch when a step runs out of memory.")})

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be positive, or -1 to run num_train_epochs, got {self.max_steps}")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs}")


@dataclass(frozen=True)
class BatchGenerationSettings:
    """How many completions a step samples and trains on, and how: TRL's "data preprocessing" and "generation"
    parameters."""

    per_device_train_batch_size: int = field(default=8, metadata={"help": (
        "Completions per device per micro-step (prompts per step = this / num_generations).")})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": (
        "Micro-steps per optimizer step; a step's batch is per_device_train_batch_size x this x processes "
        "completions, divisible by num_generations.")})
    num_generations: int = field(default=4, metadata={"help": (
        "Completions sampled per prompt: the group whose rewards are normalised into advantages.")})
    max_completion_length: int = field(default=1024, metadata={"help": (
        "Most tokens a rollout may generate; longer ones are cut (and count as truncated).")})
    steps_per_generation: int | None = field(default=None, metadata={"help": (
        "Optimizer micro-steps served by one round of generation; null: gradient_accumulation_steps (on-policy).")})
    temperature: float = field(default=1.0, metadata={"help": (
        "Sampling temperature of the rollouts (also used to compute the training log-probabilities).")})

    def __post_init__(self) -> None:
        _at_least_one(self, "per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2, got {self.num_generations}: GSPO/GRPO compares each "
                             "completion with the others of its prompt's group, so a group of one has no advantage "
                             "to learn from")
        if self.steps_per_generation is not None and self.steps_per_generation < 1:
            raise ValueError(f"steps_per_generation must be >= 1 (or null), got {self.steps_per_generation}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")

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


@dataclass(frozen=True)
class GSPOLossSettings:
    """The policy loss: importance ratio level (GSPO or GRPO), its clipping, the KL term and the advantages (TRL's
    "training" parameters)."""

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
    num_iterations: int = field(default=1, metadata={"help": (
        "Updates per generated batch (GRPO's mu); above 1 reuses rollouts off-policy.")})
    scale_rewards: str = field(default="group", metadata={"help": (
        "How advantages are scaled: ``group`` (by each group's reward std), ``batch`` or ``none``.")})
    mask_truncated_completions: bool = field(default=False, metadata={"help": (
        "Leave completions cut at max_completion_length out of the loss.")})

    def __post_init__(self) -> None:
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError("importance_sampling_level must be 'sequence' (GSPO) or 'token' (GRPO), got "
                             f"{self.importance_sampling_level!r}")
        _at_least_one(self, "num_iterations")


@dataclass(frozen=True)
class VLLMRolloutSettings:
    """Rollouts through vLLM (TRL's "generation acceleration powered by vLLM", its server and colocated parts) and
    the correction of the rollout/train mismatch they bring."""

    use_vllm: bool = field(default=False, metadata={"help": (
        "The low-level switch under ``rollout_engine``: generate the rollouts with vLLM instead of "
        "``model.generate`` (several times faster; TRL's ``use_vllm``). The transformers backend runs TRL's "
        "colocated engine (same GPU, weights synced after every update); the Unsloth backend needs "
        "``model_settings.fast_inference=True`` (Unsloth's engine, sharing the weights). Needs the ``vllm`` "
        "extra. True means vLLM whatever ``rollout_engine`` (``auto``) would pick; refused with "
        "``rollout_engine='generate'``.")})
    vllm_mode: str = field(default="colocate", metadata={"help": (
        "``colocate``: vLLM runs inside each training process, on its GPU. ``server``: the ``lora_adapter`` step "
        "starts ``trl vllm-serve`` on the GPUs named in ``rollout_server.gpus`` (training takes the others), "
        "trains against it and stops it when the step ends; for a policy whose engine and training do not fit on "
        "one GPU together, or to keep generation off the training GPUs. Transformers backend, with use_vllm.")})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": (
        "Server mode: the rollout server's address (TRL's ``vllm_server_base_url``). Leave null: the step fills in "
        "the server it starts. Set it (with ``rollout_server.gpus`` empty) only to train against a ``trl "
        "vllm-serve`` you run yourself, serving the same base model.")})
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

    def __post_init__(self) -> None:
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
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


@dataclass(frozen=True)
class CheckpointLoggingSettings:
    """When the trainer writes checkpoints and logs its metrics."""

    save_steps: int = field(default=25, metadata={"help": (
        "Write a checkpoint (adapter, optimizer, scheduler, RNG and trainer state) every this many optimizer "
        "steps into the asset's checkpoint folder; materializing ``lora_adapter`` again after a killed run "
        "resumes from the newest complete one. 0 writes none (a killed run then starts over).")})
    save_total_limit: int = field(default=2, metadata={"help": (
        "Checkpoints kept (the newest ones); at least 1. Two, so that a run killed while writing one still has "
        "the previous one complete.")})
    logging_steps: int = field(default=1, metadata={"help": (
        "Log the trainer's metrics every this many optimizer steps.")})

    def __post_init__(self) -> None:
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, got {self.save_total_limit}")
        _at_least_one(self, "logging_steps")


# ---- the project's own -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSettings:
    """How many training processes ``accelerate launch`` starts and how they share the model
    (``core.training.launch``)."""

    num_processes: int = field(default=1, metadata={"help": (
        "Training processes ``accelerate launch`` starts, one per GPU: each holds a replica of the policy "
        "(``ddp``) or a shard of it (``fsdp``) and generates and trains on its own "
        "``per_device_train_batch_size`` completions, so a step covers ``num_processes`` times as many. 0 means "
        "one per visible GPU. A CPU-only machine runs 1.")})
    distributed: str = field(default="ddp", metadata={"help": (
        "With more than one process: ``ddp`` (data parallel; every GPU holds the whole model, gradients are "
        "averaged) or ``fsdp`` (FSDP2; parameters, gradients and optimizer state are sharded across the GPUs, for "
        "a model that does not fit on one). Ignored with one process.")})

    def __post_init__(self) -> None:
        if self.num_processes < 0:
            raise ValueError(f"num_processes must be >= 0 (0: one per visible GPU), got {self.num_processes}")
        if self.distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {DISTRIBUTED_MODES}, got {self.distributed!r}")


@dataclass(frozen=True)
class RolloutEngineSettings:
    """What generates the rollouts, resolved to ``use_vllm`` on the training machine
    (``core.training.rollout_engine``)."""

    rollout_engine: str = field(default="auto", metadata={"help": (
        "What generates the GSPO rollouts: ``vllm`` (required: TRL's colocated engine on the transformers "
        "backend, Unsloth's engine with ``fast_inference`` on the Unsloth backend; refused before any model loads "
        "where it cannot run), ``generate`` (``model.generate``, never vLLM), or ``auto`` (vLLM where it can run: "
        "CUDA, vLLM installed, a policy it can serve; else ``model.generate``, with the reason in the run log). "
        "Sets ``use_vllm`` / ``model_settings.fast_inference`` on the training machine; ``lora_adapter``'s "
        "metadata records what it resolved to.")})

    def __post_init__(self) -> None:
        if self.rollout_engine not in ROLLOUT_ENGINES:
            raise ValueError(f"rollout_engine must be one of {ROLLOUT_ENGINES}, got {self.rollout_engine!r}")


@dataclass(frozen=True)
class RewardSettings:
    """The rewards trained with (``core.rewards``, ``core.reward_plugins``): plugged-in functions and weights, the
    boxed reward's values, the rehearsal reward."""

    reward_funcs: tuple[str, ...] = field(default=(), metadata={"help": (
        "Reward functions to train with instead of the answer format's, as import paths "
        "``package.module:function`` (the module's folder on ``PYTHONPATH``), each with TRL's signature "
        "``f(prompts, completions, **dataset_columns) -> list[float | None]``. Empty: the answer format's "
        "rewards (``tags``: the seed's formatting + correctness pair; ``boxed``: RLinf's boxed reward). Each is "
        "imported and tried on a sample before any model loads; evaluation's records score with the same set, "
        "and the modules' source is part of the reward version (edit one and its scores go stale).")})
    reward_weights: tuple[float, ...] = field(default=(), metadata={"help": (
        "One weight per reward function (TRL's ``reward_weights``); empty: the answer format's weights (0.3 / 1.0 "
        "for ``tags``), or 1.0 each for ``reward_funcs``.")})
    reward_max_val: float = field(default=1.0, metadata={"help": (
        "``boxed`` answers only: the reward of a correct answer (RLinf's ``reward_max_val``).")})
    reward_min_val: float = field(default=0.0, metadata={"help": (
        "``boxed`` answers only: the reward of a wrong or missing answer (RLinf's ``reward_min_val``).")})
    rehearsal_reward_weight: float = field(default=0.0, metadata={"help": (
        "Weight of :func:`vlmrl_pipeline.core.standin.rehearsal.ascii_share_reward`, added to the recipe's rewards "
        "only when above 0. For rehearsals on stand-in checkpoints with random weights, which never earn a task "
        "reward: every group's advantages would be 0, the LoRA would stay zero and the ``lora_weights_trained`` "
        "check would stop the run. Leave at 0 for real training.")})

    def __post_init__(self) -> None:
        if any(":" not in str(path) for path in self.reward_funcs):
            raise ValueError(f"reward_funcs entries are import paths 'package.module:function', got "
                             f"{list(self.reward_funcs)}")
        if self.reward_funcs and self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} weight(s) for {len(self.reward_funcs)} "
                             "reward_funcs: give one per function, or none")
        if not all(math.isfinite(float(w)) for w in self.reward_weights):
            raise ValueError(f"reward_weights must be finite numbers, got {list(self.reward_weights)}")
        if not self.reward_max_val > self.reward_min_val:
            raise ValueError(f"reward_max_val ({self.reward_max_val}) must be above reward_min_val "
                             f"({self.reward_min_val}): a correct answer must earn more than a wrong one")
        if self.rehearsal_reward_weight < 0:
            raise ValueError(f"rehearsal_reward_weight must be >= 0, got {self.rehearsal_reward_weight}")


@dataclass(frozen=True)
class ValidationSettings:
    """Evaluation on the validation rows during training, and which checkpoint is kept
    (``core.training.validation``)."""

    eval_steps: int = field(default=0, metadata={"help": (
        "Every this many optimizer steps (and after the last), generate greedily on the validation rows "
        "(``data_settings.validation_size``) and score them like the held-out evaluation: accuracy, format "
        "compliance, answer rate, mean reward go to the run log, the log history and the training curves. 0: "
        "never. Needs validation rows; the held-out rows are never used.")})
    keep_checkpoint: str = field(default="last", metadata={"help": (
        "Which adapter ``lora_adapter`` writes: ``last`` (after the final step) or ``best_validation`` (the "
        "evaluated step with the highest validation accuracy; ties go to the higher answer rate, then format "
        "compliance, then the earlier step). Needs ``eval_steps``. The metadata says which step was kept and why.")})

    def __post_init__(self) -> None:
        if self.eval_steps < 0:
            raise ValueError(f"eval_steps must be >= 0 (0: no validation during training), got {self.eval_steps}")
        if self.keep_checkpoint not in KEEP_CHECKPOINTS:
            raise ValueError(f"keep_checkpoint must be one of {KEEP_CHECKPOINTS}, got {self.keep_checkpoint!r}")
        if self.keep_checkpoint == "best_validation" and not self.eval_steps:
            raise ValueError("keep_checkpoint='best_validation' chooses among validation evaluations, but "
                             "eval_steps=0 runs none: set eval_steps (and data_settings.validation_size)")


@dataclass(frozen=True)
class DynamicSamplingSettings:
    """DAPO's dynamic sampling, the trainer's hook in ``core.training.dynamic_sampling`` (verl's
    ``filter_groups``)."""

    dynamic_sampling: bool = field(default=False, metadata={"help": (
        "DAPO's dynamic sampling (``core.training.dynamic_sampling``): drop every group whose completions all earn the "
        "same reward (it has zero advantage and teaches nothing) and fill its place with groups of newly drawn "
        "training prompts, so each step trains on groups that differ. Costs extra rollouts; worth it when many groups "
        "have zero spread (``frac_reward_zero_std`` high: a model that answers many items always or never right). One "
        "training process only.")})
    dynamic_sampling_max_rounds: int = field(default=4, metadata={"help": (
        "With ``dynamic_sampling``: most extra rounds of rollouts per generation batch, each for the groups still "
        "missing. A batch still short after them trains on what it found plus zero-spread groups (no gradient) "
        "and the run log says so; raise it when that happens often.")})

    def __post_init__(self) -> None:
        if self.dynamic_sampling_max_rounds < 1:
            raise ValueError(f"dynamic_sampling_max_rounds must be >= 1, got {self.dynamic_sampling_max_rounds}")


@dataclass(frozen=True)
class ReportingSettings:
    """Where the trainer's metrics also go, and how much TensorBoard history is kept
    (``core.training.run_history``)."""

    report_to: str = field(default="tensorboard", metadata={"help": (
        "Where the trainer also sends its metrics, comma-separated: ``tensorboard`` (event files, offline; the "
        "asset keeps them in the adapter's ``tensorboard/`` folder), ``wandb``, ``mlflow`` (configured through "
        "their own environment variables), or ``none``. The run log and the training curves get them either way.")})
    tensorboard_history_mb: float = field(default=512.0, metadata={"help": (
        "Disk budget, in MB, of ``lora_adapter_tensorboard/`` beside the adapter: every materialization's "
        "TensorBoard event files are kept there as one run folder, so runs can be compared "
        "(``tensorboard --logdir``); past the budget the oldest run folders are removed (logged), never the newest. "
        "0 keeps only the newest run.")})

    def __post_init__(self) -> None:
        targets = report_targets(self.report_to)
        unknown = [t for t in targets if t not in REPORT_TARGETS]
        if unknown or ("none" in targets and len(targets) > 1):
            raise ValueError(f"report_to must be 'none' or a comma-separated list of {REPORT_TARGETS[1:]}, got "
                             f"{self.report_to!r}")
        if not self.tensorboard_history_mb >= 0:
            raise ValueError(f"tensorboard_history_mb must be >= 0 (MB of TensorBoard history kept), got "
                             f"{self.tensorboard_history_mb}")


GRPO_CONFIG_GROUPS = (OptimizerSettings, BatchGenerationSettings, GSPOLossSettings, VLLMRolloutSettings,
                      CheckpointLoggingSettings)
"""The groups whose fields are ``GRPOConfig`` options (``build_grpo_config`` passes them on)."""
PROJECT_GROUPS = (LaunchSettings, RolloutEngineSettings, RewardSettings, ValidationSettings,
                  DynamicSamplingSettings, ReportingSettings)
"""The groups the project acts on itself; none of their fields reaches ``GRPOConfig``."""
