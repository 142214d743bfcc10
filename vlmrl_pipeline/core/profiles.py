"""Named settings bundles: the offline ``demo`` profile (default) and the seeds' real setup.

A profile is every setting the lineage needs. ``VLMRL_PROFILE=qwen3vl-8b`` switches the whole pipeline from the
tiny demo model on synthetic data to Qwen3-VL 8B (4-bit through Unsloth on a GPU) on MathVista testmini; any field
can still be overridden per run in Dagster's launchpad.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from vlmrl_pipeline.core.demo.tiny_model import TinyModelSpec
from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.model.loading import LoraSettings
from vlmrl_pipeline.core.prompts import BOXED_SYSTEM_PROMPT, PromptStyle
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, paper_gspo_settings

# The model name that means "build the demo model here" rather than "load this hub id or folder".
DEMO_MODEL_NAME = "demo:tiny-qwen3-vl"
# The source name that means "render the synthetic MathVista-format data set here".
SYNTHETIC_SOURCE = "synthetic"
PROFILE_ENV_VAR = "VLMRL_PROFILE"


@dataclass(frozen=True)
class DataSettings:
    """Where the data comes from and how it is filtered, prepared and split."""

    source: str = field(default="AI4Math/MathVista", metadata={"help": (
        "A hub id (loaded with ``datasets``), a local folder (the hub's parquet layout, or MathVista's GitHub "
        "layout: ``testmini.json`` + ``images/``), or ``\"synthetic\"``.")})
    split: str = field(default="testmini", metadata={"help": (
        "The data set split to read (MathVista's ``testmini`` has the answers; its ``test`` split does not).")})
    dataset_format: str = field(default="mathvista", metadata={"help": (
        "``mathvista`` (MathVista's columns) or ``rlinf`` (RLinf's form, as geo3k: a prompt with ``<image>`` "
        "placeholders, an image list and a ``\\boxed{}`` answer, under the keys below).")})
    prompt_key: str = field(default="problem", metadata={"help": (
        "``rlinf`` only: the column holding the prompt text.")})
    answer_key: str = field(default="answer", metadata={"help": (
        "``rlinf`` only: the column holding the gold answer (``\\boxed{x}`` or plain).")})
    image_keys: tuple[str, ...] = field(default=("images",), metadata={"help": (
        "``rlinf`` only: the column(s) holding the image (one image per sample).")})
    numeric_only: bool = field(default=True, metadata={"help": (
        "Keep rows whose answer parses as a number (the seeds' filter).")})
    free_form_only: bool = field(default=False, metadata={"help": (
        "Also drop multiple-choice rows (the seeds keep numeric-text multiple-choice answers).")})
    image_size: int = field(default=512, metadata={"help": (
        "Images are resized to ``image_size`` x ``image_size`` RGB (the seeds use 512).")})
    eval_size: int = field(default=100, metadata={"help": (
        "Held-out evaluation rows; they are never trained on.")})
    validation_size: int = field(default=0, metadata={"help": (
        "Validation rows carved from the training rows (after the held-out split, which it leaves unchanged): "
        "never trained on, evaluated during training with ``training_settings.eval_steps`` and used by "
        "``keep_checkpoint='best_validation'``; the held-out rows stay out of every choice. 0: none.")})
    seed: int = field(default=3407, metadata={"help": (
        "Seed of the train/eval split (and of the synthetic data set).")})
    prompt_field: str = field(default="query", metadata={"help": (
        "MathVista's ``query`` carries choices and unit/precision hints; ``question`` is the bare question.")})
    answer_format: str = field(default="tags", metadata={"help": (
        "``tags``: the seeds' <REASONING>/<SOLUTION> format and reward pair; ``boxed``: a ``\\boxed{}`` answer and "
        "RLinf's +1/0 reward. Prompt instruction, rewards and scoring all follow it.")})
    system_prompt: str = field(default="", metadata={"help": (
        "A system turn before every prompt (RLinf's geo3k uses one to ask for ``\\boxed{}``); empty for none.")})
    max_lost_fraction: float = field(default=0.05, metadata={"help": (
        "The data check fails when more than this share of rows is lost to bad input (missing answer, duplicate "
        "pid, missing/corrupt/oversized image). Rows removed on purpose by the filters above are not \"lost\".")})
    synthetic_rows: int = field(default=400, metadata={"help": (
        "Rows rendered when ``source == \"synthetic\"``.")})
    synthetic_tasks: str = field(default="mathvista", metadata={"help": (
        "The synthetic task set (``core.demo.figures.TASK_SETS``): ``mathvista`` (MathVista-like problems) or "
        "``readable`` (two families a tiny model can learn to read in a minute: the demo's).")})

    @property
    def prompt_style(self) -> PromptStyle:
        return PromptStyle(self.prompt_field, self.answer_format, self.system_prompt or None)


@dataclass(frozen=True)
class ModelSettings:
    """Which policy to start from and how to load and adapt it."""

    model_name: str = field(default="unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit", metadata={"help": (
        "Hub id or local checkpoint folder; ``\"demo:tiny-qwen3-vl\"`` builds the demo model instead.")})
    revision: str | None = field(default=None, metadata={"help": (
        "Hub revision (commit) to pin; recorded in every record file.")})
    backend: str = field(default="auto", metadata={"help": (
        "``unsloth`` (GPU + Unsloth installed), ``transformers``, or ``auto`` (Unsloth when it can run).")})
    load_in_4bit: bool = field(default=True, metadata={"help": (
        "Load the base weights in 4-bit (bitsandbytes NF4) and train a LoRA on top (QLoRA); needs CUDA.")})
    max_seq_length: int = field(default=16384, metadata={"help": (
        "VLM prompts are long: image tokens + question + reasoning.")})
    dtype: str = field(default="auto", metadata={"help": (
        "``auto``: bf16 on a GPU that supports it, float32 on a CPU. Gemma-3 needs ``bfloat16`` (fp16 overflows).")})
    fast_inference: bool = field(default=False, metadata={"help": (
        "Unsloth backend: load with a vLLM engine (Unsloth's ``fast_inference=True``, weights shared with "
        "training) so GSPO rollouts run through vLLM; goes with ``training_settings.use_vllm=True``. Needs an "
        "installed vLLM (refused before loading otherwise); vision layers must stay frozen, since vLLM cannot "
        "carry LoRA on them. The transformers backend gets vLLM rollouts from ``use_vllm`` alone, evaluation from "
        "``eval_settings.engine``.")})
    gpu_memory_utilization: float = field(default=0.625, metadata={"help": (
        "With ``fast_inference``: the share of GPU memory vLLM may take, its weights included (lower it on "
        "out-of-memory errors). 0.625 is 15 GiB of a 24 GiB card, what the seed's 8B micro-step was measured to "
        "fit in (21.5 GB for the whole process); the seeds' 0.8 leaves a 24 GB card too little for training, since "
        "Unsloth keeps the engine's memory held during training for vision models (standby is off for them). A "
        "larger card only gets a larger KV cache from the same share.")})
    vllm_standby: bool = field(default=True, metadata={"help": (
        "With ``fast_inference``: set ``UNSLOTH_VLLM_STANDBY=1`` before Unsloth loads (the seeds' setting: vLLM's "
        "memory is shared with training instead of held apart). Unsloth 2026.10 ignores it for vision models "
        "(\"unstable for multimodal models\") unless ``UNSLOTH_VLLM_STANDBY_VISION=1`` is set.")})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": (
        "The LoRA adapter trained on the frozen base model.")})
    tiny_model: TinyModelSpec = field(default_factory=TinyModelSpec, metadata={"help": (
        "Shape of the demo model (only used with the demo model name).")})

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "unsloth", "transformers"):
            raise ValueError(f"backend must be 'auto', 'unsloth' or 'transformers', got {self.backend!r}")
        if self.fast_inference and self.lora.finetune_vision_layers:
            raise ValueError("fast_inference (vLLM) cannot serve LoRA on vision layers: set "
                             "finetune_vision_layers=False or fast_inference=False")
        if self.fast_inference and self.backend == "transformers":
            raise ValueError("fast_inference runs vLLM through Unsloth: use backend 'unsloth' or 'auto'")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

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
    export: ExportSettings = field(default_factory=ExportSettings)


def demo_profile() -> Profile:
    """Everything offline on two CPU cores in a few minutes: synthetic data, a tiny Qwen3-VL, real GSPO.

    The task set is one a tiny model can learn to read in a minute (``readable``: colour code and grey level,
    answers 1-4). The warm start teaches the reading with a habit: 40% of its targets carry the gold answer, the
    rest one more than it, so greedy decoding mostly answers one too high while sampled rollouts are often right:
    the groups' rewards differ and GSPO's correctness reward has something to teach.
    Learning rates that suit an 8B model (5e-6) barely move a 0.8 M-parameter one, so the demo has its own; the
    algorithm, rewards, LoRA placement and lineage are the real ones.
    """
    return Profile(
        name="demo",
        data=DataSettings(source=SYNTHETIC_SOURCE, image_size=128, eval_size=100, seed=0,
                          synthetic_rows=1000, synthetic_tasks="readable"),
        model=ModelSettings(
            model_name=DEMO_MODEL_NAME, backend="transformers", load_in_4bit=False, max_seq_length=1024,
            dtype="float32", lora=LoraSettings(r=16, lora_alpha=32),
            tiny_model=TinyModelSpec(image_size=128),
        ),
        # Every target tagged: with half the families answering in prose (the earlier demo's format habit) the
        # model did not learn to read the images within the warm start (measured); the habit to unlearn is the
        # misreading instead.
        warm_start=WarmStartSettings(steps=600, right_answer_rate=0.4, formatted_rate_high=1.0,
                                     formatted_rate_low=1.0),
        gspo=GSPOSettings(
            # 1e-3 for a 1 M-parameter LoRA: on the colour-code family alone, 60 steps took greedy accuracy from
            # 4% (the warm start's habit) to 100% (measured). Completions are about 21 tokens; 32 leaves room.
            learning_rate=1e-3, optim="adamw_torch", per_device_train_batch_size=8, gradient_accumulation_steps=1,
            num_generations=4, max_completion_length=32, max_steps=80, max_grad_norm=1.0, logging_steps=5,
        ),
        generation=GenerationSettings(max_new_tokens=32, batch_size=20),
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
        # The seed exports the adapter, merged 16-bit and 4-bit checkpoints, and GGUF.
        export=ExportSettings(merged_4bit=True),
    )


def qwen3vl_8b_paper_profile() -> Profile:
    """The seed's setup with GSPO as the paper runs it (see ``core.training.gspo_config.paper_gspo_settings``)."""
    seed = qwen3vl_8b_profile()
    return replace(seed, name="qwen3vl-8b-paper", gspo=paper_gspo_settings(seed.gspo))


def qwen3vl_8b_dapo_profile() -> Profile:
    """The seed's setup with DAPO's dynamic sampling (``core.training.dynamic_sampling``): groups whose rewards are all
    equal are dropped and refilled with newly drawn MathVista prompts, so every step trains on groups that differ. For
    an 8B model that answers many MathVista items always or never right, most groups would otherwise teach nothing."""
    seed = qwen3vl_8b_profile()
    return replace(seed, name="qwen3vl-8b-dapo", gspo=replace(seed.gspo, dynamic_sampling=True))


def _vision_notebook_gspo(**changes) -> GSPOSettings:
    """GRPOConfig of Unsloth's vision GRPO notebooks (seeds 002/003): wd 0.1, 10% warm-up, AdamW betas 0.9/0.99
    (seed 003), clip 3e-4/4e-4, 8 generations; ``loss_type`` stays their ``dr_grpo``."""
    return replace(GSPOSettings(), weight_decay=0.1, warmup_steps=0.1, adam_beta1=0.9, adam_beta2=0.99,
                   epsilon=3e-4, epsilon_high=4e-4, num_generations=8, **changes)


def qwen25vl_7b_profile() -> Profile:
    """Qwen2.5-VL 7B Instruct as in seed 002 (4-bit through Unsloth, LoRA r=16 alpha=32, temperature 0.9, 2 epochs).

    Quirks: the same Qwen-VL vision tokens (suppressed in generation); its known "addCriterion" gibberish during
    RL is what the formatting reward's -2 penalty exists for. The seed turns on vLLM (``fast_inference``); here
    ``rollout_engine="auto"`` does where vLLM is installed (the 16-bit hub checkpoint is then served from its 4-bit
    copy, ``core.model.loading.vllm_4bit_checkpoint``), and falls back to ``model.generate`` saying why.
    """
    seed = qwen3vl_8b_profile()
    return replace(
        seed, name="qwen25vl-7b",
        model=replace(seed.model, model_name="Qwen/Qwen2.5-VL-7B-Instruct", lora=LoraSettings(r=16, lora_alpha=32)),
        gspo=_vision_notebook_gspo(temperature=0.9, num_train_epochs=2.0),
    )


def gemma3_4b_profile() -> Profile:
    """Gemma-3 4B it as in seed 003 (which generates through Unsloth, no vLLM; here ``rollout_engine="auto"``
    takes Unsloth's vLLM engine where it is installed: Unsloth 2026.10 lists ``gemma3`` among the vision models it
    serves, not yet run on this project's GPU machine).

    Quirks: bfloat16 only (float16 overflows Gemma-3's activations, so it needs a GPU newer than a T4); images are
    marked with ``<start_of_image>`` and expanded into ``<image_soft_token>``, which generation suppresses; its chat
    template folds a system turn into the first user turn; the vision tower is SigLIP (LoRA names differ, see
    ``modeling.lora_target_regex``).
    """
    seed = qwen3vl_8b_profile()
    return replace(
        seed, name="gemma3-4b",
        model=replace(seed.model, model_name="unsloth/gemma-3-4b-it", dtype="bfloat16",
                      lora=LoraSettings(r=16, lora_alpha=32)),
        gspo=_vision_notebook_gspo(),
    )


def demo_gpu_profile() -> Profile:
    """The demo (synthetic data, tiny Qwen3-VL) through the GPU path: Unsloth ``FastVisionModel`` in 4-bit, 8-bit
    AdamW, and Unsloth's merged 4-bit checkpoint beside the 16-bit one. What the GPU tests run; a few minutes on
    any CUDA GPU, much of it Unsloth's first compile.

    Rollouts stay on ``model.generate``: through Unsloth's vLLM engine (``fast_inference``) the tiny model in 4-bit
    answered in ~6 tokens and every group of four earned the same reward, so GSPO had nothing to learn from
    (measured on an H200, ``benchmarks/logs/fast_inference_h200/``); the real profiles take vLLM (``auto``)."""
    demo = demo_profile()
    return replace(
        demo, name="demo-gpu",
        model=replace(demo.model, backend="unsloth", load_in_4bit=True, dtype="auto"),
        gspo=replace(demo.gspo, optim="adamw_8bit", rollout_engine="generate"),
        export=replace(demo.export, merged_4bit=True),
    )


def geo3k_profile() -> Profile:
    """RLinf's geo3k recipe on the seed's model: geometry problems in RLinf's form, ``\\boxed{}`` answers, +1/0 reward.

    geo3k answers are often expressions (``2\\sqrt{3}``), so nothing is filtered out for being non-numeric. RLinf
    corrects the rollout/train mismatch with truncated importance sampling capped at 2 (its
    ``importance_sampling_fix`` / ``importance_sampling_clip``): TRL's per-token truncation with C_max 2, which acts
    on vLLM rollouts (``use_vllm``; with the Unsloth backend also ``fast_inference``).
    """
    return Profile(
        name="geo3k",
        data=DataSettings(
            source="CAIR-HKISI/geo3k", split="train", dataset_format="rlinf", numeric_only=False,
            answer_format="boxed", system_prompt=BOXED_SYSTEM_PROMPT,
        ),
        model=ModelSettings(),
        warm_start=WarmStartSettings(),
        gspo=GSPOSettings(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=2.0,
                          reward_max_val=1.0, reward_min_val=0.0),
        generation=GenerationSettings(max_new_tokens=1024, batch_size=8),
        export=ExportSettings(merged_4bit=True),
    )


PROFILES = {
    "demo": demo_profile,
    "demo-gpu": demo_gpu_profile,
    "qwen3vl-8b": qwen3vl_8b_profile,
    "qwen3vl-8b-paper": qwen3vl_8b_paper_profile,
    "qwen3vl-8b-dapo": qwen3vl_8b_dapo_profile,
    "qwen25vl-7b": qwen25vl_7b_profile,
    "gemma3-4b": gemma3_4b_profile,
    "geo3k": geo3k_profile,
}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, else ``$VLMRL_PROFILE``, else ``demo``."""
    name = name or os.environ.get(PROFILE_ENV_VAR) or "demo"
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
