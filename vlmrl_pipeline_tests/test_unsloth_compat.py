"""``core.model.unsloth_compat``: the vision-config names the pinned unsloth_zoo misreads under transformers 5,
(a fake module on any machine; the installed unsloth_zoo on a GPU machine with the ``gpu`` extra)."""

from __future__ import annotations

import doctest
import types

import pytest

from vlmrl_pipeline.core.model import unsloth_compat


def test_doctests():
    assert doctest.testmod(unsloth_compat).failed == 0


def _fake_zoo(known):
    fake = types.ModuleType("empty_model")
    fake.QWEN_VL_MERGED_QKV_TYPES = known
    fake.get_model_type = lambda config: config.vision_config.model_type
    return fake


def test_a_release_that_knows_the_name_is_left_alone():
    fake = _fake_zoo(("qwen2_5_vl", "qwen2_5_vl_vision", "qwen3_vl_vision"))
    original = fake.get_model_type
    assert unsloth_compat.alias_vision_model_types(fake) == []
    assert fake.get_model_type is original


def test_transformers_5_qwen25_vl_config_reads_as_the_name_unsloth_handles():
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    fake = _fake_zoo(("qwen2_5_vl", "qwen3_vl", "qwen3_vl_vision"))
    assert fake.get_model_type(Qwen2_5_VLConfig()) == "qwen2_5_vl_vision"  # what transformers 5 names it
    assert unsloth_compat.alias_vision_model_types(fake) == ["qwen2_5_vl_vision"]
    assert fake.get_model_type(Qwen2_5_VLConfig()) in fake.QWEN_VL_MERGED_QKV_TYPES
    assert fake.get_model_type(Qwen3VLConfig()) == "qwen3_vl_vision"


@pytest.mark.gpu
def test_the_installed_unsloth_zoo_treats_qwen25_vl_vision_as_merged_qkv():
    """On the GPU machine: after the mend, the pinned unsloth_zoo keeps Qwen2.5-VL's vision ``qkv`` fused and
    counts the tower's 32 blocks (the two things its missing name broke)."""
    pytest.importorskip("unsloth_zoo")
    from transformers import Qwen2_5_VLConfig
    from unsloth_zoo import empty_model

    unsloth_compat.patch_unsloth_for_fast_inference()
    config = Qwen2_5_VLConfig(vision_config={"depth": 32}, text_config={"num_hidden_layers": 28})
    assert empty_model.get_model_type(config) in empty_model.QWEN_VL_MERGED_QKV_TYPES
    counts = empty_model.get_model_layer_counts(config)
    assert isinstance(counts, dict) and counts["vision_layers"] == 32
