"""GPU path: Unsloth's FastVisionModel in 4-bit, from a few GSPO steps to the whole demo lineage (skipped without CUDA).

Run on a GPU machine with the `gpu` extra installed: ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.demo.synthetic import generate_synthetic_mathvista
from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.evaluation.records import evaluate_policy
from vlmrl_pipeline.core.export.merge import (
    inspect_lora_adapter,
    merge_adapter_4bit_unsloth,
    merge_adapter_to_checkpoint,
)
from vlmrl_pipeline.core.model.loading import apply_lora, load_model, load_policy
from vlmrl_pipeline.core.profiles import demo_gpu_profile
from vlmrl_pipeline.core.rewards import REWARD_FUNCTIONS, REWARD_WEIGHTS
from vlmrl_pipeline.core.samples import trl_dataset
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, paper_gspo_settings
from vlmrl_pipeline.core.training.trainer import train_gspo
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import TINY_IMAGE

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_unsloth():
    pytest.importorskip("unsloth")
    pytest.importorskip("bitsandbytes")


def _rows(tmp_path, n: int) -> pd.DataFrame:
    """Synthetic MathVista-format rows with their images written out, as the manifest holds them."""
    from vlmrl_pipeline.core.data.images import prepare_images

    raw = generate_synthetic_mathvista(num_rows=n, seed=1, image_size=TINY_IMAGE)
    rows, skipped = prepare_images(raw, tmp_path / "images", TINY_IMAGE)
    assert not skipped
    return rows


def test_unsloth_4bit_gspo_steps_then_batched_evaluation_then_merge(tiny_checkpoint, tmp_path):
    """The GPU path in core calls: 4-bit load, Unsloth LoRA, paper-preset GSPO with adamw_8bit, eval, merge."""
    rows = _rows(tmp_path, 12)
    model, processor, backend = load_model(tiny_checkpoint, backend="unsloth", load_in_4bit=True, max_seq_length=1024)
    assert backend == "unsloth"
    model = apply_lora(model, demo_gpu_profile().model.lora, backend)
    settings = paper_gspo_settings(GSPOSettings(
        learning_rate=1e-3, per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=2,
        max_completion_length=16, max_steps=4, logging_steps=1, max_grad_norm=1.0))
    assert settings.optim == "adamw_8bit"
    trained, result = train_gspo(model, processor, trl_dataset(rows), settings, tmp_path / "trainer",
                                 REWARD_FUNCTIONS, REWARD_WEIGHTS)
    assert result.global_step == 4
    trained.save_pretrained(tmp_path / "adapter")
    stats = inspect_lora_adapter(tmp_path / "adapter")
    assert stats["all_finite"] and stats["num_lora_b"] > 0

    policy, processor, _ = load_policy(tiny_checkpoint, backend="unsloth", load_in_4bit=True, max_seq_length=1024,
                                       adapter_dir=tmp_path / "adapter")
    records, _ = evaluate_policy(policy, processor, rows, GenerationSettings(max_new_tokens=16, batch_size=6))
    assert len(records) == len(rows) and set(records["pid"]) == set(rows["pid"])

    merged = merge_adapter_to_checkpoint(tiny_checkpoint, tmp_path / "adapter", tmp_path / "merged")
    reloaded, _, _ = load_model(str(merged), backend="transformers", dtype="float32")
    assert reloaded.config.model_type == "qwen3_vl"


def test_unsloth_merged_4bit_checkpoint_loads_and_generates(tiny_checkpoint, tmp_path):
    """Unsloth's merged 4-bit export: bitsandbytes 4-bit weights with the adapter merged in, loaded back by plain
    transformers; its greedy answers are compared with the unmerged 4-bit base + adapter's."""
    import torch
    from PIL import Image

    from vlmrl_pipeline.core.evaluation.generation import generate_completions
    from vlmrl_pipeline_tests.test_export import _save_adapter

    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    out = merge_adapter_4bit_unsloth(adapter, tmp_path / "merged-4bit", base_load_path=tiny_checkpoint,
                                     max_seq_length=1024)
    config = json.loads((out / "config.json").read_text())
    quant = config.get("quantization_config") or config.get("text_config", {}).get("quantization_config")
    assert quant and quant.get("load_in_4bit"), config.get("quantization_config")
    assert not (out / "adapter_config.json").exists()  # merged: no PEFT needed
    model, processor, _ = load_model(str(out), backend="transformers", dtype="bfloat16")
    assert any("4bit" in type(m).__name__.lower() for m in model.modules())
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Question {i}?"}]}]
               for i in range(4)]
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "white")]
    settings = GenerationSettings(max_new_tokens=8, batch_size=4)
    merged = generate_completions(model, processor, prompts, images, settings)
    unmerged, processor2, _ = load_policy(tiny_checkpoint, backend="unsloth", load_in_4bit=True, max_seq_length=1024,
                                          adapter_dir=adapter)
    reference = generate_completions(unmerged, processor2, prompts, images, settings)
    same = sum(a == b for a, b in zip(merged, reference))
    print(f"merged 4-bit vs 4-bit base + adapter: {same}/{len(prompts)} greedy answers identical")
    assert len(merged) == 4 and torch.cuda.is_available()


def test_whole_demo_lineage_on_the_gpu_demo_profile(tmp_path):
    """The README's main job on the GPU profile: Unsloth 4-bit + adamw_8bit GSPO, and format compliance rises."""
    profile = demo_gpu_profile()
    result = materialize([*all_assets, *all_checks], resources=resources_for_profile(profile, str(tmp_path)),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    [adapter] = result.asset_materializations_for_node("lora_adapter")
    assert adapter.metadata["backend"].value == "unsloth"
    assert adapter.metadata["global_step"].value == profile.gspo.max_steps
    log = json.loads((tmp_path / "lora_adapter" / "training_log.json").read_text())
    assert log["settings"]["optim"] == "adamw_8bit"
    after = json.loads((tmp_path / "after_records" / "after_records.json").read_text())
    assert after["backend"] == "unsloth" and len(after["records"]) == profile.data.eval_size
    [report] = result.asset_materializations_for_node("eval_diff_report")
    before_format = report.metadata["numbers"].value["headline"]["baseline_format_compliance"]
    after_format = report.metadata["after_format_compliance"].value
    print(f"GPU demo: format compliance {before_format:.2f} -> {after_format:.2f}")
    assert after_format > before_format
    assert (tmp_path / "merged_model" / "checkpoint" / "config.json").exists()
    [merged] = result.asset_materializations_for_node("merged_model")
    assert merged.metadata["merged_4bit"].value and (tmp_path / "merged_model" / "checkpoint-4bit").is_dir()
    print(f"merged 16-bit: {merged.metadata['size_bytes'].value} B, 4-bit: {merged.metadata['size_bytes_4bit'].value} B")
    [gguf] = result.asset_materializations_for_node("gguf_model")
    for gguf_type in profile.export.gguf_types:
        assert (tmp_path / "gguf_model" / gguf.metadata[f"{gguf_type}_file"].value).exists()
