"""The base-model reference that every stage after base_model loads from."""

from __future__ import annotations

import pytest

from vlmrl_pipeline.core.lineage import model_load_path, read_model_ref, write_model_ref


def test_a_built_checkpoint_is_found_relative_to_the_asset_folder(tmp_path):
    write_model_ref(tmp_path, model_name="demo:tiny-qwen3-vl", revision=None, is_demo=True, checkpoint_dir="checkpoint")
    ref = read_model_ref(tmp_path)
    assert ref["is_demo"] and model_load_path(ref, tmp_path) == str(tmp_path / "checkpoint")


def test_a_hub_model_is_loaded_by_id_and_revision(tmp_path):
    write_model_ref(tmp_path, model_name="unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit", revision="0123abc",
                    is_demo=False, checkpoint_dir=None)
    ref = read_model_ref(tmp_path)
    assert model_load_path(ref, tmp_path) == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    assert ref["revision"] == "0123abc"


def test_a_missing_reference_says_which_asset_to_materialize(tmp_path):
    with pytest.raises(FileNotFoundError, match="base_model"):
        read_model_ref(tmp_path)
