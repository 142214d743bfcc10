"""The shipped artifacts evaluated as assets of the lineage: the report sets the adapter, the merged checkpoint and
each GGUF side by side, every record names the bytes it measured, and a corrupted artifact fails its blocking
check (naming it and the samples it lost) and stops the report."""

from __future__ import annotations

import dataclasses
import json

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.export.gguf import llama_cpp_runtime_available
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.llama_cpp import LLAMA_CPP_PYTHON_VERSION
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not llama_cpp_runtime_available(), reason="needs the llama.cpp runtime")]


def reading_profile():
    """The tiny profile warm-started long enough to read about half of the demo's images right: an artifact can
    only be seen losing accuracy if the adapter has some (measured: 8 of 16 before GSPO)."""
    base = tiny_profile()
    return dataclasses.replace(
        base, data=dataclasses.replace(base.data, synthetic_rows=64, eval_size=16, synthetic_tasks="readable"),
        warm_start=WarmStartSettings(steps=400, batch_size=8, learning_rate=6e-3, formatted_rate_high=1.0,
                                     formatted_rate_low=1.0),
        generation=GenerationSettings(max_new_tokens=24, batch_size=8))


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    profile = reading_profile()
    data = tmp_path_factory.mktemp("shipped") / "data"
    instance = DagsterInstance.ephemeral()
    result = materialize([*all_assets, *all_checks], resources=resources_for_profile(profile, str(data)),
                         instance=instance)
    assert result.success
    return profile, data, instance, result


def _metadata(result, name):
    [event] = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in event.metadata.items()}


def test_the_report_sets_every_shipped_artifact_beside_the_adapter(lineage):
    profile, data, instance, result = lineage
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["merged_accuracy_kept"] and checks["gguf_accuracy_kept"]
    report = _metadata(result, "eval_diff_report")
    shipped = report["numbers"]["shipped"]  # every shipped number, exact; the UI plots each artifact's accuracy
    names = ["adapter", "merged"] + [f"gguf_{t}" for t in profile.export.gguf_types]
    for name in names:
        for metric in ("accuracy", "accuracy_mathvista", "format_compliance", "answer_rate"):
            assert isinstance(shipped[f"shipped_{name}_{metric}"], float), (name, metric)
        if name != "adapter":
            assert shipped[f"shipped_{name}_accuracy_ci_low"] <= shipped[f"shipped_{name}_accuracy_difference"] <= \
                shipped[f"shipped_{name}_accuracy_ci_high"]
            assert report[f"shipped_{name}_accuracy"] == shipped[f"shipped_{name}_accuracy"]
    assert shipped["shipped_adapter_accuracy"] >= 0.25  # the premise of the corruption tests below
    text = (data / "eval_diff_report" / "report.md").read_text()
    assert "## What you ship" in text and "| adapter (reference) |" in text
    for name in ("merged", *(f"gguf-{t}" for t in profile.export.gguf_types)):
        assert f"| {name} |" in text
    page = (data / "eval_diff_report" / "report.html").read_text()
    assert '<section id="shipped">' in page and 'data-artifact="gguf-q8_0"' in page

    # every record names the bytes and the runtime that answered it
    gguf = json.loads((data / "gguf_model" / "gguf.json").read_text())
    for export in gguf["exports"]:
        payload = json.loads((data / "gguf_records" / f"gguf_records_{export['gguf_type']}.json").read_text())
        assert {r["artifact_sha256"] for r in payload["records"]} == {export["model"]["sha256"]}
        assert {r["mmproj_sha256"] for r in payload["records"]} == {export["mmproj"]["sha256"]}
        assert {r["runtime"] for r in payload["records"]} == {f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"}
        assert len(payload["records"]) == profile.data.eval_size
    merged = json.loads((data / "merged_records" / "merged_records.json").read_text())
    merged_meta = _metadata(result, "merged_model")
    assert {r["artifact_sha256"] for r in merged["records"]} == {merged_meta["weights_sha256"]}
    # the export assets' data versions are their bytes' hashes: what the shipped evaluations' staleness follows
    event = instance.get_latest_materialization_event(AssetKey("merged_model")).asset_materialization
    assert event.tags["dagster/data_version"] == merged_meta["weights_sha256"]

    # the GGUFs saw the evaluation's prompts token for token, and agree with the merged checkpoint
    summary = json.loads((data / "gguf_records" / "gguf_records.json").read_text())
    for entry in summary["types"].values():
        assert entry["prompt_tokens_identical"] == entry["image_tokens_identical"] == profile.data.eval_size
        assert entry["vs_merged"]["argmax_agree"] >= entry["vs_merged"]["samples"] - 1
        assert entry["weight_buffers"] and "AMX" not in entry["weight_buffers"]


def _zero_tensor(path, name):
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r+")
    [tensor] = [t for t in reader.tensors if t.name == name]
    tensor.data[...] = 0
    reader.data.flush()


def test_a_corrupted_gguf_fails_its_check_naming_it_and_the_report_is_blocked(lineage):
    profile, data, instance, _ = lineage
    # A broken export, as a faulty converter would write it: the file is what gguf.json records (so
    # gguf_files_intact cannot tell), but its final norm is zero, so every logit is 0 and no answer comes out.
    target = data / "gguf_model" / "model-f16.gguf"
    _zero_tensor(target, "output_norm.weight")
    summary_file = data / "gguf_model" / "gguf.json"
    summary = json.loads(summary_file.read_text())
    for export in summary["exports"]:
        if export["gguf_type"] == "f16":
            export["model"]["sha256"] = sha256_file(target)
    summary_file.write_text(json.dumps(summary))
    result = materialize([*all_assets, *all_checks], selection=["gguf_records", "eval_diff_report"],
                         resources=resources_for_profile(profile, str(data)), instance=instance,
                         raise_on_error=False)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "gguf_accuracy_kept"]
    assert not check.passed
    problems = check.metadata["problems"].value
    assert "gguf-f16: accuracy (strict)" in problems and "gguf-q8_0" not in problems
    lost = check.metadata["gguf-f16_lost_pids"].value
    assert lost and f"lost on {len(lost)} samples: {', '.join(lost[:3])}" in problems
    # blocking: the report downstream of it was not written in this run
    assert not result.asset_materializations_for_node("eval_diff_report")


def test_a_corrupted_merged_checkpoint_fails_merged_accuracy_kept(lineage):
    from safetensors.torch import load_file, save_file

    profile, data, instance, _ = lineage
    [shard] = list((data / "merged_model" / "checkpoint").glob("*.safetensors"))
    weights = load_file(str(shard))
    [norm] = [k for k in weights if k.endswith("language_model.norm.weight")]
    weights[norm].zero_()
    save_file(weights, str(shard), metadata={"format": "pt"})
    result = materialize([*all_assets, *all_checks], selection=["merged_records"],
                         resources=resources_for_profile(profile, str(data)), instance=instance,
                         raise_on_error=False)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "merged_accuracy_kept"]
    assert not check.passed and "merged: accuracy (strict)" in check.metadata["problems"].value
