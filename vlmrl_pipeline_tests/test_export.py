"""Adapter inspection and the merged checkpoint."""

from __future__ import annotations

import torch
from PIL import Image

from vlmrl_pipeline.core.export import inspect_lora_adapter, merge_adapter_to_checkpoint, sha256_dir
from vlmrl_pipeline.core.generation import GenerationSettings, generate_completions
from vlmrl_pipeline.core.modeling import LoraSettings, apply_lora, load_model, load_policy


def _save_adapter(checkpoint, folder, trained: bool):
    model, _, _ = load_model(checkpoint, backend="transformers", dtype="float32")
    peft_model = apply_lora(model, LoraSettings(r=4, lora_alpha=8), "transformers")
    if trained:  # stand-in for training: give every B matrix a value, as optimisation would
        torch.manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def test_untrained_adapter_has_all_zero_b_matrices(tiny_checkpoint, tmp_path):
    stats = inspect_lora_adapter(_save_adapter(tiny_checkpoint, tmp_path / "a", trained=False))
    assert stats["num_lora_b"] > 0 and stats["num_lora_b_nonzero"] == 0 and stats["all_finite"]
    trained = inspect_lora_adapter(_save_adapter(tiny_checkpoint, tmp_path / "b", trained=True))
    assert trained["num_lora_b_nonzero"] == trained["num_lora_b"]
    assert trained["sha256"] != stats["sha256"]


def test_merged_checkpoint_generates_like_base_plus_adapter(tiny_checkpoint, tmp_path):
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    merged_dir = merge_adapter_to_checkpoint(tiny_checkpoint, adapter, tmp_path / "merged", dtype="float32")
    assert not (merged_dir / "adapter_config.json").exists()  # standalone: plain transformers loads it
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Question {i}?"}]}]
               for i in range(3)]
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    settings = GenerationSettings(max_new_tokens=10, batch_size=3)
    with_adapter, processor, _ = load_policy(tiny_checkpoint, backend="transformers", dtype="float32",
                                             adapter_dir=adapter)
    merged, merged_processor, _ = load_model(str(merged_dir), backend="transformers", dtype="float32")
    base, _, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    expected = generate_completions(with_adapter, processor, prompts, images, settings)
    assert generate_completions(merged, merged_processor, prompts, images, settings) == expected
    # and the adapter matters: the base model alone generates something else
    assert generate_completions(base, processor, prompts, images, settings) != expected


def test_bf16_merge_writes_half_size_weights(tiny_checkpoint, tmp_path):
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    merged = merge_adapter_to_checkpoint(tiny_checkpoint, adapter, tmp_path / "bf16", dtype="bfloat16")
    model, _, _ = load_model(str(merged), backend="transformers", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    first = sha256_dir(merged)
    merge_adapter_to_checkpoint(tiny_checkpoint, adapter, tmp_path / "bf16", dtype="bfloat16")
    assert sha256_dir(merged) == first  # re-export replaces the folder with identical content
