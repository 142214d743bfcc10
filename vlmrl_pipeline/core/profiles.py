"""Named settings bundles: the offline ``demo`` profile (default) and the seeds' real setup.

A profile is every setting the lineage needs. ``VLMRL_PROFILE=qwen3vl-8b`` switches the whole pipeline from the
tiny demo model on synthetic data to Qwen3-VL 8B (4-bit through Unsloth on a GPU) on MathVista testmini; any field
can still be overridden per run in Dagster's launchpad.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vlmrl_pipeline.core.generation import GenerationSettings
from vlmrl_pipeline.core.modeling import LoraSettings, TinyModelSpec
from vlmrl_pipeline.core.training import GSPOSettings
from vlmrl_pipeline.core.warmstart import WarmStartSettings

# The model name that means "build the demo model here" rather than "load this hub id or folder".
DEMO_MODEL_NAME = "demo:tiny-qwen3-vl"
# The source name that means "render the synthetic MathVista-format data set here".
SYNTHETIC_SOURCE = "synthetic"
PROFILE_ENV_VAR = "VLMRL_PROFILE"


@dataclass(frozen=True)
class DataSettings:
    """Where the data comes from and how it is filtered, prepared and split."""

    source: str = "AI4Math/MathVista"
    """A hub id (loaded with ``datasets``), a local folder in the hub's parquet layout, or ``"synthetic"``."""
    split: str = "testmini"
    numeric_only: bool = True
    """Keep rows whose answer parses as a number (the seeds' filter)."""
    free_form_only: bool = False
    """Also drop multiple-choice rows (the seeds keep numeric-text multiple-choice answers)."""
    image_size: int = 512
    """Images are resized to ``image_size`` x ``image_size`` RGB (the seeds use 512)."""
    eval_size: int = 100
    """Held-out evaluation rows; they are never trained on."""
    seed: int = 3407
    """Seed of the train/eval split (and of the synthetic data set)."""
    prompt_field: str = "query"
    """MathVista's ``query`` carries choices and unit/precision hints; ``question`` is the bare question."""
    synthetic_rows: int = 400
    """Rows rendered when ``source == "synthetic"``."""


@dataclass(frozen=True)
class ModelSettings:
    """Which policy to start from and how to load and adapt it."""

    model_name: str = "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    """Hub id or local checkpoint folder; ``"demo:tiny-qwen3-vl"`` builds the demo model instead."""
    revision: str | None = None
    """Hub revision (commit) to pin; recorded in every record file."""
    backend: str = "auto"
    """``unsloth`` (GPU + Unsloth installed), ``transformers``, or ``auto`` (Unsloth when it can run)."""
    load_in_4bit: bool = True
    max_seq_length: int = 16384
    """VLM prompts are long: image tokens + question + reasoning."""
    dtype: str = "auto"
    """``auto``: bf16 on a GPU that supports it, float32 on a CPU."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    tiny_model: TinyModelSpec = field(default_factory=TinyModelSpec)
    """Shape of the demo model (only used with the demo model name)."""

    @property
    def is_demo(self) -> bool:
        return self.model_name == DEMO_MODEL_NAME


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataSettings
    model: ModelSettings
    warm_start: WarmStartSettings
    gspo: GSPOSettings
    generation: GenerationSettings


def demo_profile() -> Profile:
    """Everything offline on two CPU cores in a few minutes: synthetic data, a tiny Qwen3-VL, real GSPO.

    Learning rates that suit an 8B model (5e-6) barely move a 1 M-parameter one, so the demo has its own; the
    algorithm, rewards, LoRA placement and lineage are the real ones.
    """
    return Profile(
        name="demo",
        data=DataSettings(source=SYNTHETIC_SOURCE, image_size=128, eval_size=100, seed=0, synthetic_rows=400),
        model=ModelSettings(
            model_name=DEMO_MODEL_NAME, backend="transformers", load_in_4bit=False, max_seq_length=1024,
            dtype="float32", lora=LoraSettings(r=16, lora_alpha=32),
            tiny_model=TinyModelSpec(image_size=128),
        ),
        warm_start=WarmStartSettings(),
        gspo=GSPOSettings(
            learning_rate=2e-4, optim="adamw_torch", per_device_train_batch_size=8, gradient_accumulation_steps=1,
            num_generations=4, max_completion_length=40, max_steps=150, max_grad_norm=1.0, logging_steps=5,
        ),
        generation=GenerationSettings(max_new_tokens=40, batch_size=20),
    )


def qwen3vl_8b_profile() -> Profile:
    """The seed notebook: Qwen3-VL 8B Instruct in 4-bit through Unsloth, MathVista testmini, GSPO on one GPU."""
    return Profile(
        name="qwen3vl-8b",
        data=DataSettings(),
        model=ModelSettings(),
        warm_start=WarmStartSettings(),
        gspo=GSPOSettings(),
        generation=GenerationSettings(max_new_tokens=1024, batch_size=8),
    )


PROFILES = {"demo": demo_profile, "qwen3vl-8b": qwen3vl_8b_profile}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, else ``$VLMRL_PROFILE``, else ``demo``."""
    name = name or os.environ.get(PROFILE_ENV_VAR) or "demo"
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
