"""The base-model reference that every stage after base_model loads from, and the source data's fingerprint."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vlmrl_pipeline.core.data.mathvista import load_mathvista
from vlmrl_pipeline.core.data.rlinf import load_rlinf
from vlmrl_pipeline.core.demo.synthetic import write_synthetic_mathvista
from vlmrl_pipeline.core.lineage import (
    model_load_path,
    read_model_ref,
    source_files,
    source_fingerprint,
    write_model_ref,
)


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


# --------------------------------------------------------------------------- source fingerprints

def _touch(path, seconds=10):
    """Move a file's mtime forward without changing its bytes (what `touch` or a re-export does)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


def _hub_layout(root):
    shard = write_synthetic_mathvista(root, num_rows=4, seed=0, image_size=64, split="testmini")
    (root / "README.md").write_text("a copy of MathVista")
    return shard


def _github_layout(root, query=True):
    """MathVista's GitHub layout: data/testmini.json keyed by pid, data/images/, data/query.json."""
    from PIL import Image

    data = root / "data"
    (data / "images").mkdir(parents=True)
    problems = {}
    for pid in ("1", "2"):
        Image.new("RGB", (8, 8), (int(pid) * 40, 0, 0)).save(data / "images" / f"{pid}.png")
        problems[pid] = {"question": f"How many bars? ({pid})", "image": f"images/{pid}.png", "choices": None,
                         "unit": None, "precision": None, "answer": pid, "question_type": "free_form",
                         "answer_type": "integer", "metadata": {}}
    (data / "testmini.json").write_text(json.dumps(problems))
    if query:
        (data / "query.json").write_text(json.dumps({"1": "Question one?", "2": "Question two?"}))
    Image.new("RGB", (8, 8)).save(data / "images" / "test_only.png")  # an image of another split
    return data


def test_a_hub_layout_fingerprint_follows_the_split_shards_only(tmp_path):
    shard = _hub_layout(tmp_path)
    first = source_fingerprint(str(tmp_path), "testmini")
    assert len(first) == 64 and source_fingerprint(tmp_path, "testmini") == first  # deterministic
    assert source_files(tmp_path, "testmini") == [shard]

    # files the loader does not read for this split change nothing
    (tmp_path / "notes.txt").write_text("unrelated")
    shutil.copy(shard, tmp_path / "data" / "test-00000-of-00001.parquet")  # split "test", not "testmini"
    assert source_fingerprint(tmp_path, "testmini") == first

    # a new shard of the split: read by the loader, so a new fingerprint
    second_shard = tmp_path / "data" / "testmini-00001-of-00002.parquet"
    shutil.copy(shard, second_shard)
    second = source_fingerprint(tmp_path, "testmini")
    assert second != first
    assert len(load_mathvista(str(tmp_path), "testmini")) == 8  # the loader does read both shards
    # touching a shard (same bytes, new mtime) or replacing it counts
    _touch(second_shard)
    third = source_fingerprint(tmp_path, "testmini")
    assert third not in (first, second)
    write_synthetic_mathvista(tmp_path, num_rows=5, seed=1, image_size=64, split="testmini")
    assert source_fingerprint(tmp_path, "testmini") not in (first, second, third)


def test_a_fingerprint_does_not_depend_on_where_the_folder_is(tmp_path):
    _hub_layout(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2 keeps sizes and mtimes
    assert source_fingerprint(tmp_path / "a", "testmini") == source_fingerprint(tmp_path / "b", "testmini")


def test_a_github_layout_fingerprint_covers_json_query_and_the_images_it_names(tmp_path):
    data = _github_layout(tmp_path, query=False)
    listed = source_files(tmp_path, "testmini")
    assert listed == sorted([data / "testmini.json", data / "images" / "1.png", data / "images" / "2.png"])
    # exactly the image files the loader will open
    loaded = load_mathvista(str(tmp_path), "testmini")
    assert {d["path"] for d in loaded["decoded_image"]} == {str(p) for p in listed if p.suffix == ".png"}

    first = source_fingerprint(tmp_path, "testmini")
    _touch(data / "images" / "test_only.png")  # an image no problem of the split names
    (tmp_path / "README.md").write_text("unrelated")
    assert source_fingerprint(tmp_path, "testmini") == first

    _touch(data / "images" / "2.png")
    second = source_fingerprint(tmp_path, "testmini")
    assert second != first
    (data / "query.json").write_text(json.dumps({"1": "Question one?"}))  # the loader reads it when present
    third = source_fingerprint(tmp_path, "testmini")
    assert third not in (first, second)
    _touch(data / "testmini.json")
    assert source_fingerprint(tmp_path, "testmini") not in (first, second, third)


def test_a_named_image_that_appears_later_changes_the_fingerprint(tmp_path):
    data = _github_layout(tmp_path)
    image = data / "images" / "1.png"
    kept = image.read_bytes()
    image.unlink()
    missing = source_fingerprint(tmp_path, "testmini")
    assert data / "images" / "1.png" in source_files(tmp_path, "testmini")
    image.write_bytes(kept)
    assert source_fingerprint(tmp_path, "testmini") != missing


def test_a_github_layout_json_at_the_folder_root_is_found_too(tmp_path):
    data = _github_layout(tmp_path / "copy")
    first = source_fingerprint(data, "testmini")
    assert data / "query.json" in source_files(data, "testmini")
    _touch(data / "images" / "1.png")
    assert source_fingerprint(data, "testmini") != first


def test_an_rlinf_fingerprint_follows_the_split_json_and_parquet_files(tmp_path):
    rows = [{"id": "a", "problem": "<image>What is x?", "images": ["img/a.png"], "answer": "\\boxed{2}"}]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text(train.read_text())  # another split
    first = source_fingerprint(tmp_path, "train", "rlinf")
    assert source_files(tmp_path, "train", "rlinf") == [train]
    assert len(load_rlinf(str(tmp_path), "train")) == 1

    _touch(tmp_path / "test.jsonl")
    assert source_fingerprint(tmp_path, "train", "rlinf") == first
    (tmp_path / "train-00001-of-00002.json").write_text(json.dumps(rows))
    second = source_fingerprint(tmp_path, "train", "rlinf")
    assert second != first
    train.write_text(train.read_text() + "\n")
    assert source_fingerprint(tmp_path, "train", "rlinf") not in (first, second)
    # the format decides what is read: MathVista's loader would not read train.jsonl
    assert source_files(tmp_path, "train", "mathvista") == []


def test_the_synthetic_fingerprint_is_a_hash_of_the_settings_that_decide_the_rendered_set():
    settings = {"synthetic_rows": 400, "seed": 0, "image_size": 128}
    first = source_fingerprint("synthetic", "testmini", synthetic_settings=settings)
    assert source_fingerprint("synthetic", "testmini", synthetic_settings=dict(settings)) == first
    for change in ({"synthetic_rows": 401}, {"seed": 1}, {"image_size": 64}):
        assert source_fingerprint("synthetic", "testmini", synthetic_settings={**settings, **change}) != first
    assert source_fingerprint("synthetic", "train", synthetic_settings=settings) != first
    # other settings (filters, eval size) do not change what is rendered
    assert source_fingerprint("synthetic", "testmini", synthetic_settings={**settings, "eval_size": 5}) == first
    with pytest.raises(ValueError, match="synthetic_settings"):
        source_fingerprint("synthetic", "testmini")


def test_a_hub_id_has_no_fingerprint_and_a_missing_local_source_is_an_error(tmp_path):
    assert source_fingerprint("AI4Math/MathVista", "testmini") is None
    assert source_fingerprint("CAIR-HKISI/geo3k", "train", "rlinf") is None
    with pytest.raises(FileNotFoundError, match="not a folder"):
        source_fingerprint(str(tmp_path / "gone"), "testmini")
    with pytest.raises(FileNotFoundError, match="no mathvista files"):
        source_fingerprint(tmp_path, "testmini")  # an empty folder
    with pytest.raises(ValueError, match="dataset_format"):
        source_fingerprint(tmp_path, "testmini", "csv")
