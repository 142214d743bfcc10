"""Adapter inspection, merged checkpoints, and GGUF export through llama.cpp's own converter and quantizer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.files import sha256_file

MERGED_DTYPES = ("bfloat16", "float16", "float32")
GGUF_CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Types llama.cpp's converter writes itself (pure Python: no llama.cpp runtime needed)."""
GGUF_QUANTIZER_TYPES = {"q4_k_m": 15}
"""Types only llama.cpp's quantizer writes, from an f16 file: name -> ``llama_ftype`` (``LLAMA_FTYPE_MOSTLY_Q4_K_M``).
They need the llama.cpp runtime (``llama-cpp-python``, the ``gguf`` extra)."""
GGUF_TYPES = GGUF_CONVERTER_TYPES + tuple(GGUF_QUANTIZER_TYPES)
MMPROJ_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class ExportSettings:
    """What the export stage writes from the trained adapter."""

    merged_dtype: str = field(default="bfloat16", metadata={"help": (
        "dtype of the merged 16-bit checkpoint (``bfloat16`` as the seeds' ``merged_16bit``; ``float32`` is "
        "exact).")})
    merged_4bit: bool = field(default=False, metadata={"help": (
        "Also write Unsloth's merged 4-bit (bitsandbytes) checkpoint, ``save_method=\"merged_4bit_forced\"``. Needs "
        "Unsloth and CUDA; refused with a clear error elsewhere.")})
    gguf_types: tuple[str, ...] = field(default=("f16", "q8_0"), metadata={"help": (
        "GGUF files to write, one per type: ``f16``/``bf16``/``f32``/``q8_0`` by llama.cpp's converter, "
        "``q4_k_m`` by its quantizer (needs the ``gguf`` extra's llama.cpp runtime).")})
    mmproj_type: str = field(default="f16", metadata={"help": (
        "Type of the vision encoder + projector file (``mmproj``), shared by all GGUF types.")})
    verify_with_llama_cpp: bool = field(default=True, metadata={"help": (
        "When the llama.cpp runtime is installed, run each GGUF on a held-out prompt and record whether its "
        "greedy tokens equal ``transformers``' on the merged checkpoint.")})

    def __post_init__(self) -> None:
        if self.merged_dtype not in MERGED_DTYPES:
            raise ValueError(f"merged_dtype must be one of {list(MERGED_DTYPES)}, got {self.merged_dtype!r}")
        unknown = [t for t in self.gguf_types if t not in GGUF_TYPES]
        if unknown:
            raise ValueError(f"unknown GGUF types {unknown}; choose from {list(GGUF_TYPES)}")
        if self.mmproj_type not in MMPROJ_TYPES:
            raise ValueError(f"mmproj_type must be one of {list(MMPROJ_TYPES)}, got {self.mmproj_type!r}")


def inspect_lora_adapter(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """Statistics of a saved PEFT adapter's LoRA matrices.

    PEFT initialises every ``lora_B`` to zero, so an adapter whose B matrices are all zero was never trained (or
    training did nothing); a non-finite value means training diverged. Both are reported, not judged, here.
    """
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
    tensors = load_file(str(path))
    a_keys = [k for k in tensors if "lora_A" in k]
    b_keys = [k for k in tensors if "lora_B" in k]
    import torch

    finite = all(bool(torch.isfinite(t).all()) for t in tensors.values())
    nonzero_b = [k for k in b_keys if bool(tensors[k].abs().max() > 0)]
    return {
        "num_tensors": len(tensors),
        "num_lora_a": len(a_keys),
        "num_lora_b": len(b_keys),
        "num_lora_b_nonzero": len(nonzero_b),
        "max_abs_lora_b": max((float(tensors[k].abs().max()) for k in b_keys), default=0.0),
        "all_finite": finite,
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "sha256": sha256_file(path),
    }


def read_checkpoint_config(model_path: str, revision: str | None = None) -> dict[str, Any]:
    """The ``config.json`` of a local checkpoint folder, or of a hub id (only that small file is fetched)."""
    local = Path(model_path) / "config.json"
    if local.exists():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path, revision=revision).to_dict()


def bnb_quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    """The bitsandbytes ``quantization_config`` a checkpoint was saved with (Unsloth's ``...-bnb-4bit`` ids), or
    None for a checkpoint stored in 16/32-bit."""
    quant = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    if quant and str(quant.get("quant_method", "bitsandbytes")).startswith("bitsandbytes"):
        return quant
    return None


def stored_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a checkpoint's weights were saved in (``dtype`` in transformers 5, ``torch_dtype`` before)."""
    value = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return str(value).replace("torch.", "") if value else None


def count_parameters(config: dict[str, Any]) -> int:
    """Parameters of the model a config describes, counted on PyTorch's meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = {k: v for k, v in config.items() if k != "quantization_config"}
    model_type = config.pop("model_type")
    built = AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(built)
    return int(sum(p.numel() for p in model.parameters()))


def _put_linear(model, name: str, weight, bias, dtype) -> None:
    """Replace the module at ``name`` by a plain ``nn.Linear`` holding ``weight`` (and ``bias``) in ``dtype``.

    The layer is made on the meta device, so no second weight-sized buffer is allocated and initialised only to be
    thrown away."""
    import torch

    out_features, in_features = weight.shape
    linear = torch.nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=dtype)
    linear.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.data.to(dtype=dtype, device=weight.device), requires_grad=False)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)


def _dequantize_bnb_linears(model, dtype) -> int:
    """Replace every bitsandbytes 4-bit linear layer by a plain ``nn.Linear`` holding its dequantized weight.

    The dequantized values are the ones the 4-bit model multiplies with (bitsandbytes dequantizes to its compute
    dtype on every forward), so base + adapter computes the same function before and after. Returns the count.
    """
    import bitsandbytes as bnb

    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear8bitLt):
            raise ValueError(f"{name} is an 8-bit bitsandbytes layer; only 4-bit bases can be merged into 16-bit")
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)
        _put_linear(model, name, weight.reshape(module.out_features, module.in_features), module.bias, dtype)
        replaced += 1
    # The model is no longer quantized: without these markers transformers would save it as bitsandbytes again
    # (and refuse to cast it). The same attributes transformers' own ``remove_quantization_config`` drops.
    for holder in (model, getattr(model, "config", None), getattr(model.config, "text_config", None)):
        for attribute in ("hf_quantizer", "quantization_config", "quantization_method"):
            if holder is not None and attribute in vars(holder):
                delattr(holder, attribute)
    model.is_quantized = False
    # Loading attached bitsandbytes' deserialization as a weight conversion; saving would try to reverse it.
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not any(
            "bnb" in type(op).__name__.lower() for op in getattr(c, "operations", []))] or None
    return replaced


def _merge_lora_exactly(peft_model, dtype):
    """Fold every LoRA layer into its base weight in float32, round once to ``dtype``, and drop the wrappers.

    PEFT's own ``merge_and_unload`` on a 16-bit model rounds the update to 16 bits before adding it, and on a 4-bit
    base re-quantizes the sum; here ``W + scaling * B @ A`` is formed in float32 and rounded a single time.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    model = peft_model.base_model.model
    adapter = peft_model.active_adapter if isinstance(peft_model.active_adapter, str) else \
        peft_model.active_adapter[0]
    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        base = module.get_base_layer()
        if not isinstance(base, torch.nn.Linear):
            raise ValueError(f"{name}: LoRA on {type(base).__name__} cannot be merged here (only linear layers)")
        a = module.lora_A[adapter].weight.float()
        b = module.lora_B[adapter].weight.float()
        delta = (b @ a) * module.scaling[adapter]
        if getattr(module, "fan_in_fan_out", False):
            delta = delta.T
        weight = (base.weight.data.float() + delta.to(base.weight.device)).to(dtype)
        _put_linear(model, name, weight, base.bias, dtype)
        merged += 1
    if merged == 0:
        raise ValueError("the adapter has no LoRA layer on this model: nothing was merged")
    return model.to(dtype), merged


def merge_peak_bytes(num_parameters: int, dtype: str, prequantized: bool) -> int:
    """What merging holds at once: the whole model in the dtype it is merged in, plus the still-packed 4-bit
    weights of a pre-quantized base (about 0.6 byte a parameter) while they are dequantized layer by layer."""
    width = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    return int(num_parameters * (width + (0.6 if prequantized else 0.0)))


def choose_merge_device(num_parameters: int, dtype: str, prequantized: bool) -> str:
    """``cuda`` when the merge fits in free GPU memory with a margin (fast, and host memory stays small), else
    ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    free, _ = torch.cuda.mem_get_info()
    return "cuda" if merge_peak_bytes(num_parameters, dtype, prequantized) * 1.15 < free else "cpu"


def merge_adapter_to_checkpoint(base_model_path: str, adapter_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                                 dtype: str = "bfloat16", revision: str | None = None,
                                 device: str | None = None) -> Path:
    """Merge a LoRA adapter into its base model and save a standalone 16-bit (or float32) checkpoint + processor.

    Works from a base stored in 16/32-bit and from one saved pre-quantized with bitsandbytes 4-bit (Unsloth's
    ``...-bnb-4bit`` ids): that base is loaded as saved, every 4-bit layer is dequantized to ``dtype``, and the
    result holds no 4-bit layer and no ``quantization_config``. Each LoRA update is added in float32 and rounded
    once (:func:`_merge_lora_exactly`). The base is loaded in ``dtype`` (float32 only when it was stored so), not in
    float32, so an 8B merge needs about 17 GB rather than 33 GB; on a GPU with room for it the merge runs there and
    host memory stays near one saved shard. Written to a temporary sibling and moved into place. Without an
    adapter it writes the base alone in ``dtype`` (a 4-bit base dequantized), e.g. for an engine that serves
    16-bit weights.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmrl_pipeline.core.modeling import load_processor, save_checkpoint, tokenizer_sidecars

    if dtype not in MERGED_DTYPES:
        raise ValueError(f"merged dtype must be one of {list(MERGED_DTYPES)}, got {dtype!r}")
    target = getattr(torch, dtype)
    config = read_checkpoint_config(base_model_path, revision)
    quant = bnb_quantization(config)
    if quant is not None and not quant.get("load_in_4bit", quant.get("_load_in_4bit")):
        raise ValueError(f"{base_model_path} is saved in 8-bit bitsandbytes; merging supports 16/32-bit and 4-bit "
                         "bases")
    # A float32-stored base (the demo) is merged in float32 and rounded once at the end; a 16-bit one loses
    # nothing by being loaded in the target dtype.
    work = torch.float32 if stored_dtype(config) == "float32" else target
    device = device or choose_merge_device(count_parameters(config), str(work).replace("torch.", ""),
                                           quant is not None)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": work}
    if quant is not None:
        kwargs["device_map"] = device  # bitsandbytes places the packed weights as it loads them
    base = AutoModelForImageTextToText.from_pretrained(base_model_path, **kwargs)
    if quant is None:
        base.to(device)
    else:
        _dequantize_bnb_linears(base, work)
    if adapter_dir is None:
        merged = base.to(target)
    else:
        merged, _ = _merge_lora_exactly(PeftModel.from_pretrained(base, str(adapter_dir)), target)
    processor = load_processor(base_model_path, revision=revision)
    saved = save_checkpoint(merged, processor, out_dir, sidecars=tokenizer_sidecars(base_model_path, revision))
    # PEFT's wrappers hold reference cycles: without a collection the merged model (17 GB for 8B) would stay on
    # the GPU while the caller loads the saved checkpoint back to verify it, doubling the step's peak.
    del merged, base
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return saved


MERGE_LOGIT_TOLERANCE = 0.1
"""Largest root-mean-square difference of first-token logits between the merged checkpoint and base + adapter, as
a share of the logits' spread (their standard deviation), that still counts as the same model. The reference runs
a 4-bit base in bf16 compute, so even an exact float32 merge differs by that rounding (a few percent on the tiny
test model); a merge that lost, doubled or mis-scaled the adapter, or dequantized the base wrongly, differs by
about the adapter's whole effect (several times the spread on the same model)."""


def merge_agreement(reference_logits, merged_logits) -> dict[str, Any]:
    """How closely the merged checkpoint reproduces base + adapter on the same prompts (first generated token)."""
    reference, merged = reference_logits.float(), merged_logits.float()
    diff = reference - merged
    spread = float(reference.std(dim=-1).mean())
    relative = float(diff.pow(2).mean().sqrt()) / spread if spread > 0 else float("inf")
    return {
        "prompts": int(reference.shape[0]),
        "argmax_agree": int((reference.argmax(-1) == merged.argmax(-1)).sum()),
        "max_abs_logit_diff": float(diff.abs().max()),
        "logit_spread": spread,
        "relative_logit_diff": relative,
        "tolerance": MERGE_LOGIT_TOLERANCE,
        "within_tolerance": relative <= MERGE_LOGIT_TOLERANCE,
    }


def checkpoint_has_4bit_layers(folder: str | os.PathLike) -> bool:
    """True when a saved checkpoint still holds bitsandbytes 4-bit weights (a config marker or packed tensors)."""
    from safetensors import safe_open

    folder = Path(folder)
    if bnb_quantization(json.loads((folder / "config.json").read_text())) is not None:
        return True
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            if any(".quant_state." in key or key.endswith(".absmax") for key in handle.keys()):
                return True
    return False


def merge_adapter_4bit_unsloth(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
                               max_seq_length: int = 2048) -> Path:
    """Unsloth's merged 4-bit checkpoint (``save_method="merged_4bit_forced"``): bitsandbytes 4-bit weights with
    the adapter merged in, loadable by ``transformers`` with bitsandbytes on a GPU.

    The adapter folder is loaded through ``FastVisionModel.from_pretrained`` (its config names the base model), so the
    result is Unsloth's own PEFT wrapper, whose ``save_pretrained_merged`` merges before quantizing. Unsloth's
    "forced" suffix acknowledges that a 4-bit merge loses precision; the 16-bit checkpoint stays the reference.
    """
    from vlmrl_pipeline.core.atomic import atomic_dir
    from vlmrl_pipeline.core.modeling import unsloth_available

    if not unsloth_available():
        raise RuntimeError("merged_4bit needs Unsloth and a CUDA GPU (pip install -e '.[gpu]'); "
                           "set merged_4bit=False to export the 16-bit checkpoint only")
    from unsloth import FastVisionModel

    model, processor = FastVisionModel.from_pretrained(str(adapter_dir), load_in_4bit=True,
                                                       max_seq_length=max_seq_length)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained_merged(str(tmp), processor, save_method="merged_4bit_forced")
    return Path(out_dir)


# --- before training: will the export fit? ---------------------------------------------------------------------

_BYTES_PER_PARAMETER = {"float32": 4.0, "f32": 4.0, "bfloat16": 2.0, "float16": 2.0, "f16": 2.0, "bf16": 2.0,
                        "q8_0": 34 / 32, "q4_k_m": 0.6}
"""Stored size per parameter: q8_0 keeps 32 int8 values + one f16 scale per block; q4_k_m averages ~4.8 bits."""


def _vision_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("vision_config") or {}


def converter_architectures(converter: str | os.PathLike) -> dict[str, set[str]]:
    """Hugging Face architecture names llama.cpp's converter registers, each with the kinds it writes: ``text``
    (the language model) and/or ``mmproj`` (vision encoder + projector). Read from the converter's own sources, so
    the answer is that converter version's."""
    import re

    root = Path(converter).parent
    sources = [Path(converter), *sorted((root / "conversion").rglob("*.py"))]
    # A registration, then any further decorators or comments, then the class and its base.
    pattern = re.compile(r"@ModelBase\.register\(([^)]*)\)(?:\s*(?:@[^\n]*|#[^\n]*))*\s*class\s+\w+\(([^)]*)\)")
    found: dict[str, set[str]] = {}
    for source in sources:
        if not source.is_file():
            continue
        for names, bases in pattern.findall(source.read_text(errors="replace")):
            kind = "mmproj" if "Mmproj" in bases or "Vision" in bases else "text"
            for name in re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", names):
                found.setdefault(name, set()).add(kind)
    return found


def export_requirements(config: dict[str, Any], settings: ExportSettings, num_parameters: int) -> dict[str, Any]:
    """Disk and host memory the export stages will need for a model of this config, estimated before training.

    Disk: the merged checkpoint, Unsloth's 4-bit one (with ``merged_4bit``), every GGUF type (q4_k_m also needs
    its f16 source while quantizing) and the vision projector. Host memory: the merge on the CPU
    (:func:`merge_peak_bytes`); on a GPU with room the merge runs there and needs about one saved shard of host
    memory instead, so both figures are given.
    """
    vision = _vision_config(config)
    vision_share = 0.0
    if vision:
        width = int(vision.get("hidden_size", 0))
        depth = int(vision.get("depth", vision.get("num_hidden_layers", 0)))
        inner = int(vision.get("intermediate_size", 4 * width))
        vision_share = min(0.5, depth * (4 * width * width + 2 * width * inner) / max(num_parameters, 1))
    vision_parameters = int(num_parameters * vision_share)
    merged = int(num_parameters * _BYTES_PER_PARAMETER[settings.merged_dtype])
    gguf = {t: int((num_parameters - vision_parameters) * _BYTES_PER_PARAMETER[t]) for t in settings.gguf_types}
    if "q4_k_m" in gguf and "f16" not in gguf:
        gguf["f16 (scratch for q4_k_m)"] = int((num_parameters - vision_parameters) * 2)
    mmproj = int(vision_parameters * _BYTES_PER_PARAMETER[settings.mmproj_type]) if vision else 0
    merged_4bit = int(num_parameters * 0.6) if settings.merged_4bit else 0
    prequantized = bnb_quantization(config) is not None
    return {
        "num_parameters": num_parameters,
        "disk_bytes": merged + merged_4bit + sum(gguf.values()) + mmproj,
        "merged_bytes": merged,
        "gguf_bytes": gguf,
        "mmproj_bytes": mmproj,
        "merge_host_bytes_on_cpu": merge_peak_bytes(num_parameters, settings.merged_dtype, prequantized),
        "prequantized_4bit": prequantized,
    }


def export_problems(config: dict[str, Any], settings: ExportSettings, data_dir: str | os.PathLike,
                    converter: str | os.PathLike | None, num_parameters: int, *, free_disk_bytes: int | None = None,
                    host_memory_bytes: int | None = None, gpu_free_bytes: int | None = None) -> list[str]:
    """What would make the export stages fail after training, found before it: an architecture llama.cpp's
    converter does not know, too little disk for the files, too little host memory for the merge. Each problem
    names the setting to change. Empty: the export should fit."""
    import shutil

    from vlmrl_pipeline.core.memory import host_memory_total_bytes

    problems: list[str] = []
    need = export_requirements(config, settings, num_parameters)
    architecture = (config.get("architectures") or ["?"])[0]
    if converter is not None:
        known = converter_architectures(converter)
        kinds = known.get(architecture, set())
        if "text" not in kinds:
            problems.append(f"llama.cpp's converter ({converter}) has no language-model conversion for "
                            f"{architecture}: gguf_model would fail; materialize the lineage without gguf_model")
        if _vision_config(config) and "mmproj" not in kinds:
            problems.append(f"llama.cpp's converter has no vision-projector (mmproj) conversion for {architecture}")
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    free = free_disk_bytes if free_disk_bytes is not None else shutil.disk_usage(folder).free
    if need["disk_bytes"] * 1.1 > free:
        problems.append(f"the export writes about {need['disk_bytes'] / 1e9:.1f} GB (merged {settings.merged_dtype} "
                        f"{need['merged_bytes'] / 1e9:.1f} GB, GGUF {list(settings.gguf_types)}, mmproj) but "
                        f"{folder} has {free / 1e9:.1f} GB free: free space, or drop gguf_types / merged_4bit")
    memory = host_memory_bytes if host_memory_bytes is not None else host_memory_total_bytes()
    merge_bytes = need["merge_host_bytes_on_cpu"]
    fits_gpu = gpu_free_bytes is not None and merge_bytes * 1.15 < gpu_free_bytes
    if memory and not fits_gpu and merge_bytes > 0.9 * memory:
        problems.append(f"merging in {settings.merged_dtype} on the CPU needs about {merge_bytes / 1e9:.1f} GB of "
                        f"host memory and this machine has {memory / 1e9:.1f} GB: set merged_dtype to bfloat16, or "
                        "run merged_model on a machine with more memory or a GPU with room for the model")
    return problems


# --- GGUF -------------------------------------------------------------------------------------------------------

# Hugging Face architecture -> the ``general.architecture`` llama.cpp's converter writes for its language model.
GGUF_ARCHITECTURES = {"Qwen3VLForConditionalGeneration": "qwen3vl", "Qwen2_5_VLForConditionalGeneration": "qwen2vl",
                      "Gemma3ForConditionalGeneration": "gemma3"}


def llama_cpp_runtime_available() -> bool:
    """True when ``llama-cpp-python`` (llama.cpp's runtime, compiled at install) is importable."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _run_converter(converter: Path, checkpoint: Path, outfile: Path, outtype: str, mmproj: bool) -> str:
    import subprocess
    import sys

    command = [sys.executable, str(converter), str(checkpoint), "--outfile", str(outfile), "--outtype", outtype]
    if mmproj:
        command.append("--mmproj")
    done = subprocess.run(command, capture_output=True, text=True, cwd=converter.parent)
    if done.returncode != 0 or not outfile.exists():
        what = "vision projector (mmproj)" if mmproj else "language model"
        raise RuntimeError(f"llama.cpp's converter failed on the {what} ({outtype}, exit {done.returncode}):\n"
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stderr


def quantize_gguf(source: str | os.PathLike, target: str | os.PathLike, gguf_type: str,
                  threads: int | None = None) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp's own quantizer (``llama_model_quantize``), e.g. to ``q4_k_m``.

    Tensors whose rows do not split into 256-value K-quant blocks fall back to a type that fits, as
    ``llama-quantize`` does; :func:`inspect_gguf` reports the types actually written.
    """
    if gguf_type not in GGUF_QUANTIZER_TYPES:
        raise ValueError(f"quantize_gguf writes {sorted(GGUF_QUANTIZER_TYPES)}, not {gguf_type!r}")
    if not llama_cpp_runtime_available():
        raise RuntimeError(f"GGUF type {gguf_type!r} is written by llama.cpp's quantizer, which needs the llama.cpp "
                           "runtime: pip install -e '.[gguf]' (compiles llama-cpp-python), or export q8_0/f16 only")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_QUANTIZER_TYPES[gguf_type]
    params.nthread = threads or os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not Path(target).exists():
        raise RuntimeError(f"llama.cpp's quantizer failed ({status}) on {source} -> {gguf_type}")
    return Path(target)


def inspect_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """Read a GGUF file back: its architecture, tensors (count and types), tokenizer, size and checksum."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str, default=None):
        item = reader.fields.get(key)
        return item.contents() if item is not None else default

    arch = field("general.architecture")
    tokens = field("tokenizer.ggml.tokens") or []
    return {
        "file": Path(path).name,
        "architecture": arch,
        "kind": field("general.type"),
        "file_type": field("general.file_type"),
        "num_tensors": len(reader.tensors),
        "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
        "tensor_names": [t.name for t in reader.tensors],
        "block_count": field(f"{arch}.block_count") if arch != "clip" else field("clip.vision.block_count"),
        "embedding_length": field(f"{arch}.embedding_length") if arch != "clip" else
        field("clip.vision.embedding_length"),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "num_tokens": len(tokens),
        "tokens": tokens,
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "has_chat_template": field("tokenizer.chat_template") is not None,
        "projector_type": field("clip.projector_type"),
        "size_bytes": Path(path).stat().st_size,
        "sha256": sha256_file(path),
    }


def verify_gguf(model: dict[str, Any], mmproj: dict[str, Any] | None, checkpoint: str | os.PathLike) -> list[str]:
    """Problems found comparing read-back GGUF files with the checkpoint they came from (empty: consistent).

    Checks the architecture llama.cpp will load, one block per language-model layer, the hidden size, the
    tokenizer (every token string at its id, the pre-tokenizer llama.cpp recognised, end-of-turn id) and, for the
    vision projector, its block count and width.
    """
    from transformers import AutoTokenizer

    from vlmrl_pipeline.core.modeling import GEMMA3_VISION_SPECIAL_TOKENS

    config = json.loads((Path(checkpoint) / "config.json").read_text())
    text = config.get("text_config", config)
    vision = config.get("vision_config", {})
    problems: list[str] = []
    expected_arch = GGUF_ARCHITECTURES.get((config.get("architectures") or [""])[0])
    if expected_arch and model["architecture"] != expected_arch:
        problems.append(f"architecture {model['architecture']!r}, expected {expected_arch!r}")
    layers = int(text["num_hidden_layers"])
    if model["block_count"] != layers:
        problems.append(f"block_count {model['block_count']}, the checkpoint has {layers} layers")
    missing = [i for i in range(layers) if not any(n.startswith(f"blk.{i}.") for n in model["tensor_names"])]
    if missing:
        problems.append(f"no tensors for blocks {missing}")
    if "token_embd.weight" not in model["tensor_names"]:
        problems.append("no token_embd.weight")
    if model["embedding_length"] != int(text["hidden_size"]):
        problems.append(f"embedding_length {model['embedding_length']}, hidden_size is {text['hidden_size']}")
    # A byte-level BPE (``gpt2`` in GGUF) needs its pre-tokenizer recognised; SentencePiece (Gemma's ``llama``)
    # has none.
    if model["tokenizer_model"] == "gpt2" and not model["tokenizer_pre"]:
        problems.append("no tokenizer.ggml.pre: llama.cpp did not recognise the tokenizer")
    if (Path(checkpoint) / "tokenizer.model").is_file() and model["tokenizer_model"] == "gpt2":
        problems.append(f"the checkpoint's tokenizer is SentencePiece (tokenizer.model) but the GGUF holds a BPE "
                        f"tokenizer ({model['tokenizer_pre']!r}): llama.cpp's converter took the wrong path")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}

    def same(stored: str, expected: str) -> bool:
        # llama.cpp writes SentencePiece's word-boundary mark "\u2581" as a plain space in user-defined tokens.
        # (A byte-level BPE vocabulary never holds that mark, so the rule cannot hide a real difference there.)
        # Gemma 3's <image_soft_token> lives in tokenizer.json only; llama.cpp pads that id ("[PAD262144]"): the
        # text model never sees it, the projector file handles images.
        return stored == expected or stored.replace(" ", "\u2581") == expected.replace(" ", "\u2581") or (
            expected in GEMMA3_VISION_SPECIAL_TOKENS and stored.startswith("[PAD"))

    wrong = sorted(i for i, t in by_id.items() if i >= len(model["tokens"]) or not same(model["tokens"][i], t))
    if wrong:
        shown = [(i, by_id[i], model["tokens"][i] if i < len(model["tokens"]) else None) for i in wrong[:3]]
        problems.append(f"{len(wrong)} tokens differ from the checkpoint's tokenizer (first: id, checkpoint, "
                        f"GGUF: {shown})")
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    if eos is not None and model["eos_token_id"] != eos:
        problems.append(f"eos_token_id {model['eos_token_id']}, the tokenizer's is {eos}")
    if mmproj is not None:
        if mmproj["architecture"] != "clip" or mmproj["kind"] != "mmproj":
            problems.append(f"projector file is {mmproj['architecture']!r}/{mmproj['kind']!r}, not clip/mmproj")
        depth = vision.get("depth", vision.get("num_hidden_layers"))
        if depth is not None and mmproj["block_count"] != int(depth):
            problems.append(f"projector block_count {mmproj['block_count']}, the vision tower has {depth}")
        if vision.get("hidden_size") and mmproj["embedding_length"] != int(vision["hidden_size"]):
            problems.append(f"projector width {mmproj['embedding_length']}, the vision tower's is "
                            f"{vision['hidden_size']}")
    return problems


@dataclass(frozen=True)
class GgufExport:
    """One exported GGUF type: the language model file, the vision projector, and what reading them back gave."""

    gguf_type: str
    model_file: Path
    mmproj_file: Path | None
    model_info: dict[str, Any]
    mmproj_info: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        """Everything but the token list and tensor names (for metadata and JSON)."""
        drop = ("tokens", "tensor_names")
        out = {"gguf_type": self.gguf_type,
               "model": {k: v for k, v in self.model_info.items() if k not in drop}}
        if self.mmproj_info is not None:
            out["mmproj"] = {k: v for k, v in self.mmproj_info.items() if k not in drop}
        return out


def export_gguf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, gguf_types: Sequence[str], converter: Path,
                mmproj_type: str = "f16", log: Callable[[str], None] | None = None) -> list[GgufExport]:
    """Convert a merged Hugging Face checkpoint to GGUF with llama.cpp's converter, one file per type.

    For a vision-language model llama.cpp splits the export in two: the language model (``model-<type>.gguf``)
    and the vision encoder with its projector (``mmproj-<mmproj_type>.gguf``, shared by every type; llama.cpp
    loads it beside any of them). ``q4_k_m`` is quantized from an f16 conversion by llama.cpp's quantizer. Every
    file is read back and checked against the checkpoint (:func:`verify_gguf`); any problem raises.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    unknown = [t for t in gguf_types if t not in GGUF_TYPES]
    if unknown or not gguf_types:
        raise ValueError(f"gguf_types must be a non-empty subset of {list(GGUF_TYPES)}, got {list(gguf_types)}")
    if mmproj_type not in MMPROJ_TYPES:
        raise ValueError(f"mmproj_type must be one of {list(MMPROJ_TYPES)}, got {mmproj_type!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _m: None)
    from vlmrl_pipeline.core.llama_cpp import LlamaCppTools, register_checkpoint_tokenizer

    # A small byte-level BPE with GPT-2's pre-tokenizer (the demo's) is unknown to the converter by its hash:
    # register it as gpt-2, as llama.cpp's update script registers new models.
    registered = register_checkpoint_tokenizer(checkpoint, LlamaCppTools(Path(converter).parent))
    if registered:
        say(f"registered the checkpoint's tokenizer (probe hash {registered[:12]}...) with the converter as gpt-2")
    config = json.loads((checkpoint / "config.json").read_text())
    mmproj_file: Path | None = None
    mmproj_info = None
    if "vision_config" in config:
        mmproj_file = out_dir / f"mmproj-{mmproj_type}.gguf"
        _run_converter(converter, checkpoint, mmproj_file, mmproj_type, mmproj=True)
        mmproj_info = inspect_gguf(mmproj_file)
        say(f"wrote {mmproj_file.name}: {mmproj_info['num_tensors']} tensors, {mmproj_info['size_bytes']} bytes")
    exports = []
    for gguf_type in dict.fromkeys(gguf_types):  # each type once, in the order asked
        model_file = out_dir / f"model-{gguf_type}.gguf"
        if gguf_type in GGUF_QUANTIZER_TYPES:
            f16 = out_dir / "model-f16.gguf"
            scratch = f16 if f16.exists() else out_dir / ".model-f16-for-quantize.gguf"
            if not scratch.exists():
                _run_converter(converter, checkpoint, scratch, "f16", mmproj=False)
            quantize_gguf(scratch, model_file, gguf_type)
            if scratch != f16:
                scratch.unlink()
        else:
            _run_converter(converter, checkpoint, model_file, gguf_type, mmproj=False)
        info = inspect_gguf(model_file)
        problems = verify_gguf(info, mmproj_info, checkpoint)
        if problems:
            raise RuntimeError(f"{model_file.name} does not match {checkpoint}: " + "; ".join(problems))
        say(f"wrote {model_file.name}: {info['architecture']}, {info['num_tensors']} tensors "
            f"{info['tensor_types']}, tokenizer {info['tokenizer_model']}/{info['tokenizer_pre']}, "
            f"{info['size_bytes']} bytes")
        exports.append(GgufExport(gguf_type, model_file, mmproj_file, info, mmproj_info))
    return exports


def gguf_greedy_tokens(model_file: str | os.PathLike, prompt_ids: Sequence[int], max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> tuple[list[int], list[float]]:
    """Greedy continuation of ``prompt_ids`` computed by llama.cpp itself from a GGUF file (text only).

    Returns the new token ids and the logits llama.cpp gave after the prompt (its next-token distribution), so a
    caller can compare both with ``transformers`` on the checkpoint the file came from. Uses llama.cpp's C API
    through ``llama-cpp-python``'s bindings, with the CPU's extra buffer types (weight repacking, AMX) off:
    llama.cpp's AMX kernels crash on the demo model's small q8_0 matrices (a segfault in
    ``ggml_backend_amx_mul_mat`` on a Sapphire Rapids CPU), and the plain kernels compute the same product.
    """
    if not llama_cpp_runtime_available():
        raise RuntimeError("running a GGUF needs the llama.cpp runtime: pip install -e '.[gguf]'")
    import ctypes

    import llama_cpp as llama
    import numpy as np

    llama.llama_backend_init()
    model_params = llama.llama_model_default_params()
    model_params.use_extra_bufts = False
    model = llama.llama_model_load_from_file(str(model_file).encode(), model_params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_file}")
    context_params = llama.llama_context_default_params()
    context_params.n_ctx = context_params.n_batch = max(256, len(prompt_ids) + max_new_tokens + 8)
    context_params.n_threads = context_params.n_threads_batch = min(4, os.cpu_count() or 1)
    context = llama.llama_init_from_model(model, context_params)
    try:
        if not context:
            raise RuntimeError(f"llama.cpp could not create a context for {model_file}")
        n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))

        batch = llama.llama_batch_init(context_params.n_batch, 0, 1)
        position = 0

        def decode(ids: Sequence[int]) -> np.ndarray:
            # Explicit positions and sequence ids, as llama.cpp's own examples fill a batch. Logits for every
            # token: asking for the last one only makes llama.cpp drop the other rows before the final layer,
            # which breaks its Qwen3-VL graph when that layer also takes the deepstack input (a one-layer model).
            nonlocal position
            batch.n_tokens = len(ids)
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            status = llama.llama_decode(context, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status} on {model_file}")
            position += len(ids)
            pointer = llama.llama_get_logits_ith(context, -1)
            return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                         shape=(n_vocab,)).copy()

        logits = decode(list(prompt_ids))
        first_logits = [float(x) for x in logits]
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            if token in stop_ids:
                break
            out.append(token)
            logits = decode([token])
        llama.llama_batch_free(batch)
        return out, first_logits
    finally:
        if context:
            llama.llama_free(context)
        llama.llama_model_free(model)
