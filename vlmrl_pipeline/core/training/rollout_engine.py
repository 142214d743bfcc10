"""Which engine generates the GSPO rollouts: ``training_settings.rollout_engine`` (``auto``, ``vllm`` or
``generate``) resolved into the low-level switches ``use_vllm`` and ``model_settings.fast_inference``.

Resolved on the training machine, after the backend is (``core.model.loading.resolve_backend``): whether vLLM can run
depends on its GPU and packages. :func:`resolve_rollout_engine` takes those probes as arguments so the rules can be
tested anywhere; left out, they look at this machine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

VLLM_INSTALL = "pip install -e '.[gpu,vllm]'"


@dataclass(frozen=True)
class Blocker:
    """Something that keeps vLLM rollouts from running: ``why`` (a clause) and ``fix`` (what to do about it)."""

    why: str
    fix: str


UNSLOTH_ENGINE_PROMPT_MISMATCH = {
    "gemma3": "Unsloth's vLLM engine (2026.10.9, vLLM 0.25.1) generates Gemma 3's rollouts from a prompt 259 tokens "
              "longer than the trainer's (the image placeholder expanded twice; seen on the Gemma-3 4B stand-in "
              "on an H200), which the rollout-prompt guard stops at the first step",
}
"""Architectures (``model_type``) whose rollouts through Unsloth's engine do not come from the trainer's prompt."""


def vllm_rollout_blockers(model: Any, backend: str, *, cuda_available: bool | None = None,
                          vllm_installed: bool | None = None,
                          compressed_tensors_installed: bool | None = None,
                          model_type: str | None = None) -> list[Blocker]:
    """Why vLLM rollouts cannot run for ``model`` (``ModelSettings``) on ``backend``; empty when they can.

    A probe left at None is not known and not checked, and neither is anything that depends on the backend while
    it is still ``auto``: so the pre-run settings check (``core.settings_check``) gets only what the settings
    alone decide. ``model_type`` is the checkpoint's ``config.json`` ``model_type`` where known.

    >>> from vlmrl_pipeline.core.profiles import ModelSettings
    >>> [b.fix for b in vllm_rollout_blockers(ModelSettings(backend="transformers"), "transformers")]
    ["set model_settings.load_in_4bit=False, or backend='unsloth' (Unsloth's engine serves 4-bit)"]
    >>> vllm_rollout_blockers(ModelSettings(backend="unsloth"), "unsloth", cuda_available=True, vllm_installed=True,
    ...                       compressed_tensors_installed=True)
    []
    """
    blockers = []
    if cuda_available is False:
        blockers.append(Blocker("there is no CUDA GPU (vLLM does not run on a CPU)", "run on a CUDA machine"))
    if vllm_installed is False:
        blockers.append(Blocker("vLLM is not installed", VLLM_INSTALL))
    if backend == "transformers" and model.fast_inference:
        blockers.append(Blocker(
            "model_settings.fast_inference=True runs vLLM through Unsloth, but the backend is transformers",
            "set model_settings.fast_inference=False (the transformers backend uses TRL's colocated engine)"))
    if backend == "transformers" and model.load_in_4bit:
        blockers.append(Blocker(
            "the transformers backend trains a 4-bit policy (model_settings.load_in_4bit=True), whose packed "
            "bitsandbytes weights TRL's colocated vLLM cannot take",
            "set model_settings.load_in_4bit=False, or backend='unsloth' (Unsloth's engine serves 4-bit)"))
    if backend == "unsloth" and model.load_in_4bit and compressed_tensors_installed is False:
        # Unsloth hands vLLM its 4-bit weights through vLLM's bitsandbytes loader, which imports the package.
        blockers.append(Blocker(
            "Unsloth serves the 4-bit policy through vLLM's bitsandbytes loader, which needs the compressed_tensors "
            "package, not installed", "pip install compressed-tensors, or set model_settings.load_in_4bit=False"))
    if backend == "unsloth" and model_type in UNSLOTH_ENGINE_PROMPT_MISMATCH:
        blockers.append(Blocker(UNSLOTH_ENGINE_PROMPT_MISMATCH[model_type],
                                "set training_settings.rollout_engine='generate'"))
    if backend == "unsloth" and model.lora.finetune_vision_layers:
        blockers.append(Blocker(
            "Unsloth's vLLM engine cannot serve LoRA on vision layers (model_settings.lora.finetune_vision_layers)",
            "set finetune_vision_layers=False"))
    return blockers


@dataclass(frozen=True)
class RolloutEngineChoice:
    """What ``rollout_engine`` resolved to on this machine, and the switches that make it so."""

    engine: str
    """``vllm`` or ``generate``."""
    setting: str
    """What was asked: ``auto``, ``vllm`` or ``generate``."""
    reason: str
    """One sentence for the run log and the adapter's metadata."""
    use_vllm: bool
    fast_inference: bool
    problems: tuple[str, ...] = ()
    """Why the asked ``vllm`` cannot run, naming the setting; the run is refused when not empty."""

    @property
    def label(self) -> str:
        """The engine as ``lora_adapter``'s metadata has always named it: ``vllm`` or ``model.generate``."""
        return "vllm" if self.engine == "vllm" else "model.generate"

    def record(self) -> dict[str, str]:
        """What the training job and ``training_log.json`` keep."""
        return {"engine": self.label, "setting": self.setting, "reason": self.reason}

    def apply(self, model: Any, gspo: Any) -> tuple[Any, Any]:
        """``model`` (``ModelSettings``) and ``gspo`` (``GSPOSettings``) with the resolved switches."""
        return (dataclasses.replace(model, fast_inference=self.fast_inference),
                dataclasses.replace(gspo, use_vllm=self.use_vllm))


def _engine_name(backend: str) -> str:
    return "Unsloth's engine (fast_inference)" if backend == "unsloth" else "TRL's colocated engine"


def resolve_rollout_engine(model: Any, gspo: Any, backend: str, *, cuda_available: bool | None = None,
                           vllm_installed: bool | None = None,
                           compressed_tensors_installed: bool | None = None,
                           model_type: str | None = None) -> RolloutEngineChoice:
    """``gspo.rollout_engine`` resolved for ``model`` on the resolved ``backend`` (``unsloth`` or
    ``transformers``). Probes left at None are this machine's: ``torch.cuda.is_available()`` and whether ``vllm``
    and ``compressed_tensors`` can be imported.

    * ``generate``: never vLLM;
    * ``vllm``: ``use_vllm``, and ``fast_inference`` on the Unsloth backend; :attr:`RolloutEngineChoice.problems`
      says why where it cannot run;
    * ``auto``: an explicit ``use_vllm`` or ``fast_inference`` is kept as set (their own checks apply); otherwise
      as ``vllm`` where it can run, else ``generate``, the reason saying what stood in the way.

    >>> from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
    >>> from vlmrl_pipeline.core.profiles import ModelSettings
    >>> choice = resolve_rollout_engine(ModelSettings(backend="transformers", load_in_4bit=False), GSPOSettings(),
    ...                                 "transformers", cuda_available=False, vllm_installed=False)
    >>> choice.engine, choice.use_vllm, choice.label
    ('generate', False, 'model.generate')
    >>> choice.reason.startswith("rollout_engine=auto: there is no CUDA GPU"), "pip install -e" in choice.reason
    (True, True)
    >>> choice = resolve_rollout_engine(ModelSettings(backend="unsloth"), GSPOSettings(), "unsloth",
    ...                                 cuda_available=True, vllm_installed=True, compressed_tensors_installed=True)
    >>> choice.engine, choice.use_vllm, choice.fast_inference
    ('vllm', True, True)
    """
    setting = gspo.rollout_engine
    if setting == "generate":
        return RolloutEngineChoice("generate", setting, "rollout_engine=generate: rollouts through model.generate",
                                   use_vllm=False, fast_inference=model.fast_inference)
    if setting == "auto" and (gspo.use_vllm or model.fast_inference):
        switches = [name for name, on in (("training_settings.use_vllm", gspo.use_vllm),
                                          ("model_settings.fast_inference", model.fast_inference)) if on]
        return RolloutEngineChoice(
            "vllm", setting, f"rollout_engine=auto follows {' and '.join(switches)}=True: vLLM rollouts through "
            f"{_engine_name(backend)}", use_vllm=gspo.use_vllm, fast_inference=model.fast_inference)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    if compressed_tensors_installed is None:
        compressed_tensors_installed = importlib.util.find_spec("compressed_tensors") is not None
    blockers = vllm_rollout_blockers(model, backend, cuda_available=cuda_available, vllm_installed=vllm_installed,
                                     compressed_tensors_installed=compressed_tensors_installed, model_type=model_type)
    fast_inference = model.fast_inference or backend == "unsloth"
    if not blockers:
        return RolloutEngineChoice(
            "vllm", setting, f"rollout_engine={setting}: vLLM rollouts through {_engine_name(backend)}",
            use_vllm=True, fast_inference=fast_inference)
    whys, fixes = "; ".join(b.why for b in blockers), "; ".join(b.fix for b in blockers)
    if setting == "vllm":
        problem = (f"training_settings.rollout_engine='vllm' cannot run here: {whys}. To do: {fixes}; or set "
                   "training_settings.rollout_engine='auto' (or 'generate') for model.generate rollouts")
        return RolloutEngineChoice("vllm", setting, problem, use_vllm=True, fast_inference=fast_inference,
                                   problems=(problem,))
    return RolloutEngineChoice(
        "generate", setting, f"rollout_engine=auto: {whys}, so rollouts go through model.generate ({fixes} for vLLM "
        "rollouts)", use_vllm=False, fast_inference=False)
