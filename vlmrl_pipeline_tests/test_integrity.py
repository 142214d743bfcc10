"""Artifact folders are checked against what their materialization recorded before a step reads them."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vlmrl_pipeline.core.integrity import RECORD_NAME, ArtifactIntegrityError, record_files, verify_files


@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "data" / "base_model"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "model.safetensors").write_bytes(os.urandom(64 * 1024))
    (folder / "model_ref.json").write_text(json.dumps({"model_name": "demo"}))
    record_files(folder)
    return folder


def test_an_untouched_folder_verifies_without_reading_a_file(artifact, tmp_path):
    assert verify_files(artifact, "base_model", tmp_path / "cache.json") == {"files": 2, "hashed": 0}
    recorded = json.loads((artifact / RECORD_NAME).read_text())["files"]
    assert set(recorded) == {"checkpoint/model.safetensors", "model_ref.json"}  # not the record itself


def test_a_file_overwritten_in_place_with_the_same_size_is_caught(artifact, tmp_path):
    weights = artifact / "checkpoint" / "model.safetensors"
    with open(weights, "r+b") as handle:  # 4 KiB in the middle, as a bad disk or a stray dd would
        handle.seek(32 * 1024)
        handle.write(bytes(4096))
    with pytest.raises(ArtifactIntegrityError) as info:
        verify_files(artifact, "base_model", tmp_path / "cache.json")
    message = str(info.value)
    assert str(weights) in message and "has changed since base_model wrote it" in message
    assert "materialize base_model again" in message


def test_a_deleted_or_truncated_file_is_named_with_the_asset_to_materialize(artifact, tmp_path):
    weights = artifact / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactIntegrityError, match=rf"{weights} is 1000 bytes, but base_model wrote 65536"):
        verify_files(artifact, "base_model")
    weights.unlink()
    with pytest.raises(ArtifactIntegrityError, match=rf"{weights} is missing: it was written by base_model"):
        verify_files(artifact, "base_model")


def test_a_copied_folder_is_hashed_once_and_then_trusted_while_unchanged(artifact, tmp_path):
    copy = tmp_path / "elsewhere" / "base_model"
    shutil.copytree(artifact, copy)  # new inodes (and mtimes): the record's shortcut no longer applies
    cache = tmp_path / "cache.json"
    assert verify_files(copy, "base_model", cache) == {"files": 2, "hashed": 2}
    assert verify_files(copy, "base_model", cache) == {"files": 2, "hashed": 0}
    (copy / "model_ref.json").write_text(json.dumps({"model_name": "dem0"}))  # same size, new content
    with pytest.raises(ArtifactIntegrityError, match="model_ref.json has changed"):
        verify_files(copy, "base_model", cache)


def test_a_damaged_record_and_a_missing_folder_are_errors_an_old_folder_is_not(artifact, tmp_path):
    (artifact / RECORD_NAME).write_text("{not json")
    with pytest.raises(ArtifactIntegrityError, match=rf"{artifact / RECORD_NAME} is damaged"):
        verify_files(artifact, "base_model")
    with pytest.raises(ArtifactIntegrityError, match="materialize lora_adapter first"):
        verify_files(tmp_path / "data" / "lora_adapter", "lora_adapter")
    (artifact / RECORD_NAME).unlink()
    assert verify_files(artifact, "base_model") is None  # written before records existed: the caller warns


def test_an_amended_file_is_recorded_and_the_rest_still_guarded(tmp_path):
    """``ArtifactStore.amend`` (the report's evaluation written into a model card) rewrites one file and its
    entry; the folder verifies, and damage to another file is still caught."""
    from vlmrl_pipeline.resources import ArtifactStore

    store = ArtifactStore(root=str(tmp_path / "data"))
    with store.staging("lora_adapter") as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(os.urandom(4096))
        (tmp / "README.md").write_text("not evaluated yet")
    store.amend("lora_adapter", "README.md", "evaluated: +25 pts")
    folder = store.read("lora_adapter")
    assert (folder / "README.md").read_text() == "evaluated: +25 pts"
    assert verify_files(folder, "lora_adapter")["files"] == 2
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(ArtifactIntegrityError, match="adapter_model.safetensors has changed"):
        verify_files(folder, "lora_adapter")
