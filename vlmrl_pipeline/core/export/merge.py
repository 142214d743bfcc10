"""The trained adapter merged into its base model: the adapter's statistics, the base's saved config, the merged
16-bit checkpoint (from a 16/32-bit base or a pre-quantized bitsandbytes 4-bit one), how closely it reproduces base
+ adapter, and Unsloth's merged 4-bit checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.export.settings import MERGED_DTYPES
from vlmrl_pipeline.core.files import sha256_file


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

    from vlmrl_pipeline.core.model.loading import load_processor, save_checkpoint, tokenizer_sidecars

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


def merge_adapter_4bit_unsloth(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_load_path: str,
                               max_seq_length: int = 2048) -> Path:
    """Unsloth's merged 4-bit checkpoint (``save_method="merged_4bit_forced"``): bitsandbytes 4-bit weights with
    the adapter merged in, loadable by ``transformers`` with bitsandbytes on a GPU.

    The adapter folder is loaded through ``FastVisionModel.from_pretrained`` (its config names the base model), so the
    result is Unsloth's own PEFT wrapper, whose ``save_pretrained_merged`` merges before quantizing. Unsloth's
    "forced" suffix acknowledges that a 4-bit merge loses precision; the 16-bit checkpoint stays the reference.
    """
    from vlmrl_pipeline.core.atomic import atomic_dir
    from vlmrl_pipeline.core.model.loading import unsloth_available

    if not unsloth_available():
        raise RuntimeError("merged_4bit needs Unsloth and a CUDA GPU (pip install -e '.[gpu]'); "
                           "set merged_4bit=False to export the 16-bit checkpoint only")
    import tempfile

    from unsloth import FastVisionModel

    from vlmrl_pipeline.core.model.card import adapter_copy_for

    # The adapter folder names its base portably (relative to the data folder, core.model.card); Unsloth reads
    # that name from any working directory, so it gets a copy naming the path this step loads.
    with tempfile.TemporaryDirectory(prefix="vlmrl-adapter-") as scratch:
        copy = adapter_copy_for(adapter_dir, scratch, base_load_path)
        model, processor = FastVisionModel.from_pretrained(str(copy), load_in_4bit=True,
                                                           max_seq_length=max_seq_length)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained_merged(str(tmp), processor, save_method="merged_4bit_forced")
    return Path(out_dir)
