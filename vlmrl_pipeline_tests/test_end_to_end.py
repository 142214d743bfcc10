"""End to end: the whole lineage materialized through Dagster, on the tiny profile and on the demo profile."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from vlmrl_pipeline.core.environment import environment_fingerprint
from vlmrl_pipeline.core.evaluation.records import p_value_text
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.model.loading import load_model
from vlmrl_pipeline.core.profiles import demo_profile
from vlmrl_pipeline.core.prompts import BOXED_SYSTEM_PROMPT
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

ASSETS = ["mathvista_filtered", "resized_images", "base_model", "baseline_completions", "baseline_records",
          "lora_adapter", "after_completions", "after_records", "eval_diff_report", "merged_model", "gguf_model",
          "merged_records", "gguf_records"]
CHECKS = {"filtered_rows_valid", "train_eval_disjoint", "few_rows_lost", "lora_weights_trained",
          "baseline_records_complete", "after_records_complete", "merged_matches_adapter", "gguf_files_intact",
          "merged_accuracy_kept", "gguf_accuracy_kept"}
HEADLINE = ["baseline_accuracy", "after_accuracy", "baseline_accuracy_mathvista", "after_accuracy_mathvista",
            "baseline_format_compliance", "after_format_compliance"]


def _materialize(profile, data_dir: Path):
    instance = DagsterInstance.ephemeral()
    result = materialize([*all_assets, *all_checks], resources=resources_for_profile(profile, str(data_dir)),
                         instance=instance)
    assert result.success
    return result, instance


def _metadata(result, name):
    [event] = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in event.metadata.items()}


def test_whole_lineage_on_the_tiny_profile(tmp_path):
    profile = tiny_profile()
    result, instance = _materialize(profile, tmp_path / "data")
    for name in ASSETS:
        assert instance.get_latest_materialization_event(AssetKey(name)) is not None, name
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == CHECKS and all(c.passed for c in checks.values())
    assert checks["few_rows_lost"].metadata["rows_lost"].value == 0

    data = tmp_path / "data"
    manifest = pd.read_parquet(data / "resized_images" / "manifest.parquet")
    held_out = set(manifest.loc[manifest["split"] == "eval", "pid"])
    assert len(held_out) == profile.data.eval_size
    train_pids = set(manifest.loc[manifest["split"] == "train", "pid"])
    assert not held_out & train_pids
    # the demo model's warm start and GSPO both saw exactly the training split
    assert _metadata(result, "base_model")["warm_start_rows"] == len(train_pids)
    assert _metadata(result, "lora_adapter")["train_rows"] == len(train_pids)

    for stage in ("baseline_records", "after_records"):
        payload = json.loads((data / stage / f"{stage}.json").read_text())
        assert {r["pid"] for r in payload["records"]} == held_out  # one record per held-out sample, nothing else
        assert {"pid", "question", "answer", "completion", "pred", "correct", "correct_numeric", "correct_mathvista",
                "format_ok", "total_reward"} <= set(payload["records"][0])
        assert payload["dropped_context_overflow"] == [] and payload["answer_format"] == "tags"
        assert payload["reward_version"] and payload["dataset_sha256"]
    after = json.loads((data / "after_records" / "after_records.json").read_text())
    adapter_meta = _metadata(result, "lora_adapter")
    assert after["adapter_sha256"] == adapter_meta["adapter_sha256"]
    assert adapter_meta["global_step"] == profile.gspo.max_steps

    # The training metrics also as TensorBoard events (report_to's default), kept with the adapter.
    events = list((data / "lora_adapter" / "tensorboard").glob("*/events.out.tfevents.*"))
    assert events and adapter_meta["tensorboard_logdir"] == str(data / "lora_adapter" / "tensorboard")
    assert (data / "lora_adapter" / "adapter_model.safetensors").exists()
    assert (data / "lora_adapter" / "adapter_config.json").exists()
    model, _, _ = load_model(str(data / "merged_model" / "checkpoint"), backend="transformers", dtype="float32")
    assert model.config.model_type == "qwen3_vl"
    # the GGUF export: one language-model file per type plus the vision projector, read back and recorded
    gguf = _metadata(result, "gguf_model")
    assert gguf["architecture"] == "qwen3vl" and gguf["tokenizer_pre"] == "gpt-2"
    for gguf_type in profile.export.gguf_types:
        path = data / "gguf_model" / gguf[f"{gguf_type}_file"]
        assert path.stat().st_size == gguf[f"{gguf_type}_size_bytes"]
        assert sha256_file(path) == gguf[f"{gguf_type}_sha256"]
    assert (data / "gguf_model" / gguf["mmproj_file"]).stat().st_size == gguf["mmproj_size_bytes"]
    assert gguf["adapter_sha256"] == adapter_meta["adapter_sha256"]

    report = _metadata(result, "eval_diff_report")
    numbers = report["numbers"]
    for key in HEADLINE:
        assert isinstance(numbers["headline"][key], float) and 0.0 <= numbers["headline"][key] <= 1.0
    saved = json.loads((data / "eval_diff_report" / "report.json").read_text())
    assert saved["headline"]["after_format_compliance"] == pytest.approx(report["after_format_compliance"])
    for key in ("accuracy", "accuracy_numeric", "accuracy_mathvista", "format_compliance"):
        c = saved["comparison"][key]
        assert c["ci_low"] <= c["difference"] <= c["ci_high"] and 0.0 <= c["p_value"] <= 1.0
        assert numbers["comparison"][key]["ci_low"] == c["ci_low"] and numbers["comparison"][key]["p_value"] == \
            c["p_value"]
        assert f"McNemar p = {p_value_text(c['p_value'])}" in report[f"{key}_change"], key
    # What the UI plots (every float, alphabetically): the headline only, not ~30 numbers.
    plotted = {k for k, v in report.items() if isinstance(v, (float, int)) and not isinstance(v, bool)}
    assert plotted == {"baseline_accuracy", "after_accuracy", "accuracy_lift", "after_format_compliance",
                       "shipped_merged_accuracy", *(f"shipped_gguf_{t}_accuracy" for t in profile.export.gguf_types)}
    assert report["accuracy_lift"] == pytest.approx(saved["comparison"]["accuracy"]["difference"], abs=1e-4)
    # The images the asset page shows inline: short Markdown (the UI expands values under 1,000 characters) that
    # links files the report server serves from the report's folder.
    for name, file in (("before_after", "before_after.png"), ("training_curves", "training_curves.png")):
        assert len(report[name]) < 1000 and f"(http://127.0.0.1:8765/reports/{file})" in report[name], name
        assert (data / "eval_diff_report" / file).stat().st_size > 1000
    assert (data / "eval_diff_report" / "training_curves.png").read_bytes() == \
        (data / "lora_adapter" / "training_curves.png").read_bytes()
    assert "McNemar" in (data / "eval_diff_report" / "report.md").read_text()
    # The UI's link goes to the playground server (an http page's file:// links do not open); the file is beside.
    assert report["report_page"] == "http://127.0.0.1:8765/reports/report.html"
    assert report["report_file"] == str(data / "eval_diff_report" / "report.html")
    # no staging folder survives a successful run; what stays is each asset's lock file, released (empty), and
    # the cache of the base model's file hashes (the checkpoint key)
    hidden = [p for p in data.iterdir() if p.name.startswith(".")]
    locks = [p for p in hidden if p.is_file() and p.name.endswith(".lock")]
    assert {p.name for p in hidden} - {p.name for p in locks} == {".cache"}
    assert {p.name for p in locks} >= {".lora_adapter.lock", ".base_model.lock", ".eval_diff_report.lock"}
    assert all(p.read_text() == "" for p in locks)

    # Every materialization records the environment; tables carry Dagster's row count and column schema.
    fingerprint = environment_fingerprint()
    for name in ASSETS:
        meta = _metadata(result, name)
        assert meta["environment"] == fingerprint and len(meta["environment_id"]) == 12, name
    filtered = pd.read_parquet(data / "mathvista_filtered" / "filtered.parquet")
    assert _metadata(result, "mathvista_filtered")["dagster/row_count"] == len(filtered)
    assert _metadata(result, "resized_images")["dagster/row_count"] == len(manifest)
    assert _metadata(result, "after_records")["dagster/row_count"] == len(held_out)
    schema = _metadata(result, "baseline_records")["dagster/column_schema"]
    assert {"pid", "pred", "correct", "format_ok"} <= {c.name for c in schema.columns}
    assert report["evaluation_environments"] == "the same"
    assert "Both evaluations ran in one environment" in (data / "eval_diff_report" / "report.md").read_text()

    # The report names an environment change between the two evaluations (here the baseline's record, edited).
    path = data / "baseline_records" / "baseline_records.json"
    payload = json.loads(path.read_text())
    payload["environment"] = {**fingerprint, "torch": "0.0-elsewhere"}
    path.write_text(json.dumps(payload))
    # As if that record had been made on another machine: a new record, so the reading step's integrity check
    # (core.integrity) takes the edit as the asset's own content, not as damage.
    from vlmrl_pipeline.core.integrity import record_files

    record_files(path.parent)
    again = materialize([*all_assets, *all_checks], selection=["eval_diff_report"],
                        resources=resources_for_profile(profile, str(data)), instance=instance)
    assert again.success
    changed = f"torch: 0.0-elsewhere -> {fingerprint['torch']}"
    assert _metadata(again, "eval_diff_report")["evaluation_environments"] == changed
    assert "ran in different environments" in (data / "eval_diff_report" / "report.md").read_text()
    assert 'id="environment-warning"' in (data / "eval_diff_report" / "report.html").read_text()


@pytest.mark.heavy
def test_demo_profile_lifts_held_out_accuracy(tmp_path):
    """The README's main job, in-process: GSPO lifts accuracy on the 100 held-out samples by at least 10 points
    under the strict metric and MathVista's, each with its paired interval above 0 and McNemar p < 0.01, without
    losing format compliance or answers, and without a collapse."""
    result, _ = _materialize(demo_profile(), tmp_path / "data")
    numbers = _metadata(result, "eval_diff_report")["numbers"]
    headline = numbers["headline"]
    for key in ("accuracy", "accuracy_mathvista"):
        assert headline[f"after_{key}"] - headline[f"baseline_{key}"] >= 0.10, key
        assert numbers["comparison"][key]["ci_low"] > 0 and numbers["comparison"][key]["p_value"] < 0.01, key
    assert headline["after_format_compliance"] >= headline["baseline_format_compliance"]
    assert headline["after_answer_rate"] >= headline["baseline_answer_rate"]
    saved = json.loads((tmp_path / "data" / "eval_diff_report" / "report.json").read_text())
    assert saved["collapse"]["after"] == []


def test_whole_lineage_on_geo3k_in_rlinf_form_with_the_boxed_reward(tmp_path):
    from vlmrl_pipeline_tests.test_assets_data import write_geo3k_copy

    base = tiny_profile()
    # One answer for all rows, so the tiny model learns to box it and rewards vary within groups.
    source = write_geo3k_copy(tmp_path / "geo3k", rows=20, constant_answer="3")
    profile = dataclasses.replace(base, data=dataclasses.replace(
        base.data, source=str(source), split="train", dataset_format="rlinf", prompt_key="question_text",
        answer_key="solution", image_keys=("figures",), numeric_only=False, answer_format="boxed",
        system_prompt=BOXED_SYSTEM_PROMPT, eval_size=4, max_lost_fraction=0.1))
    result, _ = _materialize(profile, tmp_path / "data")
    data = tmp_path / "data"
    log = json.loads((data / "lora_adapter" / "training_log.json").read_text())
    assert log["reward_functions"] == ["boxed_reward"] and log["reward_weights"] == [1.0]
    assert any("rewards/boxed_reward/mean" in entry for entry in log["log_history"])
    records = json.loads((data / "after_records" / "after_records.json").read_text())
    assert records["answer_format"] == "boxed" and len(records["records"]) == 4
    for record in records["records"]:
        assert record["format_reward"] == 0.0 and record["total_reward"] in (0.0, 1.0)
    assert _metadata(result, "resized_images")["skipped_image_count"] == 1
