"""Write-then-rename: the old artifact or the new one, never a half-written one, and no temp files left."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import vlmrl_pipeline
from vlmrl_pipeline.core.atomic import (
    ArtifactBusyError,
    atomic_dir,
    atomic_file,
    exclusive,
    lock_path,
    remove_dead_staging,
)
from vlmrl_pipeline.core.processes import process_identity, process_is_gone


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


# --- one writer per artifact folder; what killed writers leave behind ---------------------------------------------

_HOLD_LOCK = """
import sys, time
from vlmrl_pipeline.core.atomic import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(target) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(target)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(vlmrl_pipeline.__file__).parent.parent)})
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_fails_at_once_naming_the_first_and_a_killed_one_frees_the_folder(tmp_path):
    target = tmp_path / "lora_adapter"
    holder = _holder(target)
    try:
        with pytest.raises(ArtifactBusyError, match=rf"lora_adapter is being written by .*pid {holder.pid} on "):
            with exclusive(target):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file stays behind
        holder.wait(timeout=10)
        holder.stdout.close()
    assert lock_path(target).exists()
    with exclusive(target):  # the kernel dropped the dead holder's lock: the stale file blocks nobody
        with exclusive(target):  # the same thread may nest (an asset's lock, then its staging's)
            pass


def test_another_thread_of_the_same_process_is_refused(tmp_path):
    target = tmp_path / "base_model"
    errors = []
    with exclusive(target):
        def other():
            try:
                with exclusive(target):
                    pass
            except ArtifactBusyError as exc:
                errors.append(str(exc))
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread" in errors[0]


def test_staging_folders_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "base_model"
    target.mkdir()
    (target / "weights").write_text("previous artifact")
    leftovers = [tmp_path / ".base_model.k1ll3d00", tmp_path / ".base_model.old.x1"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "half").write_bytes(b"0" * 1000)
    others = [tmp_path / ".base_model_x.abc", tmp_path / ".lora_adapter.abc", tmp_path / "base_model.abc"]
    for folder in others:
        folder.mkdir()
    with exclusive(target):
        removed = remove_dead_staging(target)
    assert sorted(removed) == sorted(leftovers) and not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in others) and (target / "weights").read_text() == "previous artifact"
    assert lock_path(target).exists()  # a file, not a staging folder: kept


def test_a_process_identity_tells_a_live_process_from_a_killed_one():
    assert process_is_gone(process_identity()) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    identity = process_identity(child.pid)
    assert process_is_gone(identity) is False
    child.kill()
    child.wait(timeout=10)
    assert process_is_gone(identity) is True
    # a reused pid is another process: same number, another start time
    assert process_is_gone({**process_identity(), "start_ticks": -1}) is True
    assert process_is_gone({**process_identity(), "host": "another-host"}) is None  # cannot tell from here
    assert process_is_gone("garbage") is None


def test_a_kill_between_the_two_renames_of_a_swap_keeps_the_previous_artifact(tmp_path):
    target = tmp_path / "merged_model"
    aside = tmp_path / ".merged_model.old.k1ll" / "merged_model"
    aside.mkdir(parents=True)
    (aside / "weights").write_text("previous")  # moved aside; the new one never arrived
    (tmp_path / ".merged_model.n3w").mkdir()
    with exclusive(target):
        remove_dead_staging(target)
    assert (target / "weights").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merged_model.lock", "merged_model"]
