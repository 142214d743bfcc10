"""GPU path: the whole lineage through Unsloth's FastVisionModel in 4-bit (skipped without CUDA).

Run on a GPU machine with the `gpu` extra installed: ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.modeling import TinyModelSpec
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

pytestmark = pytest.mark.gpu


def test_lineage_trains_gspo_through_unsloth_4bit(tmp_path):
    pytest.importorskip("unsloth")
    pytest.importorskip("bitsandbytes")
    base = tiny_profile()
    profile = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, backend="unsloth", load_in_4bit=True, dtype="auto",
                                  tiny_model=TinyModelSpec(image_size=64)),
        gspo=dataclasses.replace(base.gspo, optim="adamw_8bit", max_steps=4),
    )
    result = materialize([*all_assets, *all_checks], resources=resources_for_profile(profile, str(tmp_path)),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    [adapter] = result.asset_materializations_for_node("lora_adapter")
    assert adapter.metadata["backend"].value == "unsloth"
    assert adapter.metadata["global_step"].value == 4
    log = json.loads((tmp_path / "lora_adapter" / "training_log.json").read_text())
    assert log["settings"]["optim"] == "adamw_8bit"
    after = json.loads((tmp_path / "after_records" / "after_records.json").read_text())
    assert after["backend"] == "unsloth" and len(after["records"]) == profile.data.eval_size
    assert (tmp_path / "merged_model" / "checkpoint" / "config.json").exists()
