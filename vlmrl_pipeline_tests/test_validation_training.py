"""Evaluation during real GSPO training on the validation rows, the kept adapter, resume, the held-out rows'
independence, and a reward plugged in from outside the package (real TRL training of the tiny demo model)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from PIL import Image

from vlmrl_pipeline.assets.model import base_model_path
from vlmrl_pipeline.core.samples import MANIFEST_NAME, SPLIT_EVAL
from vlmrl_pipeline.core.training.job import TRAINING_LOG, TrainingJob, run_training_job
from vlmrl_pipeline.core.training.validation import BEST_DIR, best_entry, validation_entries
from vlmrl_pipeline.definitions import all_assets
from vlmrl_pipeline.resources import ArtifactStore, resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

UPSTREAM = ("mathvista_filtered", "resized_images", "base_model")
VALIDATION_ROWS = 8


def _assets(*names):
    return [a for a in all_assets if a.key.to_user_string() in names]


def _profile(**gspo):
    base = tiny_profile()
    return dataclasses.replace(
        base, data=dataclasses.replace(base.data, validation_size=VALIDATION_ROWS),
        gspo=dataclasses.replace(base.gspo, **{"max_steps": 4, "save_steps": 2, "max_completion_length": 16,
                                               "eval_steps": 2, "keep_checkpoint": "best_validation", **gspo}))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """Data with a validation split and the warm-started demo base model, materialized once for this module."""
    data = tmp_path_factory.mktemp("upstream") / "data"
    result = materialize(_assets(*UPSTREAM), resources=resources_for_profile(_profile(), str(data)),
                         instance=DagsterInstance.ephemeral())
    assert result.success
    return data


REWARD_MODULE = textwrap.dedent('''
    import json
    import os

    CALLS = os.environ["USER_REWARD_CALLS"]


    def short_answer_reward(prompts, completions, answer, **kwargs):
        """1.0 for a completion under 40 characters; records each call (process id, batch size)."""
        with open(CALLS, "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "n": len(completions)}) + "\\n")
        return [1.0 if len(c[0]["content"]) < 40 else 0.0 for c in completions]
''')


def test_a_plugged_in_reward_and_validation_during_training_through_dagster(upstream, tmp_path, monkeypatch):
    module = f"plugged_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "rewards"
    folder.mkdir()
    (folder / f"{module}.py").write_text(REWARD_MODULE)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("USER_REWARD_CALLS", str(calls))
    monkeypatch.syspath_prepend(str(folder))  # only the step's sys.path: the training process gets it from there
    importlib.invalidate_caches()
    data = tmp_path / "data"
    shutil.copytree(upstream, data)
    profile = _profile(reward_funcs=("vlmrl_pipeline.core.rewards:formatting_reward",
                                     "vlmrl_pipeline.core.rewards:correctness_reward",
                                     f"{module}:short_answer_reward"), reward_weights=(0.3, 1.0, 0.5))
    instance = DagsterInstance.ephemeral()
    try:
        result = materialize(_assets("lora_adapter"), resources=resources_for_profile(profile, str(data)),
                             instance=instance, raise_on_error=False)
    finally:
        sys.modules.pop(module, None)
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success, messages[-20:]
    [event] = result.asset_materializations_for_node("lora_adapter")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["reward_functions"] == "formatting_reward, correctness_reward, short_answer_reward"
    assert meta["reward_weights"] == [0.3, 1.0, 0.5]
    assert f"{module}:short_answer_reward" in meta["reward_paths"]
    # Called by the training process (another pid than this test's, which only tried it on one sample).
    lines = [json.loads(line) for line in calls.read_text().splitlines()]
    trainer_calls = [c for c in lines if c["pid"] != os.getpid()]
    assert len(trainer_calls) >= profile.gspo.max_steps and all(c["n"] == 8 for c in trainer_calls)
    log = json.loads((data / "lora_adapter" / TRAINING_LOG).read_text())
    assert any("rewards/short_answer_reward/mean" in h for h in log["log_history"])
    # Validation at steps 2 and 4 on the validation rows, in the log history and the run log.
    entries = validation_entries(log["log_history"])
    assert [e["step"] for e in entries] == [2, 4]
    assert all(e["validation/num_samples"] == VALIDATION_ROWS for e in entries)
    assert any("validation at step 2/4 on 8 rows: accuracy=" in m for m in messages)
    assert log["validation"]["rows"] == VALIDATION_ROWS
    eval_pids = set(pd.read_parquet(data / "resized_images" / MANIFEST_NAME).query("split == @SPLIT_EVAL")["pid"])
    assert not set(log["validation"]["pids"]) & eval_pids
    best = best_entry(log["log_history"])
    assert (meta["kept_checkpoint"], meta["kept_checkpoint_step"]) == ("best_validation", best["step"])
    assert f"step {best['step']} had the highest validation accuracy" in meta["kept_checkpoint_why"]
    assert meta["kept_validation"]["accuracy"] == best["validation/accuracy"]
    # The curves image carries the validation panel: wider than the same history's without validation entries.
    import base64
    import io

    from vlmrl_pipeline.core.evaluation.plots import training_curves_png

    png = base64.b64decode(meta["training_curves"].split("base64,", 1)[1].rstrip(")"))
    assert png == (data / "lora_adapter" / "training_curves.png").read_bytes()
    without = training_curves_png([h for h in log["log_history"] if h not in entries])
    assert Image.open(io.BytesIO(png)).width > Image.open(io.BytesIO(without)).width


def _job(upstream: Path, manifest_dir: Path, out: Path, profile) -> TrainingJob:
    load_path, ref = base_model_path(ArtifactStore(root=str(upstream)))
    style = {"prompt_field": profile.data.prompt_field, "answer_format": profile.data.answer_format,
             "system_prompt": profile.data.system_prompt}
    return TrainingJob(base_model_path=load_path, base_model_ref=ref, manifest_dir=str(manifest_dir),
                       adapter_dir=str(out / "adapter"), work_dir=str(out / "work"), checkpoint_key="test",
                       model=dataclasses.asdict(profile.model), prompt_style=style,
                       gspo=dataclasses.asdict(profile.gspo), num_processes=1)


def _run(job: TrainingJob) -> dict:
    import torch

    Path(job.adapter_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # PEFT draws the LoRA A init from the global generator
    run_training_job(job, log=lambda line: None)
    log = json.loads((Path(job.adapter_dir) / TRAINING_LOG).read_text())
    weights = (Path(job.adapter_dir) / "adapter_model.safetensors").read_bytes()
    return {"log": log, "sha256": hashlib.sha256(weights).hexdigest()}


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k and "time" not in k}
            for h in history]


def test_changing_only_held_out_rows_changes_no_training_output_and_the_best_survives_resume(upstream, tmp_path):
    profile = _profile()
    original = upstream / "resized_images"
    # The same data with every held-out row changed: its answer, question and image.
    changed = tmp_path / "changed_images"
    shutil.copytree(original, changed)
    manifest = pd.read_parquet(changed / MANIFEST_NAME)
    held_out = manifest["split"] == SPLIT_EVAL
    manifest.loc[held_out, "answer"] = "999"
    manifest.loc[held_out, "question"] = "A different question?"
    manifest.loc[held_out, "query"] = "A different question?"
    manifest.to_parquet(changed / MANIFEST_NAME, index=False)
    for path in manifest.loc[held_out, "image_path"]:
        Image.new("RGB", (64, 64), (250, 10, 10)).save(changed / path)

    first = _run(_job(upstream, original, tmp_path / "a", profile))
    second = _run(_job(upstream, changed, tmp_path / "b", profile))
    assert first["sha256"] == second["sha256"]
    assert _without_timings(first["log"]["log_history"]) == _without_timings(second["log"]["log_history"])
    assert first["log"]["kept_checkpoint"] == second["log"]["kept_checkpoint"]
    assert [e["step"] for e in validation_entries(first["log"]["log_history"])] == [2, 4]
    from vlmrl_pipeline.core.export.merge import inspect_lora_adapter

    assert inspect_lora_adapter(tmp_path / "a" / "adapter")["num_lora_b_nonzero"] > 0  # it did train

    # A run killed after step 4's evaluation but before its checkpoint: resumed from checkpoint-2, it drops the
    # best adapter saved after that checkpoint, evaluates step 4 again and keeps the same adapter.
    work = tmp_path / "a" / "work"
    shutil.rmtree(work / "checkpoint-4")
    best_4 = work / BEST_DIR / "step-4"
    best_4.mkdir(parents=True, exist_ok=True)
    (best_4 / "adapter_model.safetensors").write_bytes(b"from the killed run")
    resumed_job = dataclasses.replace(_job(upstream, original, tmp_path / "a", profile),
                                      adapter_dir=str(tmp_path / "resumed"))
    resumed = _run(resumed_job)
    assert resumed["log"]["resume"]["resumed_from_step"] == 2
    assert [e["step"] for e in validation_entries(resumed["log"]["log_history"])] == [2, 4]  # none repeated
    assert resumed["log"]["kept_checkpoint"]["step"] == first["log"]["kept_checkpoint"]["step"]
    assert resumed["sha256"] == first["sha256"]


def test_evaluating_during_training_changes_nothing_that_is_trained(upstream, tmp_path):
    """The validation pass (model.eval(), greedy generate, model.train()) leaves training as it was: with
    eval_steps=2 the last adapter and every logged training number equal those of the same run without it."""
    with_validation = _run(_job(upstream, upstream / "resized_images", tmp_path / "with",
                                _profile(keep_checkpoint="last")))
    without = _run(_job(upstream, upstream / "resized_images", tmp_path / "without",
                        _profile(keep_checkpoint="last", eval_steps=0)))
    assert [e["step"] for e in validation_entries(with_validation["log"]["log_history"])] == [2, 4]
    assert validation_entries(without["log"]["log_history"]) == []
    trained = [h for h in with_validation["log"]["log_history"] if h not in validation_entries([h])]
    assert _without_timings(trained) == _without_timings(without["log"]["log_history"])
    assert with_validation["sha256"] == without["sha256"]
