"""Decoding, resizing and writing images; bad images as counted skips of a named kind."""

from __future__ import annotations

import hashlib
import os

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core.data.images import SKIP_KINDS, count_skips, load_image, prepare_images, resize_image
from vlmrl_pipeline.core.data.schema import DataError
from vlmrl_pipeline_tests.data_files import mathvista_table, noisy_png, png

# --------------------------------------------------------------------------- images


def test_images_decode_from_every_form(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png("blue"))
    forms = [
        {"bytes": png(), "path": None}, png(), bytearray(png()), str(path), path,
        {"bytes": None, "path": str(path)}, {"bytes": b"", "path": str(path)}, Image.new("RGB", (20, 10)),
    ]
    for value in forms:
        img = load_image(value)
        assert img.size == (20, 10)
        img.getpixel((0, 0))  # pixels are there
    # bytes win over the path
    assert load_image({"bytes": png("red"), "path": str(path)}).convert("RGB").getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("bad", [
    {"bytes": b"not an image", "path": None}, noisy_png()[:2000], None, float("nan"), {}, {"bytes": None, "path": None},
    {"bytes": None, "path": "/nope/x.png"}, "/nope/x.png", 42,
])
def test_missing_or_corrupt_images_are_data_errors(bad):
    with pytest.raises(DataError):
        load_image(bad)


@pytest.mark.parametrize("limit", [150, 50])  # 200 px: PIL only warns at 150, refuses at 50
def test_decompression_bombs_are_refused(monkeypatch, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image(png(size=(20, 10)))
    assert load_image(png(size=(5, 5))).size == (5, 5)


def test_resize_gives_exact_square_rgb_and_composites_transparency_on_white():
    clear = resize_image(Image.new("RGBA", (30, 10), (255, 0, 0, 0)), 16)
    assert clear.mode == "RGB" and clear.size == (16, 16) and clear.getpixel((8, 8)) == (255, 255, 255)
    half = resize_image(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), 4).getpixel((2, 2))
    assert half[0] == 255 and 120 <= half[1] <= 135 and half[1] == half[2]
    grey = resize_image(Image.new("L", (5, 7), 90), 8)
    assert grey.mode == "RGB" and grey.size == (8, 8) and grey.getpixel((4, 4)) == (90, 90, 90)
    palette = Image.new("P", (6, 6), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert resize_image(palette, 3).getpixel((1, 1)) == (255, 255, 255)
    deep = resize_image(Image.new("I;16", (4, 4), 32768), 2)  # 16-bit grey is scaled, not clipped
    assert deep.mode == "RGB" and deep.getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(DataError):
        resize_image(Image.new("RGB", (4, 4)), 0)


def test_prepare_images_skips_and_reports_bad_images(tmp_path):
    table = mathvista_table(["1", "2", "3", "4", "5"], pids=["0", "1", "2", "../evil", "2"])
    table.at[1, "decoded_image"] = {"bytes": b"\x89PNG corrupt", "path": "images/1.png"}
    table.at[2, "decoded_image"] = {"bytes": png("blue", mode="RGBA"), "path": "images/2.png"}
    out_dir = tmp_path / "images"
    rows, skipped = prepare_images(table, out_dir, 32)
    assert rows["pid"].tolist() == ["0", "2"] and rows["answer"].tolist() == ["1", "3"]
    assert [s["pid"] for s in skipped] == ["1", "../evil", "2"]
    assert "corrupt" in skipped[0]["reason"] and "duplicate" in skipped[2]["reason"]
    assert [s["kind"] for s in skipped] == ["corrupt_image", "unsafe_pid", "duplicate_pid"]
    assert count_skips(skipped) == {"missing_image": 0, "corrupt_image": 1, "image_too_large": 0, "image_count": 0,
                                    "unsafe_pid": 1, "duplicate_pid": 1, "total": 3}
    assert "decoded_image" not in rows.columns and "answer" in rows.columns
    for pid, path, digest in zip(rows["pid"], rows["image_path"], rows["image_sha256"]):
        assert os.path.isabs(path) and path == str((out_dir / f"{pid}.png").resolve())
        with Image.open(path) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
            assert hashlib.sha256(img.tobytes()).hexdigest() == digest
    assert rows["image_sha256"].nunique() == 2  # red and blue differ
    assert sorted(p.name for p in out_dir.iterdir()) == ["0.png", "2.png"]  # no temp files, nothing outside
    assert not (tmp_path / "evil.png").exists()


def test_identical_images_hash_identically(tmp_path):
    rows, skipped = prepare_images(mathvista_table(["1", "2"]), tmp_path, 16)
    assert not skipped and rows["image_sha256"].nunique() == 1


# --------------------------------------------------------------------------- image counts and skips


def test_one_image_in_a_list_is_unwrapped_and_other_counts_are_refused():
    assert load_image([png()]).size == (20, 10)
    assert load_image(({"bytes": png(), "path": None},)).size == (20, 10)
    for value, n in (([], 0), ([png(), png()], 2), (pd.Series([png()] * 3, dtype=object).to_numpy(), 3)):
        with pytest.raises(DataError, match=f"row has {n} images; this pipeline uses exactly one image per sample") as info:
            load_image(value)
        assert info.value.kind == "image_count"


@pytest.mark.parametrize("value, kind", [
    (None, "missing_image"), ({"bytes": None, "path": "/nope/x.png"}, "missing_image"), ({}, "missing_image"),
    (b"not an image", "corrupt_image"), (42, "corrupt_image"),
])
def test_image_errors_say_their_kind(value, kind):
    with pytest.raises(DataError) as info:
        load_image(value)
    assert info.value.kind == kind


def test_too_large_images_are_their_own_kind(monkeypatch, tmp_path):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    _, skipped = prepare_images(mathvista_table(["1"]), tmp_path, 4)
    assert [s["kind"] for s in skipped] == ["image_too_large"]


def test_count_skips_lists_every_kind():
    assert count_skips([]) == {**dict.fromkeys(SKIP_KINDS, 0), "total": 0}
    assert list(count_skips([])) == [*SKIP_KINDS, "total"]
