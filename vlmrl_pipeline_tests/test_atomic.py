"""Write-then-rename: the old artifact or the new one, never a half-written one, and no temp files left."""

from __future__ import annotations

import pytest

from vlmrl_pipeline.core.atomic import atomic_dir, atomic_file


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "records.json"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["records.json"]


def test_atomic_dir_swaps_whole_folders(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a"]  # the old folder's files do not linger
    assert (target / "a").read_text() == "2"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("3")
            raise ValueError("failed export")
    assert (target / "a").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
