"""GSPO's configuration, kept apart from the training loop as TRL keeps ``grpo_config.py`` apart from
``grpo_trainer.py``: :class:`GSPOSettings`, composed of the groups in ``core.training.gspo_groups`` (the
``GRPOConfig`` options this project exposes, then its own, each group checked field by field and the whole across
groups when made), the paper's settings, where metrics are reported, and :func:`build_grpo_config`, which turns the
settings into TRL's ``GRPOConfig``. The loop that runs it is ``core.training.trainer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# suppressed_token_kwargs lives beside vision_token_ids (evaluation uses it too); imported here for build_grpo_config
from vlmrl_pipeline.core.model.loading import SUPPRESSED_LOGIT_BIAS, suppressed_token_kwargs  # noqa: F401
from vlmrl_pipeline.core.training.gspo_groups import (  # noqa: F401  (the constants are read from here too)
    DISTRIBUTED_MODES,
    GRPO_CONFIG_GROUPS,
    IMPORTANCE_SAMPLING_MODES,
    KEEP_CHECKPOINTS,
    PROJECT_GROUPS,
    REPORT_TARGETS,
    ROLLOUT_ENGINES,
    VLLM_MODES,
    BatchGenerationSettings,
    CheckpointLoggingSettings,
    DynamicSamplingSettings,
    GSPOLossSettings,
    LaunchSettings,
    OptimizerSettings,
    ReportingSettings,
    RewardSettings,
    RolloutEngineSettings,
    ValidationSettings,
    VLLMRolloutSettings,
    report_targets,
)

REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
"""The package each target needs (any one of them)."""


def report_to_problems(settings: GSPOSettings) -> list[str]:
    """Targets whose package is not installed, naming the setting (checked before anything is launched)."""
    import importlib.util

    return [f"training_settings.report_to={settings.report_to!r}: {target} needs the {REPORT_PACKAGES[target][0]} "
            f"package, which is not installed (pip install {REPORT_PACKAGES[target][0]}), or drop it from report_to"
            for target in report_targets(settings.report_to) if target in REPORT_PACKAGES
            and not any(importlib.util.find_spec(pkg) for pkg in REPORT_PACKAGES[target])]


def _run_group_checks(settings, groups) -> None:
    for group in groups:
        group.__post_init__(settings)


# Dataclasses collect inherited fields from the last base to the first: the bases are listed last group first, so
# the fields (and the launchpad's keys) come in the groups' order.
@dataclass(frozen=True)
class GRPOConfigSettings(CheckpointLoggingSettings, VLLMRolloutSettings, GSPOLossSettings, BatchGenerationSettings,
                         OptimizerSettings):
    """The settings that go to TRL's ``GRPOConfig`` (``build_grpo_config``), each group checked by its own rules."""

    def __post_init__(self) -> None:
        _run_group_checks(self, GRPO_CONFIG_GROUPS)


@dataclass(frozen=True)
class ProjectSettings(ReportingSettings, DynamicSamplingSettings, ValidationSettings, RewardSettings,
                      RolloutEngineSettings, LaunchSettings):
    """The settings the project acts on itself: the launch, the rollout engine, rewards, validation, dynamic
    sampling, reporting. None of them reaches ``GRPOConfig``."""

    def __post_init__(self) -> None:
        _run_group_checks(self, PROJECT_GROUPS)


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


PROJECT_FIELDS = field_names(ProjectSettings)
"""``GSPOSettings`` fields the project acts on itself; every other field is a ``GRPOConfig`` option."""
LAUNCH_FIELDS = field_names(LaunchSettings)
"""``GSPOSettings`` fields that shape the launch (``core.training.launch``), not ``GRPOConfig``."""
DYNAMIC_SAMPLING_FIELDS = field_names(DynamicSamplingSettings)
"""``GSPOSettings`` fields of ``core.training.dynamic_sampling`` (the trainer's hook, not ``GRPOConfig`` options)."""


@dataclass(frozen=True)
class GSPOSettings(ProjectSettings, GRPOConfigSettings):
    """Every training setting: the ``GRPOConfig`` options this project exposes, then its own (the groups in
    ``core.training.gspo_groups``), flat, so each is one launchpad key. Defaults are the seed notebook's (Qwen3-VL
    8B, one GPU).

    Note: with ``steps_per_generation`` left at its default (= ``gradient_accumulation_steps``) and
    ``num_iterations=1`` every update is on-policy, the sequence ratio is exactly 1 and GSPO's clipping never acts;
    it only differs from GRPO when the same generations are reused (``steps_per_generation >
    gradient_accumulation_steps`` or ``num_iterations > 1``).
    """

    def __post_init__(self) -> None:
        GRPOConfigSettings.__post_init__(self)
        ProjectSettings.__post_init__(self)
        # The rules that span groups.
        if self.rollout_engine == "generate" and self.use_vllm:
            raise ValueError("rollout_engine='generate' never uses vLLM, but use_vllm=True asks for vLLM rollouts: "
                             "drop use_vllm, or set rollout_engine='vllm' (or 'auto')")
        if self.vllm_mode == "server" and self.rollout_engine == "generate":
            raise ValueError("vllm_mode='server' generates the rollouts on a vLLM server, but "
                             "rollout_engine='generate' never uses vLLM: set rollout_engine='vllm' (or 'auto')")
        if self.dynamic_sampling and self.num_processes != 1:
            raise ValueError(f"dynamic_sampling runs on one training process, got num_processes={self.num_processes}: "
                             "every process would have to agree on each extra round of rollouts. Set "
                             "num_processes=1 or dynamic_sampling=False")
        if self.num_processes:  # 0 (one per GPU) is resolved on the training machine, which checks again then
            self.check_generation_batch(self.num_processes)

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
        # trainer (``core.training.trainer``) stops on the first one, so the logs must not paper over it either.
        logging_nan_inf_filter=False,
    )
