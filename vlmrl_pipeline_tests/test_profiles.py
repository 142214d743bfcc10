"""Profiles: the offline demo is the default, the seeds' real setup is one setting away."""

import pytest

from vlmrl_pipeline.core.profiles import DEMO_MODEL_NAME, get_profile


def test_demo_profile_is_the_default(monkeypatch):
    monkeypatch.delenv("VLMRL_PROFILE", raising=False)
    profile = get_profile()
    assert profile.name == "demo"
    assert profile.model.model_name == DEMO_MODEL_NAME
    assert profile.data.source == "synthetic"
    assert profile.gspo.importance_sampling_level == "sequence"


def test_real_profile_is_one_setting_away(monkeypatch):
    monkeypatch.setenv("VLMRL_PROFILE", "qwen3vl-8b")
    profile = get_profile()
    assert profile.model.model_name == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    assert profile.model.load_in_4bit and profile.model.backend == "auto"
    assert (profile.data.source, profile.data.split) == ("AI4Math/MathVista", "testmini")
    assert (profile.data.image_size, profile.data.eval_size, profile.data.numeric_only) == (512, 100, True)
    assert (profile.model.lora.r, profile.model.lora.lora_alpha) == (16, 16)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")
