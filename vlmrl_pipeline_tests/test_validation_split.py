"""The validation split (``data_settings.validation_size``), the settings that use it (``eval_steps``,
``keep_checkpoint``), the choice of the kept adapter, and the validation curve."""

from __future__ import annotations

import dataclasses
import io
import json

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from PIL import Image

from vlmrl_pipeline.assets.data import FILTERED_NAME, mathvista_filtered, resized_images, train_eval_disjoint
from vlmrl_pipeline.core.data.filtering import DataError, split_train_eval, split_validation
from vlmrl_pipeline.core.data.images import prepare_images
from vlmrl_pipeline.core.evaluation.plots import training_curves_png
from vlmrl_pipeline.core.profiles import PROFILES
from vlmrl_pipeline.core.samples import MANIFEST_NAME, SPLIT_EVAL, SPLIT_TRAIN, SPLIT_VALIDATION
from vlmrl_pipeline.core.settings_check import settings_conflicts
from vlmrl_pipeline.core.settings_versions import settings_versions
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
from vlmrl_pipeline.core.training.validation import best_entry, drop_later_best, kept_checkpoint
from vlmrl_pipeline.resources import ArtifactStore, resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

DATA = [mathvista_filtered, resized_images, train_eval_disjoint]


def _materialize(tmp_path, **data):
    base = tiny_profile()
    profile = dataclasses.replace(base, data=dataclasses.replace(base.data, **data))
    root = tmp_path / "data"
    result = materialize(DATA, resources=resources_for_profile(profile, str(root)),
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    return result, root


def test_validation_size_0_writes_the_two_split_manifest_byte_for_byte_and_k_carves_from_training(tmp_path):
    result, root = _materialize(tmp_path / "zero")
    assert result.success
    written = (root / "resized_images" / MANIFEST_NAME).read_bytes()
    # The manifest as the two-split code builds it, from the same filtered table.
    settings = tiny_profile().data
    filtered = pd.read_parquet(root / "mathvista_filtered" / FILTERED_NAME)
    prepared, _ = prepare_images(filtered, tmp_path / "images", settings.image_size)
    train, held_out = split_train_eval(prepared, settings.eval_size, settings.seed)
    expected = pd.concat([train.assign(split=SPLIT_TRAIN), held_out.assign(split=SPLIT_EVAL)], ignore_index=True)
    expected["image_path"] = [f"images/{pid}.png" for pid in expected["pid"]]
    buffer = io.BytesIO()
    expected.to_parquet(buffer, index=False)
    assert written == buffer.getvalue()

    result, root_k = _materialize(tmp_path / "six", validation_size=6)
    assert result.success
    zero = pd.read_parquet(root / "resized_images" / MANIFEST_NAME)
    six = pd.read_parquet(root_k / "resized_images" / MANIFEST_NAME)
    split = lambda m, s: m[m["split"] == s].drop(columns="split").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(split(zero, SPLIT_EVAL), split(six, SPLIT_EVAL))  # held-out rows untouched
    assert len(split(six, SPLIT_VALIDATION)) == 6
    carved = set(split(six, SPLIT_TRAIN)["pid"]) | set(split(six, SPLIT_VALIDATION)["pid"])
    assert carved <= set(split(zero, SPLIT_TRAIN)["pid"])
    assert not set(split(six, SPLIT_TRAIN)["pid"]) & set(split(six, SPLIT_VALIDATION)["pid"])
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "train_eval_disjoint"]
    assert check.passed and check.metadata["num_validation"].value == 6


def test_the_disjointness_check_fails_when_validation_shares_a_row_with_eval_or_train(tmp_path):
    result, root = _materialize(tmp_path, validation_size=4)
    assert result.success
    manifest_file = root / "resized_images" / MANIFEST_NAME
    manifest = pd.read_parquet(manifest_file)
    store = ArtifactStore(root=str(root))
    assert train_eval_disjoint(artifacts=store).passed
    for other in (SPLIT_EVAL, SPLIT_TRAIN):
        broken = manifest.copy()
        # One validation row gets the pid of a row of the other split.
        first_validation = broken.index[broken["split"] == SPLIT_VALIDATION][0]
        broken.loc[first_validation, "pid"] = broken.loc[broken["split"] == other, "pid"].iloc[0]
        broken.to_parquet(manifest_file, index=False)
        check = train_eval_disjoint(artifacts=store)
        assert not check.passed
        assert check.metadata[f"shared_pids_{other}_{SPLIT_VALIDATION}"].value == 1


def test_split_validation_refuses_sizes_that_leave_no_training_row():
    rows = pd.DataFrame({"pid": [str(i) for i in range(5)], "image_sha256": [str(i) for i in range(5)]})
    same, empty = split_validation(rows, 0, 0)
    assert same is rows and empty.empty
    for bad in (5, 9, -1):
        with pytest.raises(DataError, match="validation_size must be between 0 and 4 for 5 training rows"):
            split_validation(rows, bad, 0)
    with pytest.raises(DataError, match="must be an integer"):
        split_validation(rows, 1.5, 0)


def test_impossible_validation_settings_are_refused_before_any_model_loads():
    data = tiny_profile().data
    with pytest.raises(ValueError, match="keep_checkpoint='best_validation'.*eval_steps=0"):
        GSPOSettings(keep_checkpoint="best_validation")
    with pytest.raises(ValueError, match="keep_checkpoint must be one of"):
        GSPOSettings(keep_checkpoint="best")
    with pytest.raises(ValueError, match="eval_steps must be >= 0"):
        GSPOSettings(eval_steps=-2)
    problems = settings_conflicts(data=data, gspo=GSPOSettings(eval_steps=5, keep_checkpoint="best_validation"))
    assert any("training_settings.eval_steps=5" in p and "validation_size=0" in p for p in problems)
    assert any("keep_checkpoint='best_validation' needs validation rows" in p for p in problems)
    assert any("data_settings.validation_size must be >= 0" in p
               for p in settings_conflicts(data=dataclasses.replace(data, validation_size=-1)))
    ok = dataclasses.replace(data, validation_size=10)
    assert settings_conflicts(data=ok, gspo=GSPOSettings(eval_steps=5, keep_checkpoint="best_validation")) == []


def test_the_seed_profiles_keep_their_versions_and_a_validation_size_changes_only_the_data_onwards():
    for name, make in PROFILES.items():
        profile = make()
        assert profile.data.validation_size == 0 and profile.gspo.eval_steps == 0, name
        assert profile.gspo.keep_checkpoint == "last" and profile.gspo.reward_funcs == (), name
    demo = PROFILES["demo"]()
    before = settings_versions(demo)
    after = settings_versions(dataclasses.replace(demo, data=dataclasses.replace(demo.data, validation_size=20)))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"resized_images"}  # the rest follows through Dagster's lineage
    trained = settings_versions(dataclasses.replace(demo, gspo=dataclasses.replace(demo.gspo, eval_steps=10)))
    assert {k for k in before if before[k] != trained[k]} == {"lora_adapter"}


def _entry(step, accuracy, answer_rate=0.5, fmt=0.5):
    return {"step": step, "validation/accuracy": accuracy, "validation/answer_rate": answer_rate,
            "validation/format_compliance": fmt, "validation/mean_total_reward": 1.0, "validation/num_samples": 10}


def test_the_best_step_is_the_highest_accuracy_then_answer_rate_and_earlier_wins_ties(tmp_path):
    history = [{"step": 1, "loss": 0.1}, _entry(2, 0.4), _entry(4, 0.6, 0.5), _entry(6, 0.6, 0.7), _entry(8, 0.6, 0.7)]
    assert best_entry(history)["step"] == 6
    for step in (2, 6):
        folder = tmp_path / "best_validation" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
    kept = kept_checkpoint("best_validation", history, 8, tmp_path)
    assert (kept["step"], kept["final_step"], kept["policy"]) == (6, 8, "best_validation")
    assert "step 6 had the highest validation accuracy (60.0% of 10 rows) of 4 evaluations" in kept["why"]
    last = kept_checkpoint("last", history, 8, tmp_path)
    assert (last["step"], last["best_validation_step"], last["validation"]["accuracy"]) == (8, 6, 0.6)
    with pytest.raises(RuntimeError, match="no validation evaluation"):
        kept_checkpoint("best_validation", history[:1], 8, tmp_path)
    # After a kill past step 6 with the last checkpoint at 4, the resumed run drops the best saved after it.
    assert [p.name for p in drop_later_best(tmp_path, 4)] == ["step-6"]
    assert (tmp_path / "best_validation" / "step-2").is_dir()
    with pytest.raises(RuntimeError, match="step 6's adapter is missing"):
        kept_checkpoint("best_validation", history, 8, tmp_path)


def test_the_training_curves_show_the_validation_curve():
    history = [{"step": s, "reward": 0.1 * s, "completions/mean_length": 10.0} for s in range(1, 7)]
    plain = Image.open(io.BytesIO(training_curves_png(history)))
    with_validation = Image.open(io.BytesIO(training_curves_png(history + [_entry(3, 0.2), _entry(6, 0.5)])))
    # One more panel (the validation one): the image is wider by about a panel.
    assert with_validation.width > plain.width * 1.3
    assert json.dumps(_entry(3, 0.2))  # JSON-safe, as the training log stores it
