"""Reading source files: text that is not UTF-8 costs its row only; the data code needs no Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vlmrl_pipeline.core.data.filtering import filter_rows
from vlmrl_pipeline.core.data.mathvista import load_mathvista
from vlmrl_pipeline.core.data.rlinf import load_rlinf
from vlmrl_pipeline_tests.data_files import mathvista_table


def _parquet_with_bad_utf8(path, bad_rows: set[int], n: int = 4):
    """MathVista's columns, with ``question`` holding bytes that are not UTF-8 in ``bad_rows`` (as a writer that
    never validated its text can leave them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(mathvista_table([str(i) for i in range(n)]), preserve_index=False)
    raw = [b"caf\xe9 ?" if i in bad_rows else f"q{i}".encode() for i in range(n)]
    question = pa.array(raw, type=pa.binary()).view(pa.string())  # view: no validation, as such a writer did
    table = table.set_column(table.column_names.index("question"), "question", question)
    pq.write_table(table, path)


def test_undecodable_text_is_a_named_skip_not_a_bare_error(tmp_path):
    (tmp_path / "data").mkdir()
    _parquet_with_bad_utf8(tmp_path / "data" / "testmini.parquet", bad_rows={1, 3})
    loaded = load_mathvista(str(tmp_path), "testmini")
    kept, counts, dropped = filter_rows(loaded)
    assert kept["pid"].tolist() == ["0", "2"] and kept.loc[1, "question"] == "q2"
    assert counts["dropped_unreadable"] == 2 and "_unreadable" not in kept.columns
    assert [(d["pid"], d["column"], d["kind"]) for d in dropped] == [("1", "question", "unreadable"),
                                                                     ("3", "question", "unreadable")]
    assert "not valid UTF-8" in dropped[0]["reason"] and "testmini.parquet" in dropped[0]["reason"]


def test_core_data_modules_do_not_import_dagster():
    code = ("import sys, vlmrl_pipeline.core.data.mathvista, vlmrl_pipeline.core.data.rlinf, "
            "vlmrl_pipeline.core.data.filtering, vlmrl_pipeline.core.data.images, vlmrl_pipeline.core.prompts, "
            "vlmrl_pipeline.core.demo.synthetic; "
            "sys.exit(1 if 'dagster' in sys.modules else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=root, timeout=60).returncode == 0


def test_undecodable_text_in_json_sources_costs_its_row_only(tmp_path):
    # MathVista's GitHub layout: one JSON document; a bad byte used to make the whole file unreadable.
    (tmp_path / "mv" / "data").mkdir(parents=True)
    problems = {str(i): {"pid": str(i), "question": f"Q{i}?", "image": f"images/{i}.png", "choices": None,
                         "unit": None, "precision": None, "answer": "3", "question_type": "free_form",
                         "answer_type": "integer", "metadata": {}} for i in range(3)}
    raw = json.dumps(problems).encode().replace(b"Q1?", b"Q\xff1?")
    (tmp_path / "mv" / "data" / "testmini.json").write_bytes(raw)
    kept, counts, dropped = filter_rows(load_mathvista(str(tmp_path / "mv"), "testmini"))
    assert kept["pid"].tolist() == ["0", "2"] and counts["dropped_unreadable"] == 1
    assert [(d["pid"], d["column"], d["kind"]) for d in dropped] == [("1", "question", "unreadable")]
    assert "testmini.json" in dropped[0]["reason"]
    # RLinf's JSON lines: the same, per line
    (tmp_path / "rl").mkdir()
    lines = [json.dumps({"id": f"g{i}", "problem": f"<image>x{i}", "images": [], "answer": "1"}).encode()
             for i in range(3)]
    lines[2] = lines[2].replace(b"x2", b"x\xfe2")
    (tmp_path / "rl" / "train.jsonl").write_bytes(b"\n".join(lines))
    kept, counts, dropped = filter_rows(load_rlinf(str(tmp_path / "rl"), "train"), numeric_only=False)
    assert kept["pid"].tolist() == ["g0", "g1"]
    # named by the source file's column
    assert [(d["pid"], d["column"], d["kind"]) for d in dropped] == [("g2", "problem", "unreadable")]
