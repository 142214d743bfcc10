"""Loading MathVista: the hub's parquet layout, the GitHub layout (JSON + images + query.json), hub ids."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from vlmrl_pipeline.core.data.images import count_skips, prepare_images
from vlmrl_pipeline.core.data.mathvista import build_mathvista_query, load_mathvista
from vlmrl_pipeline.core.data.schema import DataError
from vlmrl_pipeline.core.demo.synthetic import (
    generate_synthetic_mathvista,
    write_synthetic_mathvista,
)
from vlmrl_pipeline_tests.data_files import mathvista_table, png

# --------------------------------------------------------------------------- loading


def test_load_round_trips_the_synthetic_parquet(tmp_path):
    write_synthetic_mathvista(tmp_path, num_rows=12, seed=3, image_size=64)
    loaded = load_mathvista(str(tmp_path), "testmini")
    expected = generate_synthetic_mathvista(12, seed=3, image_size=64)
    pd.testing.assert_frame_equal(loaded, expected)
    assert isinstance(loaded["metadata"][0]["skills"], list)
    pd.testing.assert_frame_equal(load_mathvista(tmp_path / "data", "testmini"), expected)  # PathLike works too


def test_load_reads_every_file_of_the_split_recursively_and_only_that_split(tmp_path):
    frame = generate_synthetic_mathvista(4, seed=0, image_size=64)
    (tmp_path / "a" / "b").mkdir(parents=True)
    frame.head(2).to_parquet(tmp_path / "a" / "testmini-00000-of-00002-xyz.parquet")
    frame.tail(2).to_parquet(tmp_path / "a" / "b" / "testmini-00001-of-00002-xyz.parquet")
    frame.to_parquet(tmp_path / "a" / "test-00000-of-00001.parquet")
    loaded = load_mathvista(str(tmp_path), "testmini")
    assert loaded["pid"].tolist() == ["1", "2", "3", "4"] and loaded.index.tolist() == [0, 1, 2, 3]
    assert isinstance(loaded["metadata"][0]["skills"], list)  # numpy arrays from pandas' writer become lists
    assert len(load_mathvista(str(tmp_path), "test")) == 4
    with pytest.raises(DataError, match=r"'train-\*\.parquet'") as info:
        load_mathvista(str(tmp_path), "train")
    assert str(tmp_path) in str(info.value)


def test_missing_query_is_filled_from_question(tmp_path):
    (tmp_path / "data").mkdir()
    mathvista_table(["1", "2"]).drop(columns=["query"]).to_parquet(tmp_path / "data" / "testmini-0.parquet")
    loaded = load_mathvista(str(tmp_path))
    assert loaded["query"].tolist() == loaded["question"].tolist() == ["q0", "q1"]


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    (tmp_path / "data").mkdir()
    mathvista_table(["1"]).drop(columns=["answer"]).to_parquet(tmp_path / "data" / "testmini-0.parquet")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['answer'\].*found.*'question_type'"):
        load_mathvista(str(tmp_path))


def test_empty_table_is_a_data_error(tmp_path):
    (tmp_path / "data").mkdir()
    mathvista_table([]).to_parquet(tmp_path / "data" / "testmini-0.parquet")
    with pytest.raises(DataError, match="no rows"):
        load_mathvista(str(tmp_path))


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("the hub must not be called for a local path")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataError, match="does not exist"):
        load_mathvista(str(tmp_path / "nope"))
    path = write_synthetic_mathvista(tmp_path, num_rows=2, seed=0, image_size=64)
    with pytest.raises(DataError, match="is a file"):
        load_mathvista(str(path))


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    import datasets

    expected = generate_synthetic_mathvista(5, seed=4, image_size=64)
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(expected.to_dict(orient="records"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_mathvista("AI4Math/MathVista", split="testmini")
    assert calls == [(("AI4Math/MathVista",), {"split": "testmini"})]
    pd.testing.assert_frame_equal(loaded, expected)
    # datasets hands over numpy arrays for list cells: they come back as lists
    assert all(c is None or isinstance(c, list) for c in loaded["choices"])
    assert all(isinstance(m["skills"], list) for m in loaded["metadata"])
    assert all(set(d) == {"bytes", "path"} and isinstance(d["bytes"], bytes) for d in loaded["decoded_image"])


# --------------------------------------------------------------------------- MathVista's GitHub layout

_HINT_INT = ("Hint: Please answer the question requiring an integer answer and provide the final value, "
             "e.g., 1, 2, 3, at the end.")
_HINT_FLOAT1 = ("Hint: Please answer the question requiring a floating-point number with one decimal place and "
                "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.")
_HINT_FLOAT2 = ("Hint: Please answer the question requiring a floating-point number with two decimal places and "
                "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.")
_HINT_MC = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
_HINT_LIST = ("Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
              "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")

# Five problems as lupantech/MathVista's testmini.json holds them, with the query the hub's parquet carries.
_PROBLEMS = [
    ({"question": "what is the total volume of the measuring cup?", "choices": None, "unit": "g", "precision": None,
      "answer": "1000", "question_type": "free_form", "answer_type": "integer"},
     f"{_HINT_INT}\nQuestion: what is the total volume of the measuring cup? (Unit: g)"),
    ({"question": "How long is the line?", "choices": None, "unit": None, "precision": 1.0,
      "answer": "3.5", "question_type": "free_form", "answer_type": "float"},
     f"{_HINT_FLOAT1}\nQuestion: How long is the line?"),
    ({"question": "What is the slope?", "choices": None, "unit": "", "precision": 2.0,
      "answer": "0.25", "question_type": "free_form", "answer_type": "float"},
     f"{_HINT_FLOAT2}\nQuestion: What is the slope?"),
    ({"question": "Which bar is tallest?", "choices": ["red", "blue", "green"], "unit": None, "precision": None,
      "answer": "blue", "question_type": "multi_choice", "answer_type": "text"},
     f"{_HINT_MC}\nQuestion: Which bar is tallest?\nChoices:\n(A) red\n(B) blue\n(C) green"),
    ({"question": "List the x values.", "choices": None, "unit": None, "precision": None,
      "answer": "[1, 2]", "question_type": "free_form", "answer_type": "list"},
     f"{_HINT_LIST}\nQuestion: List the x values."),
]
_COLOURS = ["red", "green", "blue", "yellow", "purple"]


def _write_github_layout(root, with_query=True, skip_image=None):
    """testmini.json keyed by pid + images/ (+ query.json), as in lupantech/MathVista's data/ folder."""
    data = root / "data"
    (data / "images").mkdir(parents=True)
    problems = {}
    for i, (fields, _query) in enumerate(_PROBLEMS, start=1):
        pid = str(i)
        problems[pid] = {**fields, "pid": pid, "image": f"images/{pid}.png",
                         "metadata": {"source": "test", "skills": ["arithmetic"]}}
        if pid != skip_image:
            (data / "images" / f"{pid}.png").write_bytes(png(_COLOURS[i - 1]))
    (data / "testmini.json").write_text(json.dumps(problems, indent=2))
    if with_query:
        (data / "query.json").write_text(json.dumps({str(i): q for i, (_, q) in enumerate(_PROBLEMS, start=1)}))
    return root


def _write_hub_layout(root):
    rows = [{**fields, "pid": str(i), "query": query, "image": f"images/{i}.png",
             "decoded_image": {"bytes": png(_COLOURS[i - 1]), "path": f"images/{i}.png"},
             "metadata": {"source": "test", "skills": ["arithmetic"]}}
            for i, (fields, query) in enumerate(_PROBLEMS, start=1)]
    (root / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "data" / "testmini-00000-of-00001-abc.parquet")
    return root


@pytest.mark.parametrize("with_query", [True, False])
def test_github_and_hub_layouts_load_the_same_problems(tmp_path, with_query):
    github = load_mathvista(str(_write_github_layout(tmp_path / "github", with_query=with_query)), "testmini")
    hub = load_mathvista(str(_write_hub_layout(tmp_path / "hub")), "testmini")
    for column in ("pid", "question", "query", "choices", "unit", "answer", "question_type", "answer_type",
                   "metadata", "image"):
        assert github[column].tolist() == hub[column].tolist(), column
    pd.testing.assert_series_equal(github["precision"], hub["precision"])
    assert github["query"].tolist() == [q for _, q in _PROBLEMS]
    # images are path dicts pointing into images/, and prepare the same pixels as the hub's bytes
    first = github["decoded_image"][0]
    assert first["bytes"] is None and first["path"] == str(tmp_path / "github" / "data" / "images" / "1.png")
    rows_g, skipped_g = prepare_images(github, tmp_path / "out_g", 16)
    rows_h, skipped_h = prepare_images(hub, tmp_path / "out_h", 16)
    assert not skipped_g and not skipped_h
    assert rows_g["image_sha256"].tolist() == rows_h["image_sha256"].tolist()


def test_query_json_wins_and_missing_entries_are_built(tmp_path):
    root = _write_github_layout(tmp_path, with_query=False)
    (root / "data" / "query.json").write_text(json.dumps({"2": "my own query"}))
    loaded = load_mathvista(str(root / "data"), "testmini")  # the json's own folder works too
    assert loaded["query"].tolist() == [_PROBLEMS[0][1], "my own query"] + [q for _, q in _PROBLEMS[2:]]


def test_build_mathvista_query_matches_the_hub_text():
    for fields, query in _PROBLEMS:
        assert build_mathvista_query(fields) == query
    # floats of a precision build_query.py has no hint for get none
    assert build_mathvista_query({"question": "q?", "question_type": "free_form", "answer_type": "float",
                                  "precision": 3.0}) == "Question: q?"


def test_github_layout_as_a_list_with_a_missing_image_is_a_counted_skip(tmp_path):
    root = _write_github_layout(tmp_path, skip_image="3")
    problems = json.loads((root / "data" / "testmini.json").read_text())
    (root / "data" / "testmini.json").write_text(json.dumps(list(problems.values())))
    loaded = load_mathvista(str(root), "testmini")  # loading does not open the images
    assert loaded["pid"].tolist() == ["1", "2", "3", "4", "5"]
    rows, skipped = prepare_images(loaded, tmp_path / "out", 16)
    assert rows["pid"].tolist() == ["1", "2", "4", "5"]
    assert [(s["pid"], s["kind"]) for s in skipped] == [("3", "missing_image")]
    assert "3.png does not exist" in skipped[0]["reason"]
    assert count_skips(skipped)["missing_image"] == 1 and count_skips(skipped)["total"] == 1


def test_both_layouts_in_one_folder_is_a_data_error(tmp_path):
    _write_github_layout(tmp_path)
    _write_hub_layout(tmp_path / "hub")
    with pytest.raises(DataError, match=r"testmini-00000-of-00001-abc\.parquet.*testmini\.json.*point source"):
        load_mathvista(str(tmp_path), "testmini")


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "testmini.json").write_text("{not json")
    with pytest.raises(DataError, match=r"testmini\.json"):
        load_mathvista(str(tmp_path), "testmini")
    (tmp_path / "testmini.json").write_text(json.dumps({"1": {**_PROBLEMS[0][0], "image": "images/1.png"}}))
    (tmp_path / "query.json").write_text("[1, 2")
    with pytest.raises(DataError, match=r"query\.json"):
        load_mathvista(str(tmp_path), "testmini")


def test_a_pid_given_twice_in_the_json_object_is_a_counted_duplicate_like_in_the_list_form(tmp_path):
    # Before: json kept the later of two "3" keys and the earlier problem vanished without a count, while the
    # list form counted the same repeat as dropped_duplicate_pid.
    from vlmrl_pipeline.core.data.filtering import filter_rows

    root = _write_github_layout(tmp_path / "object")
    problems = json.loads((root / "data" / "testmini.json").read_text())
    text = json.dumps(problems)
    repeat = json.dumps({**problems["3"], "answer": "7.5"})
    (root / "data" / "testmini.json").write_text(text[:-1] + f', "3": {repeat}}}')  # a second key "3", last
    listed = _write_github_layout(tmp_path / "list")
    (listed / "data" / "testmini.json").write_text(json.dumps([*problems.values(), {**problems["3"], "answer": "7.5"}]))
    outcomes = []
    for source in (root, listed):
        loaded = load_mathvista(str(source), "testmini")
        assert loaded["pid"].tolist() == ["1", "2", "3", "4", "5", "3"]
        kept, counts, dropped = filter_rows(loaded, numeric_only=False)
        assert counts["dropped_duplicate_pid"] == 1 and counts["rows_kept"] == 5
        assert kept.loc[kept["pid"] == "3", "answer"].tolist() == ["0.25"]  # the first one is kept, as in a list
        outcomes.append([(d["row"], d["pid"], d["kind"]) for d in dropped])
    assert outcomes[0] == outcomes[1] == [(5, "3", "duplicate_pid")]


def test_a_misnamed_json_field_is_named_like_a_missing_parquet_column(tmp_path):
    # Before: "answr" for "answer" in every problem ended as "no rows left after filtering" without the name.
    root = _write_github_layout(tmp_path)
    problems = json.loads((root / "data" / "testmini.json").read_text())
    renamed = {pid: {("answr" if k == "answer" else k): v for k, v in p.items()} for pid, p in problems.items()}
    (root / "data" / "testmini.json").write_text(json.dumps(renamed))
    with pytest.raises(DataError, match=r"testmini\.json: no problem has the field\(s\) \['answer'\] \(required\); "
                                        r"fields found: \[.*'answr'"):
        load_mathvista(str(root), "testmini")
