"""Loading RLinf's form (geo3k) into the canonical MathVista schema."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from vlmrl_pipeline.core.data.filtering import filter_mathvista
from vlmrl_pipeline.core.data.images import SKIP_KINDS, count_skips, load_image, prepare_images
from vlmrl_pipeline.core.data.rlinf import load_rlinf, strip_boxed
from vlmrl_pipeline.core.data.schema import MATHVISTA_COLUMNS, DataError
from vlmrl_pipeline.core.prompts import BOXED_SYSTEM_PROMPT, build_prompt_text, chat_prompt
from vlmrl_pipeline_tests.data_files import png

# --------------------------------------------------------------------------- RLinf format


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{3}", "3"), (" \\boxed{ 4.5 } ", "4.5"), ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("3", "3"), ("\\boxed{1}+\\boxed{2}", "\\boxed{1}+\\boxed{2}"),
    ("x = \\boxed{1}", "x = \\boxed{1}"), ("\\boxed{1", "\\boxed{1"), ("\\boxed{{1}", "\\boxed{{1}"), (None, None),
])
def test_strip_boxed_takes_only_a_whole_string_box(text, expected):
    assert strip_boxed(text) == expected


def _write_geo3k(root, split="train"):
    """geo3k as RLinf reads it: problem with <image>, images as a list of {"bytes", "path"}, boxed answers."""
    rows = [
        {"problem": "<image>Find x.", "images": [{"bytes": png("red"), "path": None}], "answer": "\\boxed{3}"},
        {"problem": "<image>\nFind y. Round to the nearest tenth.", "images": [{"bytes": png("blue"), "path": None}],
         "answer": "\\boxed{2\\sqrt{3}}"},
        {"problem": "Compare <image> with the other figure.",
         "images": [{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}],
         "answer": "\\boxed{4.5}"},
        {"problem": "Find w.", "images": [], "answer": "5"},
    ]
    (root / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_rlinf_geo3k_rows_become_mathvista_rows(tmp_path):
    loaded = load_rlinf(str(_write_geo3k(tmp_path)))
    assert list(loaded.columns) == list(MATHVISTA_COLUMNS)
    assert loaded["pid"].tolist() == ["train-0", "train-1", "train-2", "train-3"]
    assert loaded["question"].tolist() == loaded["query"].tolist()
    assert loaded["query"][1] == "<image>\nFind y. Round to the nearest tenth."  # the placeholder stays
    assert loaded["answer"].tolist() == ["3", "2\\sqrt{3}", "4.5", "5"]
    assert loaded["answer_type"].tolist() == ["integer", "text", "float", "integer"]
    assert (loaded["question_type"] == "free_form").all() and loaded["precision"].isna().all()
    assert loaded["choices"].tolist() == [None] * 4 and loaded["unit"].tolist() == [None] * 4
    assert loaded["metadata"][1] == {"format": "rlinf", "raw_answer": "\\boxed{2\\sqrt{3}}", "num_images": 1}
    assert [m["num_images"] for m in loaded["metadata"]] == [1, 1, 2, 0]
    # always a list of {"bytes", "path"} dicts, so the column has one parquet type
    assert [len(images) for images in loaded["decoded_image"]] == [1, 1, 2, 0]
    assert set(loaded["decoded_image"][0][0]) == {"bytes", "path"}
    loaded.drop(columns=["metadata"]).to_parquet(tmp_path / "round_trip.parquet")

    kept, counts = filter_mathvista(loaded, numeric_only=True)
    assert kept["pid"].tolist() == ["train-0", "train-2", "train-3"] and counts["dropped_non_numeric"] == 1
    rows, skipped = prepare_images(loaded, tmp_path / "out", 16)
    assert rows["pid"].tolist() == ["train-0", "train-1"]
    assert [(s["pid"], s["kind"]) for s in skipped] == [("train-2", "image_count"), ("train-3", "image_count")]
    assert "row has 2 images; this pipeline uses exactly one image per sample" in skipped[0]["reason"]
    assert count_skips(skipped) == {**dict.fromkeys(SKIP_KINDS, 0), "image_count": 2, "total": 2}

    prompt = chat_prompt(build_prompt_text(rows.iloc[1], instruction=None), system_prompt=BOXED_SYSTEM_PROMPT)
    assert prompt == [
        {"role": "system", "content": [{"type": "text", "text": BOXED_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "Find y. Round to the nearest tenth."}]},
    ]


def test_rlinf_custom_keys_jsonl_and_relative_image_paths(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png("green"))
    lines = [
        {"uid": "g1", "text": "Find x in <image>.", "pic": ["pics/a.png"], "final": "\\boxed{7}"},
        {"uid": "g2", "text": "<image> Find y.", "pic": "pics/a.png", "final": 2},
        {"uid": None, "text": "<image>Find z.", "pic": [{"bytes": None, "path": "pics/missing.png"}], "final": "1.25"},
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    loaded = load_rlinf(tmp_path, "test", prompt_key="text", answer_key="final", image_keys=["pic"], pid_key="uid")
    assert loaded["pid"].tolist() == ["g1", "g2", "test-2"]  # a row without its id falls back to the position
    assert loaded["answer"].tolist() == ["7", "2", "1.25"]
    expected = [{"bytes": None, "path": str(tmp_path / "pics" / "a.png")}]
    assert loaded["decoded_image"][0] == loaded["decoded_image"][1] == expected
    rows, skipped = prepare_images(loaded, tmp_path / "out", 8)
    assert rows["pid"].tolist() == ["g1", "g2"] and [s["kind"] for s in skipped] == ["missing_image"]
    # every missing key is named with the setting that fixes it and the columns found
    for kwargs, key, setting in [({}, "problem", "prompt_key"),
                                 ({"prompt_key": "text"}, "answer", "answer_key"),
                                 ({"prompt_key": "text", "answer_key": "final"}, "images", "image_keys")]:
        with pytest.raises(DataError, match=rf"'{key}'.*{setting}.*columns found.*'uid'"):
            load_rlinf(tmp_path, "test", **kwargs)


def test_rlinf_ids_come_from_an_id_column_and_json_files(tmp_path):
    rows = [{"id": 10, "problem": "<image>a", "images": [], "answer": "\\boxed{1}"},
            {"id": 11, "problem": "<image>b", "images": [], "answer": "\\boxed{2}"}]
    (tmp_path / "val.json").write_text(json.dumps(rows))
    assert load_rlinf(str(tmp_path), "val")["pid"].tolist() == ["10", "11"]
    with pytest.raises(DataError, match="no files for split 'train'"):
        load_rlinf(str(tmp_path))
    _write_geo3k(tmp_path, split="val")
    with pytest.raises(DataError, match="as parquet.*as JSON"):
        load_rlinf(str(tmp_path), "val")


def test_rlinf_hub_ids_keep_images_in_lists_undecoded(monkeypatch):
    import datasets

    features = datasets.Features({"problem": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
                                  "answer": datasets.Value("string")})
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict(
            {"problem": ["<image>Find x."], "images": [[{"bytes": png(), "path": None}]], "answer": ["\\boxed{3}"]},
            features=features,
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_rlinf("hiyouga/geometry3k", "train")
    assert calls == [(("hiyouga/geometry3k",), {"split": "train"})]
    [image] = loaded["decoded_image"][0]
    assert isinstance(image, dict) and isinstance(image["bytes"], bytes)
    assert load_image(image).size == (20, 10) and loaded["answer"].tolist() == ["3"]
