"""The data stage through Dagster, on local copies of MathVista (GitHub layout) and of geo3k (RLinf's form)."""

from __future__ import annotations

import dataclasses
import io
import json

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from PIL import Image

from vlmrl_pipeline.assets.data import few_rows_lost, mathvista_filtered, resized_images, train_eval_disjoint
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

DATA_ASSETS = [mathvista_filtered, resized_images, train_eval_disjoint, few_rows_lost]

# (kind, count): the composition of the local MathVista copy below, 40 rows in all.
COMPOSITION = {
    "free_form_integer": 12,   # answer "7": numeric, free form
    "free_form_float": 6,      # answer "1.5" (precision 1)
    "multi_choice_numeric": 8,  # choices are numbers, so the answer text is a number (the seeds keep these)
    "multi_choice_text": 9,    # answer "blue"
    "free_form_list": 3,       # answer "[1, 2]": not a number
    "missing_answer": 2,       # answer "": always dropped, and counted as lost
}


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_mathvista_github_copy(root, corrupt_images: int = 0):
    """A local MathVista copy in lupantech/MathVista's layout: data/testmini.json (keyed by pid) + data/images/."""
    images = root / "data" / "images"
    images.mkdir(parents=True)
    problems, n = {}, 0
    for kind, count in COMPOSITION.items():
        for _ in range(count):
            n += 1
            pid = str(n)
            mc = kind.startswith("multi_choice")
            answer = {"free_form_integer": "7", "free_form_float": "1.5", "multi_choice_numeric": "30",
                      "multi_choice_text": "blue", "free_form_list": "[1, 2]", "missing_answer": ""}[kind]
            problems[pid] = {
                "question": f"Question {pid}?", "image": f"images/{pid}.png",
                "choices": (["10", "20", "30"] if kind == "multi_choice_numeric" else ["red", "blue"]) if mc else None,
                "unit": None, "precision": 1.0 if kind == "free_form_float" else None, "answer": answer,
                "question_type": "multi_choice" if mc else "free_form",
                "answer_type": {"free_form_float": "float", "free_form_list": "list"}.get(
                    kind, "text" if mc else "integer"),
                "pid": pid, "metadata": {"source": kind, "skills": []},
            }
            payload = b"not a png" if n <= corrupt_images else _png(n)
            (images / f"{pid}.png").write_bytes(payload)
    (root / "data" / "testmini.json").write_text(json.dumps(problems))
    return root


def _profile(source: str, **data_changes):
    base = tiny_profile()
    data_changes = {"split": "testmini", "eval_size": 4, **data_changes}
    return dataclasses.replace(base, data=dataclasses.replace(base.data, source=source, **data_changes))


def _run(profile, data_dir):
    return materialize(DATA_ASSETS, resources=resources_for_profile(profile, str(data_dir)),
                       instance=DagsterInstance.ephemeral(), raise_on_error=False)


def _metadata(result, name):
    [event] = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in event.metadata.items()}


@pytest.mark.parametrize(
    "numeric_only, free_form_only, kept, dropped_non_numeric, dropped_multi_choice",
    [
        # 38 answered rows; numbers: 12 + 6 + 8 = 26; free form: 12 + 6 + 3 = 21
        (True, False, 26, 12, 0),   # the seeds' rule: keeps the 8 multiple-choice rows whose answer is a number
        (True, True, 18, 12, 8),    # free-form numbers only
        (False, False, 38, 0, 0),
        (False, True, 21, 0, 17),
    ],
)
def test_a_local_mathvista_copy_keeps_exactly_the_rows_the_rule_selects(
    tmp_path, numeric_only, free_form_only, kept, dropped_non_numeric, dropped_multi_choice
):
    source = write_mathvista_github_copy(tmp_path / "mathvista")
    result = _run(_profile(str(source), numeric_only=numeric_only, free_form_only=free_form_only), tmp_path / "out")
    assert result.success
    meta = _metadata(result, "mathvista_filtered")
    assert (meta["rows_in"], meta["rows_kept"], meta["dropped_missing_answer"]) == (40, kept, 2)
    assert (meta["dropped_non_numeric"], meta["dropped_multi_choice"]) == (dropped_non_numeric, dropped_multi_choice)
    filtered = pd.read_parquet(tmp_path / "out" / "mathvista_filtered" / "filtered.parquet")
    assert len(filtered) == kept and filtered["answer"].str.len().min() > 0
    # the query is built the way MathVista builds it when the GitHub copy has no query.json
    mc_rows = filtered[filtered["question_type"] == "multi_choice"]
    if len(mc_rows):
        assert mc_rows["query"].iloc[0].startswith("Hint: Please answer the question and provide the correct option")
    images = _metadata(result, "resized_images")
    assert images["num_images"] == kept and images["num_eval"] == 4 and images["num_skipped"] == 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["few_rows_lost"].passed and checks["train_eval_disjoint"].passed
    assert checks["few_rows_lost"].metadata["rows_lost"].value == 2  # the two missing answers


def test_corrupt_images_are_counted_and_too_many_fail_the_blocking_check(tmp_path):
    source = write_mathvista_github_copy(tmp_path / "mathvista", corrupt_images=5)
    result = _run(_profile(str(source), max_lost_fraction=0.1), tmp_path / "out")
    images = _metadata(result, "resized_images")
    assert images["num_skipped"] == 5 and images["skipped_corrupt_image"] == 5
    assert images["num_images"] == 26 - 5
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}["few_rows_lost"]
    # 2 missing answers + 5 corrupt images = 7 of 40 rows lost: over the 10% limit
    assert not check.passed
    assert (check.metadata["rows_lost"].value, check.metadata["lost_fraction"].value) == (7, 0.175)
    assert check.metadata["lost_corrupt_image"].value == 5
    # the same data passes with a looser limit
    assert {c.check_name: c for c in _run(_profile(str(source), max_lost_fraction=0.2), tmp_path / "out2")
            .get_asset_check_evaluations()}["few_rows_lost"].passed


def test_a_failed_blocking_check_stops_the_lineage(tmp_path):
    from vlmrl_pipeline.definitions import all_assets, all_checks

    source = write_mathvista_github_copy(tmp_path / "mathvista", corrupt_images=5)
    result = materialize([*all_assets, *all_checks],
                         resources=resources_for_profile(_profile(str(source), max_lost_fraction=0.1),
                                                         str(tmp_path / "out")),
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    assert result.asset_materializations_for_node("resized_images")
    assert not result.asset_materializations_for_node("base_model")  # nothing downstream ran on bad data


def write_geo3k_copy(root, rows: int = 16, constant_answer: str | None = None):
    """geo3k in RLinf's form: a prompt with an <image> placeholder, a list of images and a boxed answer.

    ``constant_answer`` gives every row the same answer, which a tiny model can learn in a few warm-start steps.
    """
    records = []
    for i in range(rows):
        images = [{"bytes": _png(i + 1), "path": None}]
        if i == rows - 1:
            images = images + [{"bytes": _png(99), "path": None}]  # two images: a counted skip
        records.append({"id": f"geo-{i}", "question_text": f"<image>\nFind x in figure {i}.", "figures": images,
                        "solution": f"\\boxed{{{constant_answer}}}" if constant_answer else
                        f"\\boxed{{{i + 2}}}" if i % 2 else f"\\boxed{{{i}\\sqrt{{3}}}}"})
    (root / "data").mkdir(parents=True)
    pd.DataFrame(records).to_parquet(root / "data" / "train-00000-of-00001.parquet")
    return root


def test_geo3k_in_rlinf_form_with_custom_keys(tmp_path):
    source = write_geo3k_copy(tmp_path / "geo3k")
    profile = _profile(str(source), split="train", dataset_format="rlinf", prompt_key="question_text",
                       answer_key="solution", image_keys=("figures",), numeric_only=False, answer_format="boxed",
                       max_lost_fraction=0.1)
    result = _run(profile, tmp_path / "out")
    assert result.success
    meta = _metadata(result, "mathvista_filtered")
    assert (meta["rows_in"], meta["rows_kept"], meta["dataset_format"]) == (16, 16, "rlinf")
    images = _metadata(result, "resized_images")
    assert images["skipped_image_count"] == 1 and images["num_images"] == 15
    manifest = pd.read_parquet(tmp_path / "out" / "resized_images" / "manifest.parquet")
    row = manifest.set_index("pid").loc["geo-3"]
    assert row["answer"] == "5" and row["query"].startswith("<image>")  # unboxed gold; placeholder kept
    # numeric_only would keep only the plain-number answers (the odd rows)
    strict = _run(dataclasses.replace(profile, data=dataclasses.replace(profile.data, numeric_only=True)),
                  tmp_path / "out2")
    assert _metadata(strict, "mathvista_filtered")["rows_kept"] == 8


def write_parquet_copy_with_bad_rows(root, rows: int = 30):
    """The hub's parquet layout with two bad rows: a null pid, and a question that is not UTF-8 text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.DataFrame({
        "pid": [str(i) for i in range(rows)], "question": [f"Question {i}?" for i in range(rows)],
        "query": [f"Question {i}?" for i in range(rows)],
        "decoded_image": [{"bytes": _png(i + 1), "path": f"{i}.png"} for i in range(rows)],
        "choices": [None] * rows, "unit": [None] * rows, "precision": [None] * rows,
        "answer": [str(i % 7) for i in range(rows)], "question_type": ["free_form"] * rows,
        "answer_type": ["integer"] * rows, "metadata": [{"source": "t"}] * rows,
    })
    frame.loc[3, "pid"] = None
    table = pa.Table.from_pandas(frame, preserve_index=False)
    raw = [b"Qu\xe9stion 5?" if i == 5 else f"Question {i}?".encode() for i in range(rows)]
    table = table.set_column(table.column_names.index("question"), "question",
                             pa.array(raw, type=pa.binary()).view(pa.string()))  # unvalidated, as a bad writer
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "testmini-00000-of-00001.parquet")
    return root


def test_bad_rows_are_counted_named_skips_and_the_stage_goes_on(tmp_path):
    source = write_parquet_copy_with_bad_rows(tmp_path / "mathvista")
    result = _run(_profile(str(source), max_lost_fraction=0.1), tmp_path / "out")
    assert result.success  # before: TypeError in resized_images (null pid), bare UnicodeDecodeError (bad bytes)
    meta = _metadata(result, "mathvista_filtered")
    assert (meta["rows_in"], meta["rows_kept"]) == (30, 28)
    assert (meta["dropped_missing_pid"], meta["dropped_unreadable"]) == (1, 1)
    named = {(d["row"], d["pid"], d["column"], d["kind"]) for d in meta["dropped"]}
    assert named == {(3, None, "pid", "missing_pid"), (5, "5", "question", "unreadable")}
    on_disk = json.loads((tmp_path / "out" / "mathvista_filtered" / "dropped.json").read_text())
    assert {(d["row"], d["pid"], d["column"], d["kind"]) for d in on_disk} == named
    assert all("not valid UTF-8" in d["reason"] for d in on_disk if d["kind"] == "unreadable")
    check = {c.check_name: c for c in result.get_asset_check_evaluations()}["few_rows_lost"]
    assert check.passed and check.metadata["rows_lost"].value == 2
    assert (check.metadata["lost_missing_pid"].value, check.metadata["lost_unreadable"].value) == (1, 1)
    assert _metadata(result, "resized_images")["num_images"] == 28


_HOLD_LOCK = """
import sys, time
from vlmrl_pipeline.core.atomic import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_materialization_of_an_asset_on_one_folder_fails_at_once(tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import vlmrl_pipeline

    source = write_mathvista_github_copy(tmp_path / "mathvista")
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out / "mathvista_filtered")],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(vlmrl_pipeline.__file__).parent.parent)})
    try:
        assert holder.stdout.readline().strip() == "held"  # another materialization is writing the asset
        start = time.monotonic()
        result = materialize([mathvista_filtered], resources=resources_for_profile(_profile(str(source)), str(out)),
                             instance=DagsterInstance.ephemeral(), raise_on_error=False)
        assert time.monotonic() - start < 60  # at once: no waiting on the other writer (generous bound)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
    assert not result.success
    [failure] = result.get_step_failure_events()
    error, text = failure.step_failure_data.error, []
    while error is not None:
        text.append(error.message)
        error = error.cause
    assert f"mathvista_filtered is being written by another materialization (pid {holder.pid} on" in "\n".join(text)
    assert not (out / "mathvista_filtered").exists()
    # the holder was killed: its lock went with it, and the same materialization now succeeds
    assert _run(_profile(str(source)), out).success
