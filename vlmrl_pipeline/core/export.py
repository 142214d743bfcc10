"""Adapter inspection and merged-checkpoint export."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (adapters and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_dir(folder: str | os.PathLike) -> str:
    """One sha256 over every file of a folder (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def dir_size_bytes(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


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


def merge_adapter_to_checkpoint(base_model_path: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
                                 dtype: str = "bfloat16", revision: str | None = None) -> Path:
    """Merge a LoRA adapter into its base model and save a standalone 16-bit checkpoint (plus processor).

    The merge is done in float32 on the CPU (exact), then cast to ``dtype`` for saving (``float32`` keeps it
    bit-for-bit equivalent to base + adapter; ``bfloat16`` halves the size, as the seeds' ``merged_16bit`` does).
    The folder is written to a temporary sibling and moved into place.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmrl_pipeline.core.modeling import load_processor, save_checkpoint

    base = AutoModelForImageTextToText.from_pretrained(base_model_path, revision=revision, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    processor = load_processor(base_model_path, revision=revision)
    return save_checkpoint(merged, processor, out_dir)
