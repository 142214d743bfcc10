"""``core.export.merged``: the merged checkpoint made and compared with base + adapter, without Dagster; a merge
that drops the adapter is caught by the comparison."""

from __future__ import annotations

import json

from PIL import Image

from vlmrl_pipeline.core.export import merged as merged_export
from vlmrl_pipeline.core.export.merged import MERGE_CHECK, MERGED_16BIT_DIR, merge_and_compare
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.files import sha256_dir
from vlmrl_pipeline.core.model.card import CARD_NAME
from vlmrl_pipeline_tests.test_export import _save_adapter

PROMPTS = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Question {i}?"}]}]
           for i in range(3)]
IMAGES = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]


def _merge(tiny_checkpoint, adapter, out, cards):
    return merge_and_compare(tiny_checkpoint, adapter, out, ExportSettings(merged_dtype="float32"), revision=None,
                             prompts=PROMPTS, images=IMAGES, trained_in_4bit=True, max_seq_length=256,
                             card=lambda check: cards.append(check) or f"card: {check['argmax_agree']}",
                             log=lambda message: None)


def test_the_merged_checkpoint_computes_base_plus_adapter_and_carries_its_card(tiny_checkpoint, tmp_path):
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    cards: list = []
    metadata = _merge(tiny_checkpoint, adapter, tmp_path / "out", cards)
    check = json.loads((tmp_path / "out" / MERGE_CHECK).read_text())
    assert check["within_tolerance"] and check["argmax_agree"] == check["prompts"] == len(PROMPTS)
    assert cards == [check]  # the card is written from the check the file holds
    merged = tmp_path / "out" / MERGED_16BIT_DIR
    assert (merged / CARD_NAME).read_text() == f"card: {check['argmax_agree']}"
    assert metadata["weights_sha256"] == sha256_dir(merged, exclude=(CARD_NAME,))
    assert metadata["merge_argmax_agree"] == f"{len(PROMPTS)}/{len(PROMPTS)}"
    assert isinstance(metadata["sample_generation"], str) and "size_bytes_4bit" not in metadata
    # a 16-bit base trained in 4-bit: the check says the merged weights are the 16-bit ones
    assert "16-bit weights" in check["note"]


def test_a_merge_that_drops_the_adapter_fails_the_comparison(tiny_checkpoint, tmp_path, monkeypatch):
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    untrained = _save_adapter(tiny_checkpoint, tmp_path / "untrained", trained=False)
    real_merge = merged_export.merge_adapter_to_checkpoint

    def merge_without_the_adapter(base, _adapter, out, **kwargs):  # the bug: the trained adapter is lost
        return real_merge(base, untrained, out, **kwargs)

    monkeypatch.setattr(merged_export, "merge_adapter_to_checkpoint", merge_without_the_adapter)
    _merge(tiny_checkpoint, adapter, tmp_path / "out", [])
    check = json.loads((tmp_path / "out" / MERGE_CHECK).read_text())
    assert not check["within_tolerance"] and check["relative_logit_diff"] > check["tolerance"]
