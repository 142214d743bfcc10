"""What only the export could find out after training is found before it: converter support, disk, host memory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.export.merge import count_parameters
from vlmrl_pipeline.core.export.preflight import converter_architectures, export_problems, export_requirements
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools
from vlmrl_pipeline.core.memory import peak_memory
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile


@pytest.fixture(scope="module")
def converter():
    return llama_cpp_tools().converter


def test_converter_registrations_are_read_from_its_sources(converter):
    known = converter_architectures(converter)
    for architecture in ("Qwen3VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                         "Gemma3ForConditionalGeneration"):
        assert known[architecture] == {"text", "mmproj"}, architecture
    assert known["Qwen2ForCausalLM"] == {"text"}  # a text-only model has no projector class
    assert "NotAModelForConditionalGeneration" not in known


def test_parameters_are_counted_without_weights(tiny_checkpoint):
    from transformers import AutoModelForImageTextToText

    config = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())


def test_each_problem_names_what_to_change(tiny_checkpoint, converter, tmp_path):
    config = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    eight_b = 8_770_000_000
    settings = ExportSettings()
    roomy = dict(free_disk_bytes=10**12, host_memory_bytes=64 * 10**9)
    assert export_problems(config, settings, tmp_path, converter, eight_b, **roomy) == []
    [reader] = export_problems(config, settings, tmp_path, converter, eight_b, **roomy, gguf_reader_installed=False)
    assert "gguf package" in reader and "gguf==0.19.0" in reader
    need = export_requirements(config, settings, eight_b)
    assert 30e9 < need["disk_bytes"] < 60e9  # merged bf16 + f16 + q8_0 GGUF of an 8B model

    [disk] = export_problems(config, settings, tmp_path, converter, eight_b, free_disk_bytes=20 * 10**9,
                             host_memory_bytes=64 * 10**9)
    assert "GB free" in disk and "gguf_types" in disk
    # A float32 merge of 8B on a 32 GB workstation: refused, naming merged_dtype; bf16 fits; a GPU with room too.
    f32 = ExportSettings(merged_dtype="float32")
    [memory] = export_problems(config, f32, tmp_path, converter, eight_b, free_disk_bytes=10**12,
                               host_memory_bytes=32 * 10**9)
    assert "merged_dtype" in memory
    assert export_problems(config, settings, tmp_path, converter, eight_b, free_disk_bytes=10**12,
                           host_memory_bytes=32 * 10**9) == []
    assert export_problems(config, f32, tmp_path, converter, eight_b, free_disk_bytes=10**12,
                           host_memory_bytes=32 * 10**9, gpu_free_bytes=80 * 10**9) == []
    unknown = dict(config, architectures=["MadeUpForConditionalGeneration"])
    problems = export_problems(unknown, settings, tmp_path, converter, eight_b, **roomy)
    assert any("no language-model conversion" in p for p in problems)


def test_peak_memory_sees_a_short_allocation():
    with peak_memory(interval_s=0.01) as usage:
        block = np.ones(300_000_000 // 8)  # 300 MB, touched
        block += 1
        del block
    assert usage["host_peak_gb"] - usage["host_start_gb"] > 0.2
    assert usage["seconds"] >= 0


@pytest.mark.slow
def test_training_refuses_an_export_that_cannot_run_before_it_starts(tmp_path):
    """merged_4bit needs Unsloth and CUDA: on this machine lora_adapter fails at once, naming the setting, and no
    training process is launched (no checkpoint folder appears)."""
    profile = tiny_profile()
    profile = dataclasses.replace(profile, export=dataclasses.replace(profile.export, merged_4bit=True))
    result = materialize([*all_assets, *all_checks], selection=["mathvista_filtered", "resized_images", "base_model",
                                                                "lora_adapter"],
                         resources=resources_for_profile(profile, str(tmp_path)), instance=DagsterInstance.ephemeral(),
                         raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "lora_adapter"
    message = failure.event_specific_data.error.to_string()
    assert "merged_4bit" in message and "training was not started" in message
    assert not (tmp_path / "lora_adapter_checkpoints").exists() or not any(
        (tmp_path / "lora_adapter_checkpoints").rglob("checkpoint-*"))
