"""Dagster resources: where artifacts live, and the settings of each stage (editable in the launchpad).

Each settings resource mirrors one dataclass of ``vlmrl_pipeline.core`` field for field (a test keeps them in
step) and converts to it with ``to_core()``; the core never sees Dagster.
"""

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

from dagster import Config, ConfigurableResource

from vlmrl_pipeline.core.atomic import atomic_dir, exclusive, remove_dead_staging
from vlmrl_pipeline.core.export import ExportSettings
from vlmrl_pipeline.core.generation import GenerationSettings
from vlmrl_pipeline.core.modeling import LoraSettings, TinyModelSpec
from vlmrl_pipeline.core.profiles import DataSettings, ModelSettings, Profile
from vlmrl_pipeline.core.training import GSPOSettings
from vlmrl_pipeline.core.warmstart import WarmStartSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV_VAR = "VLMRL_DATA_DIR"


def default_data_dir() -> str:
    """``$VLMRL_DATA_DIR``, else ``data/`` in the project checkout."""
    return os.environ.get(DATA_DIR_ENV_VAR) or str(PROJECT_ROOT / "data")


class ArtifactStore(ConfigurableResource):
    """A folder per asset under ``root``; every artifact is written to a temp folder and moved into place."""

    root: str
    report_server_url: str = "http://127.0.0.1:8765"
    """Where ``vlmrl-playground --data-dir <root>`` serves this folder's report (``/reports/report.html``): the
    ``report_page`` link the UI shows. Empty: link the file itself (which a browser opens only outside the UI)."""

    def asset_dir(self, name: str) -> Path:
        path = Path(self.root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def lock(self, name: str) -> AbstractContextManager[None]:
        """Be the only writer of ``asset_dir(name)`` while inside; another live writer makes this fail at once
        (``core.atomic.exclusive``). ``staging`` takes it too; take it earlier when an asset prepares files
        outside its staging folder (``lora_adapter``'s checkpoints)."""
        return exclusive(self.asset_dir(name))

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """An empty temp folder beside ``asset_dir(name)``; on success it replaces that folder whole.

        A failed or cancelled materialization leaves the previous artifact untouched and no half-written one. The
        asset's lock is held throughout, and staging folders left by killed writers of this asset are removed
        first (with the lock held, none of them can belong to a live writer).
        """
        with self.lock(name):
            remove_dead_staging(self.asset_dir(name))
            with atomic_dir(self.asset_dir(name)) as tmp:
                yield tmp


def _core_kwargs(resource: Config, core_cls) -> dict:
    values = resource.model_dump()
    return {f.name: values[f.name] for f in fields(core_cls)}


class DataSettingsResource(ConfigurableResource):
    """Data source, filters, image size and the held-out split (see ``core.profiles.DataSettings``)."""

    source: str
    split: str
    dataset_format: str
    prompt_key: str
    answer_key: str
    image_keys: list[str]
    numeric_only: bool
    free_form_only: bool
    image_size: int
    eval_size: int
    seed: int
    prompt_field: str
    answer_format: str
    system_prompt: str
    max_lost_fraction: float
    synthetic_rows: int
    synthetic_tasks: str

    def to_core(self) -> DataSettings:
        kwargs = _core_kwargs(self, DataSettings)
        kwargs["image_keys"] = tuple(kwargs["image_keys"])
        return DataSettings(**kwargs)


class LoraConfig(Config):
    r: int
    lora_alpha: int
    lora_dropout: float
    finetune_vision_layers: bool
    finetune_language_layers: bool
    finetune_attention_modules: bool
    finetune_mlp_modules: bool


class TinyModelConfig(Config):
    tokenizer: str
    vocab_size: int
    text_hidden_size: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate_size: int
    vision_depth: int
    vision_hidden_size: int
    vision_heads: int
    vision_intermediate_size: int
    image_size: int


class WarmStartConfig(Config):
    steps: int
    batch_size: int
    learning_rate: float
    formatted_rate_high: float
    formatted_rate_low: float
    seed: int
    right_answer_rate: float
    reasoning: str


class ModelSettingsResource(ConfigurableResource):
    """The base policy and its LoRA (see ``core.profiles.ModelSettings``); ``warm_start`` applies to the demo model."""

    model_name: str
    revision: Optional[str] = None
    backend: str
    load_in_4bit: bool
    max_seq_length: int
    dtype: str
    fast_inference: bool
    gpu_memory_utilization: float
    vllm_standby: bool
    lora: LoraConfig
    tiny_model: TinyModelConfig
    warm_start: WarmStartConfig

    def to_core(self) -> ModelSettings:
        return ModelSettings(
            model_name=self.model_name, revision=self.revision, backend=self.backend,
            load_in_4bit=self.load_in_4bit, max_seq_length=self.max_seq_length, dtype=self.dtype,
            fast_inference=self.fast_inference, gpu_memory_utilization=self.gpu_memory_utilization,
            vllm_standby=self.vllm_standby, lora=LoraSettings(**_core_kwargs(self.lora, LoraSettings)),
            tiny_model=TinyModelSpec(**_core_kwargs(self.tiny_model, TinyModelSpec)),
        )

    def warm_start_settings(self) -> WarmStartSettings:
        return WarmStartSettings(**_core_kwargs(self.warm_start, WarmStartSettings))


class TrainingSettingsResource(ConfigurableResource):
    """GSPO options passed to TRL's ``GRPOConfig``, plus checkpointing and the launch (processes, ddp/fsdp);
    each documented on ``core.training.GSPOSettings``."""

    learning_rate: float
    lr_scheduler_type: str
    warmup_steps: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    optim: str
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_generations: int
    max_completion_length: int
    num_train_epochs: float
    max_steps: int
    max_grad_norm: float
    importance_sampling_level: str
    loss_type: str
    epsilon: float
    epsilon_high: Optional[float] = None
    beta: float
    temperature: float
    steps_per_generation: Optional[int] = None
    num_iterations: int
    scale_rewards: str
    mask_truncated_completions: bool
    logging_steps: int
    report_to: str = "tensorboard"
    seed: int
    gradient_checkpointing: bool
    save_steps: int
    save_total_limit: int
    num_processes: int
    rehearsal_reward_weight: float
    use_vllm: bool
    vllm_mode: str
    vllm_gpu_memory_utilization: float
    vllm_enable_sleep_mode: bool
    vllm_importance_sampling_correction: bool
    vllm_importance_sampling_mode: str
    vllm_importance_sampling_clip_max: Optional[float] = None
    vllm_importance_sampling_clip_min: Optional[float] = None
    reward_max_val: float
    reward_min_val: float
    distributed: str

    def to_core(self) -> GSPOSettings:
        return GSPOSettings(**_core_kwargs(self, GSPOSettings))


class EvalSettingsResource(ConfigurableResource):
    """How evaluation generates (see ``core.generation.GenerationSettings``): greedy and batched by default."""

    max_new_tokens: int
    batch_size: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: int
    engine: str
    vllm_gpu_memory_utilization: float
    vllm_enforce_eager: bool

    def to_core(self) -> GenerationSettings:
        return GenerationSettings(**_core_kwargs(self, GenerationSettings))


class ExportSettingsResource(ConfigurableResource):
    """What the export stage writes: merged checkpoints and GGUF types (see ``core.export.ExportSettings``)."""

    merged_dtype: str
    merged_4bit: bool
    gguf_types: list[str]
    mmproj_type: str
    verify_with_llama_cpp: bool

    def to_core(self) -> ExportSettings:
        kwargs = _core_kwargs(self, ExportSettings)
        kwargs["gguf_types"] = tuple(kwargs["gguf_types"])
        return ExportSettings(**kwargs)


def resources_for_profile(profile: Profile, data_dir: str | None = None) -> dict:
    """The resource dict for ``Definitions`` (or ``dagster.materialize``) that runs ``profile``."""
    model = profile.model
    return {
        "artifacts": ArtifactStore(root=data_dir or default_data_dir()),
        "data_settings": DataSettingsResource(**{**asdict(profile.data), "image_keys": list(profile.data.image_keys)}),
        "model_settings": ModelSettingsResource(
            model_name=model.model_name, revision=model.revision, backend=model.backend,
            load_in_4bit=model.load_in_4bit, max_seq_length=model.max_seq_length, dtype=model.dtype,
            fast_inference=model.fast_inference, gpu_memory_utilization=model.gpu_memory_utilization,
            vllm_standby=model.vllm_standby, lora=LoraConfig(**asdict(model.lora)),
            tiny_model=TinyModelConfig(**asdict(model.tiny_model)),
            warm_start=WarmStartConfig(**asdict(profile.warm_start)),
        ),
        "training_settings": TrainingSettingsResource(**asdict(profile.gspo)),
        "eval_settings": EvalSettingsResource(**asdict(profile.generation)),
        "export_settings": ExportSettingsResource(**{**asdict(profile.export),
                                                     "gguf_types": list(profile.export.gguf_types)}),
    }
