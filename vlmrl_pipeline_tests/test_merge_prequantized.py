"""The 16-bit merge from a base saved pre-quantized in bitsandbytes 4-bit, as Unsloth's ``...-bnb-4bit`` hub ids are.

Before the fix, ``merged_model`` loaded such a base (it stays 4-bit), merged, and then failed to cast it ("You cannot
cast a bitsandbytes model in a new `dtype`"): a whole training run lost at its last step. bitsandbytes quantizes,
saves and dequantizes 4-bit on a CPU, so a tiny Qwen3-VL saved that way reproduces it here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from dagster import DagsterInstance, materialize
from PIL import Image

from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions, next_token_logits
from vlmrl_pipeline.core.export.merge import (
    MERGE_LOGIT_TOLERANCE,
    bnb_quantization,
    checkpoint_has_4bit_layers,
    merge_adapter_to_checkpoint,
    merge_agreement,
)
from vlmrl_pipeline.core.model.loading import load_processor
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile
from vlmrl_pipeline_tests.test_export import _save_adapter

bnb = pytest.importorskip("bitsandbytes")

PROMPTS = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Question {i}?"}]}]
           for i in range(3)]
IMAGES = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]


@pytest.fixture(scope="module")
def prequantized(tiny_checkpoint, tmp_path_factory) -> str:
    """The tiny checkpoint saved as Unsloth's 4-bit hub checkpoints are: nf4 + double quantization, bf16
    compute, the vision tower and lm_head left in 16-bit, ``quantization_config`` in config.json."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    folder = tmp_path_factory.mktemp("prequantized") / "ckpt"
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=["model.visual", "lm_head"])))
    model.save_pretrained(folder)
    load_processor(tiny_checkpoint).save_pretrained(folder)
    assert checkpoint_has_4bit_layers(folder)
    return str(folder)


def _four_bit_base_plus_adapter(prequantized, adapter):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(prequantized)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    return PeftModel.from_pretrained(base, str(adapter))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merging_a_4bit_base_gives_a_16bit_checkpoint_that_computes_base_plus_adapter(prequantized, tiny_checkpoint,
                                                                                     tmp_path, dtype):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)  # LoRA A is initialised from the global generator: same adapter whatever ran before
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    merged_dir = merge_adapter_to_checkpoint(prequantized, adapter, tmp_path / "merged", dtype=dtype)
    config = json.loads((merged_dir / "config.json").read_text())
    assert bnb_quantization(config) is None and not checkpoint_has_4bit_layers(merged_dir)
    merged = AutoModelForImageTextToText.from_pretrained(str(merged_dir), dtype=getattr(torch, dtype))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert {p.dtype for p in merged.parameters()} == {getattr(torch, dtype)}

    processor = load_processor(prequantized)
    reference = _four_bit_base_plus_adapter(prequantized, adapter)
    check = merge_agreement(next_token_logits(reference, processor, PROMPTS, IMAGES),
                            next_token_logits(merged, processor, PROMPTS, IMAGES))
    # Not the argmax of each prompt: a random tiny model's top logits nearly tie, and the 4-bit reference computes
    # in bf16, so one can flip; the RMS difference over the whole vocabulary is the stable measure.
    assert check["within_tolerance"], check
    # Whole greedy continuations are not compared: the 4-bit reference computes in bf16, and a random tiny model's
    # near-tied logits flip a few tokens in; the first token and the logits above are the measure.
    assert all(generate_completions(merged, processor, PROMPTS, IMAGES, GenerationSettings(max_new_tokens=4)))
    # The check can fail: the 4-bit base without the adapter is a different model by its measure.
    plain = AutoModelForImageTextToText.from_pretrained(prequantized)
    assert not merge_agreement(next_token_logits(plain, processor, PROMPTS, IMAGES),
                               next_token_logits(merged, processor, PROMPTS, IMAGES))["within_tolerance"]


def test_merged_model_asset_merges_a_prequantized_base(prequantized, tiny_checkpoint, tmp_path):
    """Through Dagster, as a user runs it: ``model_name`` is the 4-bit folder; merged_model and its blocking check
    ``merged_matches_adapter`` succeed, and the checkpoint holds no 4-bit layer."""
    profile = tiny_profile()
    profile = dataclasses.replace(profile, model=dataclasses.replace(profile.model, model_name=prequantized))
    resources = resources_for_profile(profile, str(tmp_path / "data"))
    instance = DagsterInstance.ephemeral()
    assert materialize([*all_assets, *all_checks], selection=["mathvista_filtered", "resized_images", "base_model"],
                       resources=resources, instance=instance).success
    # The adapter a GSPO run on this base would leave (training itself is covered elsewhere).
    shutil.copytree(_save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True), tmp_path / "data" /
                    "lora_adapter")
    result = materialize([*all_assets, *all_checks], selection=["merged_model"], resources=resources,
                         instance=instance)
    assert result.success
    [checked] = [e for e in result.get_asset_check_evaluations() if e.check_name == "merged_matches_adapter"]
    assert checked.passed
    [event] = result.asset_materializations_for_node("merged_model")
    assert event.metadata["merge_relative_logit_diff"].value <= MERGE_LOGIT_TOLERANCE
    assert event.metadata["peak_host_peak_gb"].value > 0
    assert not checkpoint_has_4bit_layers(tmp_path / "data" / "merged_model" / "checkpoint")


def test_vllm_serving_copy_of_a_4bit_base_is_16bit_and_computes_the_4bit_base(prequantized, tmp_path):
    """vLLM serves 16-bit weights: a 4-bit base without an adapter is dequantized into a temporary copy that holds
    no 4-bit layer and computes what the 4-bit base computes (bitsandbytes dequantizes before every matmul)."""
    from transformers import AutoModelForImageTextToText

    from vlmrl_pipeline.core.evaluation.vllm_engine import needs_serving_copy, serving_checkpoint

    assert needs_serving_copy(prequantized, None)
    served = serving_checkpoint(prequantized, None, tmp_path, dtype="bfloat16")
    assert served != prequantized and not checkpoint_has_4bit_layers(served)
    assert bnb_quantization(json.loads((tmp_path / "vllm-checkpoint" / "config.json").read_text())) is None
    processor = load_processor(prequantized)
    copy = AutoModelForImageTextToText.from_pretrained(served, dtype=torch.bfloat16)
    base = AutoModelForImageTextToText.from_pretrained(prequantized)
    check = merge_agreement(next_token_logits(base, processor, PROMPTS, IMAGES),
                            next_token_logits(copy, processor, PROMPTS, IMAGES))
    assert check["within_tolerance"] and check["relative_logit_diff"] < 0.05, check
