"""Settings that cannot work, found before a run's first step (``execution.settings_problems`` calls this).

Each settings dataclass checks its own fields when it is made (``GSPOSettings.__post_init__`` and others); this
module adds the checks that need several settings at once, and those of dataclasses that do not check themselves.
"""

from __future__ import annotations

from typing import Any

from vlmrl_pipeline.core.answers.extraction import ANSWER_FORMATS
from vlmrl_pipeline.core.training.rollout_engine import vllm_rollout_blockers

DATASET_FORMATS = ("mathvista", "rlinf")


def settings_conflicts(data: Any = None, model: Any = None, gspo: Any = None, generation: Any = None) -> list[str]:
    """One line per problem (each argument optional): unknown formats, empty splits, and completions that leave
    no room for the prompt inside ``max_seq_length``."""
    problems = []
    if data is not None:
        if data.answer_format not in ANSWER_FORMATS:
            problems.append(f"data_settings.answer_format must be one of {ANSWER_FORMATS}, got {data.answer_format!r}")
        if data.dataset_format not in DATASET_FORMATS:
            problems.append(f"data_settings.dataset_format must be one of {DATASET_FORMATS}, "
                            f"got {data.dataset_format!r}")
        if data.eval_size < 1:
            problems.append(f"data_settings.eval_size must be >= 1 (the held-out rows), got {data.eval_size}")
        if data.image_size < 1:
            problems.append(f"data_settings.image_size must be >= 1, got {data.image_size}")
        if not 0.0 <= data.max_lost_fraction <= 1.0:
            problems.append(f"data_settings.max_lost_fraction must be in [0, 1], got {data.max_lost_fraction}")
        if getattr(data, "validation_size", 0) < 0:
            problems.append(f"data_settings.validation_size must be >= 0 (0: no validation rows), got "
                            f"{data.validation_size}")
    problems += validation_conflicts(data, gspo)
    problems += vllm_conflicts(model, gspo)
    limit = getattr(model, "max_seq_length", None)
    if limit is not None and limit < 1:
        problems.append(f"model_settings.max_seq_length must be >= 1, got {limit}")
    elif limit is not None:
        if gspo is not None and gspo.max_completion_length >= limit:
            problems.append(f"training_settings.max_completion_length={gspo.max_completion_length} leaves no room "
                            f"for the prompt in model_settings.max_seq_length={limit}")
        new_tokens = getattr(generation, "max_new_tokens", None)
        if new_tokens is not None and new_tokens >= limit:
            problems.append(f"eval_settings.max_new_tokens={new_tokens} leaves no room for the prompt in "
                            f"model_settings.max_seq_length={limit}")
    return problems


def validation_conflicts(data: Any = None, gspo: Any = None) -> list[str]:
    """Validation during training without validation rows (``eval_steps``, ``keep_checkpoint='best_validation'``
    with ``data_settings.validation_size=0``), and plugged-in rewards that do not import or do not score a sample
    (``core.reward_plugins.reward_problems``)."""
    if gspo is None:
        return []
    problems = []
    if data is not None and not getattr(data, "validation_size", 0):
        if getattr(gspo, "eval_steps", 0):
            problems.append(f"training_settings.eval_steps={gspo.eval_steps} evaluates on validation rows, but "
                            "data_settings.validation_size=0 carves none: set validation_size (e.g. 50), or "
                            "eval_steps=0")
        if getattr(gspo, "keep_checkpoint", "last") == "best_validation":
            problems.append("training_settings.keep_checkpoint='best_validation' needs validation rows: set "
                            "data_settings.validation_size, or keep_checkpoint='last'")
    if getattr(gspo, "reward_funcs", ()):
        from vlmrl_pipeline.core.reward_plugins import reward_problems

        problems += reward_problems(tuple(gspo.reward_funcs))
    return problems


def vllm_conflicts(model: Any = None, gspo: Any = None, backend: str | None = None) -> list[str]:
    """vLLM rollout settings that cannot work together. ``backend`` is the resolved one where known (``auto``
    becomes Unsloth or transformers only on the training machine, which checks again with it, after resolving
    ``rollout_engine``: whether vLLM is installed and a GPU present is known only there)."""
    if model is None or gspo is None:
        return []
    backend = backend or model.backend
    # rollout_engine='vllm' sets use_vllm and fast_inference itself (core.training.rollout_engine): their pairing is
    # checked only where the user sets them.
    engine = getattr(gspo, "rollout_engine", "auto")
    problems = []
    if engine == "generate" and model.fast_inference:
        problems.append("model_settings.fast_inference=True loads a vLLM engine that "
                        "training_settings.rollout_engine='generate' never uses: set fast_inference=False, or "
                        "rollout_engine='vllm' (or 'auto')")
    elif engine == "auto" and model.fast_inference and not gspo.use_vllm:
        problems.append("model_settings.fast_inference=True loads a vLLM engine that only rollouts with "
                        "training_settings.use_vllm=True use: set both, or neither (or "
                        "training_settings.rollout_engine='vllm')")
    if engine == "auto" and gspo.use_vllm and backend == "unsloth" and not model.fast_inference:
        problems.append("training_settings.use_vllm=True with the Unsloth backend needs "
                        "model_settings.fast_inference=True (Unsloth starts the vLLM engine when it loads the model)")
    if engine == "vllm":  # what the settings alone rule out; the GPU and packages are probed on the training machine
        problems += [f"training_settings.rollout_engine='vllm' cannot run with these settings: {b.why}. To do: "
                     f"{b.fix}; or set training_settings.rollout_engine='auto' (or 'generate')"
                     for b in vllm_rollout_blockers(model, backend)]
    elif gspo.use_vllm and backend == "transformers" and model.load_in_4bit:
        problems.append("training_settings.use_vllm=True on the transformers backend needs "
                        "model_settings.load_in_4bit=False: TRL's colocated vLLM would re-load the policy in 4-bit "
                        "and receive bitsandbytes' packed weights at every sync; use backend='unsloth' with "
                        "fast_inference=True for 4-bit training with vLLM rollouts")
    if (gspo.use_vllm or engine == "vllm") and gspo.vllm_enable_sleep_mode and backend == "unsloth":
        problems.append("training_settings.vllm_enable_sleep_mode is TRL's colocated engine's; with the Unsloth "
                        "backend use model_settings.vllm_standby instead")
    return problems


def machine_problems(model: Any = None, gspo: Any = None, generation: Any = None) -> list[str]:
    """Settings that ask for vLLM by name (``use_vllm``, ``rollout_engine='vllm'``, ``fast_inference``,
    ``eval_settings.engine='vllm'``) on a machine without a CUDA GPU or without vLLM: one line each, naming the
    setting. For where the run starts on the machine its steps run on (the default executor); ``auto`` settings
    fall back to ``model.generate`` there by themselves and are not problems.

    CUDA is probed through NVML (``PYTORCH_NVML_BASED_CUDA_CHECK``), so the process that starts the run never
    initialises CUDA: a step forked from it could not use the GPU.
    """
    import os

    from vlmrl_pipeline.core.evaluation.vllm_engine import vllm_problems

    asked = []
    if gspo is not None and getattr(gspo, "rollout_engine", "auto") == "vllm":
        asked.append("training_settings.rollout_engine='vllm'")
    elif gspo is not None and gspo.use_vllm:
        asked.append("training_settings.use_vllm=True")
    elif model is not None and model.fast_inference:
        asked.append("model_settings.fast_inference=True")
    if generation is not None and getattr(generation, "engine", "transformers") == "vllm":
        asked.append("eval_settings.engine='vllm'")
    if not asked:
        return []
    previous = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        return [problem for setting in asked for problem in vllm_problems(setting)]
    finally:
        if previous is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = previous
