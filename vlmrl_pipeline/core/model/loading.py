"""Loading, building and wrapping vision-language models.

A hub id or local checkpoint (``unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit``) is loaded through Unsloth's
``FastVisionModel`` when Unsloth is installed and CUDA is present, else through ``transformers``. The demo's tiny
model (``core.demo.tiny_model``) and the stand-ins (``core.standin``) are checkpoint folders loaded the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_dir

# Qwen-VL's special tokens. The image placeholder is expanded by the processor into one token per merged patch;
# a policy that *generates* one of these breaks the next forward pass ("Image features and image tokens do not
# match"), so generation suppresses them (see :func:`vision_token_ids`).
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Gemma-3 marks an image with <start_of_image> and expands it into <image_soft_token>s: the same hazard.
GEMMA3_VISION_SPECIAL_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")

# LoRA on the language model's attention and MLP projections only; the vision tower stays frozen (the seeds'
# choice: vLLM weight sharing cannot carry vision LoRA, and the goal is reasoning, not visual acuity). Qwen3-VL
# names language layers ``model.language_model.layers.N.{self_attn,mlp}.*``; the vision blocks use other names
# (attn.qkv, mlp.linear_fc1), and the regex is anchored on ``language_model`` as well, so they never match.
LANGUAGE_LORA_TARGET_REGEX = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)

def unsloth_available() -> bool:
    """True when Unsloth is importable and a CUDA device is present (Unsloth needs both)."""
    if importlib.util.find_spec("unsloth") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """Map ``auto`` to ``unsloth`` (GPU with Unsloth installed) or ``transformers``; validate explicit choices."""
    if backend not in ("auto", "unsloth", "transformers"):
        raise ValueError(f"backend must be 'auto', 'unsloth' or 'transformers', got {backend!r}")
    if backend == "auto":
        return "unsloth" if unsloth_available() else "transformers"
    if backend == "unsloth" and not unsloth_available():
        raise RuntimeError(
            "backend='unsloth' needs the `gpu` extra (pip install 'vlmrl-pipeline[gpu]') and a CUDA GPU; "
            "use backend='transformers' or 'auto' on this machine"
        )
    return backend


TOKENIZER_SIDECARS = ("tokenizer.model",)
"""Tokenizer files a checkpoint can ship that ``processor.save_pretrained`` does not write back (transformers 5
saves ``tokenizer.json`` only). llama.cpp's converter reads Gemma's SentencePiece ``tokenizer.model``; without it
it falls back to the BPE path and guesses another model's pre-tokenizer."""


def tokenizer_sidecars(model_name: str, revision: str | None = None) -> dict[str, Path]:
    """The :data:`TOKENIZER_SIDECARS` a local checkpoint folder or hub id has (from the hub cache for an id)."""
    found: dict[str, Path] = {}
    for name in TOKENIZER_SIDECARS:
        local = Path(model_name) / name
        if local.is_file():
            found[name] = local
        elif not Path(model_name).exists():
            try:
                from huggingface_hub import hf_hub_download

                found[name] = Path(hf_hub_download(model_name, name, revision=revision))
            except Exception:  # the repository has no such file (Qwen's do not), or the hub is out of reach
                continue
    return found


def save_checkpoint(model, processor, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None,
                    sidecars: dict[str, Path] | None = None) -> Path:
    """Save model + processor atomically (temp folder, then rename), the base's tokenizer ``sidecars`` and an
    optional ``vlmrl_build.json``."""
    import shutil

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name, path in (sidecars or {}).items():
            if not (tmp / name).exists():
                shutil.copyfile(path, tmp / name)
        if extra is not None:
            (tmp / "vlmrl_build.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
    return Path(out_dir)


def vision_token_ids(processor_or_tokenizer) -> list[int]:
    """Ids of the vision special tokens that exist in this tokenizer: never to be generated."""
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in (*VISION_SPECIAL_TOKENS, *GEMMA3_VISION_SPECIAL_TOKENS) if t in vocab)


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


def torch_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"`` -> bf16 on a GPU that supports it, else float32 (CPU)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return getattr(torch, name)
    except AttributeError:  # pragma: no cover - guarded by the settings' validation
        raise ValueError(f"unknown torch dtype {name!r}") from None


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_dtype(dtype: str) -> str:
    """The dtype vLLM serves a model in for ``model_settings.dtype``: 16-bit (bf16 unless float16 was chosen; a
    float32 demo model is served in bf16, as on any GPU path).

    >>> vllm_dtype("auto"), vllm_dtype("float16"), vllm_dtype("float32")
    ('bfloat16', 'float16', 'bfloat16')
    """
    return "float16" if dtype == "float16" else "bfloat16"


def require_fast_inference(backend_used: str) -> None:
    """Refuse ``fast_inference`` where it cannot run, with what to do instead (a silent fallback would hide it)."""
    if backend_used != "unsloth":
        raise RuntimeError(
            f"fast_inference=True runs vLLM through Unsloth, but the {backend_used!r} backend was chosen "
            "(Unsloth needs CUDA and the 'gpu' extra). Set fast_inference=False to generate with transformers."
        )
    if not vllm_available():
        raise RuntimeError(
            "fast_inference=True needs vLLM, which is not installed in this environment. Install a vLLM build "
            "that matches your torch and CUDA (pip install vllm), or set fast_inference=False: rollouts then use "
            "Unsloth's own generation, slower but with the same results format."
        )


VLLM_4BIT_SKIP_MODULES = ("lm_head", "model.visual", "visual", "merger", "model.vision_tower", "vision_tower",
                          "multi_modal_projector")
"""What a 4-bit checkpoint keeps in 16 bit for Unsloth's vLLM engine: the vision tower, the projector and ``lm_head``,
as Unsloth's own ``-unsloth-bnb-4bit`` uploads do (transformers matches these as module-name prefixes or suffixes:
``model.visual`` is Qwen-VL's tower, ``model.vision_tower`` Gemma-3's SigLIP)."""


def is_prequantized_4bit(model_name: str) -> bool:
    """Whether a checkpoint is stored in bitsandbytes 4-bit: its ``quantization_config`` for a local folder,
    Unsloth's ``-bnb-4bit`` naming for a hub id (the test Unsloth's own vLLM loader makes).

    >>> [is_prequantized_4bit(n) for n in ("unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit", "Qwen/Qwen2.5-VL-7B")]
    [True, False]
    """
    config = Path(model_name) / "config.json"
    if config.is_file():
        quant = json.loads(config.read_text()).get("quantization_config") or {}
        return quant.get("quant_method") == "bitsandbytes" and bool(quant.get("load_in_4bit",
                                                                              quant.get("_load_in_4bit")))
    return model_name.lower().endswith("-bnb-4bit")


def needs_vllm_4bit_copy(model_name: str, *, backend: str, fast_inference: bool, load_in_4bit: bool) -> bool:
    """Unsloth's vLLM engine with ``load_in_4bit`` on a 16-bit checkpoint: vLLM would quantize in flight, vision
    tower included, and the training model Unsloth rebuilds from vLLM's weights then fails in its first forward
    ("self and mat2 must have the same dtype, but got BFloat16 and Byte", in ``get_image_features``). Such a
    checkpoint is served from a 4-bit copy in Unsloth's own packaging instead (:func:`vllm_4bit_checkpoint`)."""
    return backend == "unsloth" and fast_inference and load_in_4bit and not is_prequantized_4bit(model_name)


def _checkpoint_fingerprint(model_name: str, revision: str | None) -> str:
    import hashlib

    files: list[tuple[str, int, int]] = []
    folder = Path(model_name)
    if folder.is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    blob = json.dumps({"model": str(folder.resolve()) if folder.is_dir() else model_name, "revision": revision,
                       "files": files, "skip": VLLM_4BIT_SKIP_MODULES})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def vllm_4bit_checkpoint(model_name: str, cache_root: str | os.PathLike, *, revision: str | None = None,
                         dtype: str = "auto", device: str | int = 0, log=None) -> Path:
    """The 4-bit copy of a 16-bit checkpoint that Unsloth's vLLM engine can serve: nf4 with double quantization,
    :data:`VLLM_4BIT_SKIP_MODULES` in 16 bit. Quantized on the GPU with bitsandbytes and written once under
    ``cache_root`` (keyed by the checkpoint's name, revision and files), then reused."""
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    out = Path(cache_root) / f"4bit-{_checkpoint_fingerprint(model_name, revision)}"
    if (out / "config.json").is_file():
        if log is not None:
            log(f"vLLM 4-bit copy of {model_name}: reusing {out}")
        return out
    compute = torch.float16 if dtype == "float16" else torch.bfloat16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute,
                                      llm_int8_skip_modules=list(VLLM_4BIT_SKIP_MODULES))
    model = AutoModelForImageTextToText.from_pretrained(model_name, revision=revision, dtype=compute,
                                                        quantization_config=quantization, device_map={"": device})
    processor = load_processor(model_name, revision=revision)
    save_checkpoint(model, processor, out, sidecars=tokenizer_sidecars(model_name, revision),
                    extra={"vllm_4bit_copy_of": model_name, "revision": revision,
                           "skip_modules": list(VLLM_4BIT_SKIP_MODULES)})
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if log is not None:
        log(f"vLLM 4-bit copy of {model_name} written to {out} (vision tower, projector and lm_head in 16 bit, as "
            "Unsloth's -bnb-4bit uploads; vLLM's in-flight 4-bit would quantize the vision tower too)")
    return out


def load_processor(model_name: str, revision: str | None = None):
    """The processor (tokenizer + image processor + chat template) of a hub id or local checkpoint."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_name, revision=revision)
    # Decoder-only batched generation needs left padding; training is indifferent.
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(
    model_name: str,
    *,
    backend: str = "auto",
    revision: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    max_seq_length: int = 16384,
    device: str | None = None,
    fast_inference: bool = False,
    gpu_memory_utilization: float = 0.625,
    vllm_standby: bool = True,
    vllm_4bit_cache: str | os.PathLike | None = None,
    log=None,
):
    """Load a vision-language model and its processor for generation or training.

    ``backend="unsloth"`` goes through ``FastVisionModel.from_pretrained`` (4-bit when ``load_in_4bit``), the
    seeds' path; ``"transformers"`` through ``AutoModelForImageTextToText`` (4-bit through bitsandbytes when
    asked). ``fast_inference`` asks Unsloth for a vLLM engine (GSPO rollouts through vLLM, sharing the weights);
    it needs the Unsloth backend and an installed vLLM, and says so plainly otherwise. A 16-bit checkpoint with
    ``fast_inference`` and ``load_in_4bit`` is served from its 4-bit copy under ``vllm_4bit_cache``
    (:func:`needs_vllm_4bit_copy`). Returns ``(model, processor, backend_used)``.
    """
    used = resolve_backend(backend)
    if fast_inference:
        require_fast_inference(used)
        if vllm_standby:  # read when Unsloth is imported, which happens just below in a training process
            os.environ.setdefault("UNSLOTH_VLLM_STANDBY", "1")
    if needs_vllm_4bit_copy(model_name, backend=used, fast_inference=fast_inference, load_in_4bit=load_in_4bit):
        if vllm_4bit_cache is None:
            raise ValueError(f"fast_inference with load_in_4bit on the 16-bit checkpoint {model_name} needs a folder "
                             "for its 4-bit copy (vllm_4bit_cache)")
        import unsloth  # noqa: F401  -- before the copy imports transformers, so Unsloth's patches apply to both
        model_name = str(vllm_4bit_checkpoint(model_name, vllm_4bit_cache, revision=revision, dtype=dtype, log=log))
        revision = None
    if used == "unsloth":
        from unsloth import FastVisionModel  # imported lazily: it patches transformers on import

        extra: dict[str, Any] = {}
        if fast_inference:
            from vlmrl_pipeline.core.model.unsloth_compat import patch_unsloth_for_fast_inference

            patch_unsloth_for_fast_inference(log=log or print)
            extra = {"fast_inference": True, "gpu_memory_utilization": gpu_memory_utilization}
        model, processor = FastVisionModel.from_pretrained(
            model_name=model_name,
            max_seq_length=max_seq_length,
            load_in_4bit=load_in_4bit,
            revision=revision,
            dtype=None if dtype == "auto" else torch_dtype(dtype),
            **extra,
        )
        processor.tokenizer.padding_side = "left"
        return model, processor, used

    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype(dtype)}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype("auto")
        )
    model = AutoModelForImageTextToText.from_pretrained(model_name, **kwargs)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not load_in_4bit:
        model.to(device)
    processor = load_processor(model_name, revision=revision)
    return model, processor, used


@dataclass(frozen=True)
class LoraSettings:
    """LoRA shape; the seeds use r=16, alpha=16 (Unsloth's docs suggest alpha = 2r to learn faster)."""

    r: int = field(default=16, metadata={"help": (
        "LoRA rank: the inner dimension of each low-rank update.")})
    lora_alpha: int = field(default=16, metadata={"help": (
        "Scaling numerator: updates are scaled by lora_alpha / r.")})
    lora_dropout: float = field(default=0.0, metadata={"help": (
        "Dropout on the LoRA input during training.")})
    finetune_vision_layers: bool = field(default=False, metadata={"help": (
        "Put LoRA on the vision tower too (not servable by vLLM).")})
    finetune_language_layers: bool = field(default=True, metadata={"help": (
        "Put LoRA on the language model's layers.")})
    finetune_attention_modules: bool = field(default=True, metadata={"help": (
        "Within the chosen layers: the attention projections (q, k, v, o).")})
    finetune_mlp_modules: bool = field(default=True, metadata={"help": (
        "Within the chosen layers: the MLP projections (gate, up, down).")})


def lora_target_regex(settings: LoraSettings) -> str:
    """The PEFT ``target_modules`` regex that the four ``finetune_*`` switches select on a Qwen-VL model."""
    names: list[str] = []
    parts: list[str] = []
    if settings.finetune_language_layers:
        if settings.finetune_attention_modules:
            names += ["q_proj", "k_proj", "v_proj", "o_proj"]
        if settings.finetune_mlp_modules:
            names += ["gate_proj", "up_proj", "down_proj"]
        if names:
            parts.append(rf".*language_model.*\.({'|'.join(names)})")
    if settings.finetune_vision_layers:
        # Each family names its vision tower differently: Qwen3-VL (visual.blocks: attn.qkv, attn.proj,
        # mlp.linear_fc1/2), Qwen2.5-VL (visual.blocks: attn.qkv, attn.proj, mlp.gate/up/down_proj) and Gemma-3's
        # SigLIP (vision_tower ...: self_attn.q/k/v/out_proj, mlp.fc1/2).
        qwen, siglip = [], []
        if settings.finetune_attention_modules:
            qwen += ["qkv", r"attn\.proj"]
            siglip += ["q_proj", "k_proj", "v_proj", "out_proj"]
        if settings.finetune_mlp_modules:
            qwen += ["linear_fc1", "linear_fc2", "gate_proj", "up_proj", "down_proj"]
            siglip += ["fc1", "fc2"]
        if qwen:
            parts.append(rf".*visual\.blocks.*\.({'|'.join(qwen)})")
            parts.append(rf".*vision_tower.*\.({'|'.join(siglip)})")
    if not parts:
        raise ValueError("LoRA settings select no module: enable language or vision layers and a module kind")
    return "|".join(f"(?:{p})" for p in parts)


def peft_lora_config(settings: LoraSettings):
    """A ``peft.LoraConfig`` for the transformers backend (Unsloth builds its own from the same switches)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=lora_target_regex(settings),
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model, settings: LoraSettings, backend: str, seed: int = 3407):
    """Wrap ``model`` with fresh LoRA adapters: Unsloth's ``get_peft_model`` or PEFT's, same switches."""
    if backend == "unsloth":
        from unsloth import FastVisionModel

        return FastVisionModel.get_peft_model(
            model,
            finetune_vision_layers=settings.finetune_vision_layers,
            finetune_language_layers=settings.finetune_language_layers,
            finetune_attention_modules=settings.finetune_attention_modules,
            finetune_mlp_modules=settings.finetune_mlp_modules,
            r=settings.r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=seed,
        )
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(settings))


def load_policy(
    model_path: str,
    *,
    backend: str = "auto",
    revision: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    max_seq_length: int = 16384,
    adapter_dir: str | os.PathLike | None = None,
):
    """Load a base model (optionally with a trained LoRA adapter on top) ready for generation.

    Evaluation generates with ``model.generate`` in batches on every backend, so it never needs vLLM.
    Returns ``(model, processor, backend_used)``.
    """
    model, processor, used = load_model(
        model_path, backend=backend, revision=revision, dtype=dtype, load_in_4bit=load_in_4bit,
        max_seq_length=max_seq_length,
    )
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if used == "unsloth":
        from unsloth import FastVisionModel

        FastVisionModel.for_inference(model)
    model.eval()
    return model, processor, used
