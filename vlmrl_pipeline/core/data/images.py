"""Decoding every image form a source holds, resizing to a square RGB, and writing the PNGs (bad images are
counted skips of a named kind, never a crashed run)."""

from __future__ import annotations

import hashlib
import io
import numbers
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.atomic import atomic_file
from vlmrl_pipeline.core.data.schema import DataError, is_missing

# Why prepare_images skipped a row; count_skips reports every one of them.
SKIP_KINDS = (
    "missing_image",
    "corrupt_image",
    "image_too_large",
    "image_count",
    "unsafe_pid",
    "duplicate_pid",
)


def _decode(open_stream, what: str) -> Image.Image:
    """Open and fully decode an image, turning every failure into a DataError."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse that range too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_stream() as fh:
                img = Image.open(fh)
                if limit is not None and img.width * img.height > limit:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img.load()  # decode now, while the stream is open
        return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{what} is too large to decode safely (limit {limit} pixels): {exc}", kind="image_too_large"
        ) from exc
    except Exception as exc:  # decoders raise many types (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"{what} is corrupt or unreadable: {type(exc).__name__}: {exc}", kind="corrupt_image") from exc


def load_image(value: Any) -> Image.Image:
    """Decode an image from a {"bytes", "path"} dict, raw bytes, a path or a PIL image.

    Dicts use ``bytes`` when present, else ``path``. A list/tuple/1-d array holding one
    image is unwrapped (RLinf rows keep images in lists); any other count is a
    DataError of kind "image_count", since a sample here has exactly one image. The
    pixels are fully decoded (``img.load()``) so corrupt data fails here. Raises
    DataError for missing, unreadable or corrupt data, and for images above PIL's
    ``MAX_IMAGE_PIXELS`` ("too large to decode safely"); its ``kind`` says which.
    """
    data: Any = None
    path: Any = None
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        if len(value) != 1:
            raise DataError(
                f"row has {len(value)} images; this pipeline uses exactly one image per sample", kind="image_count"
            )
        return load_image(value[0])
    if isinstance(value, Image.Image):
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and value.width * value.height > limit:
            raise DataError(
                f"PIL image of {value.width}x{value.height} is too large to decode safely", kind="image_too_large"
            )
        try:
            value.load()
        except Exception as exc:
            raise DataError(
                f"PIL image is corrupt or unreadable: {type(exc).__name__}: {exc}", kind="corrupt_image"
            ) from exc
        return value
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = value
    elif isinstance(value, (str, os.PathLike)):
        path = value
    elif is_missing(value):
        raise DataError("image is missing", kind="missing_image")
    else:
        raise DataError(f"unsupported image value of type {type(value).__name__}", kind="corrupt_image")

    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 0:
        blob = bytes(data)
        label = f"image bytes ({len(blob)} bytes" + (f", path {path}" if isinstance(path, str) and path else "") + ")"
        return _decode(lambda: io.BytesIO(blob), label)
    if isinstance(path, (str, os.PathLike)) and os.fspath(path):
        file = os.fspath(path)
        if not os.path.isfile(file):
            raise DataError(f"image file {file} does not exist (and there are no image bytes)", kind="missing_image")
        return _decode(lambda: open(file, "rb"), f"image file {file}")
    raise DataError("image has neither bytes nor a path", kind="missing_image")


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """Return an RGB copy of ``img`` resized to exactly ``size`` x ``size`` (LANCZOS).

    Transparent images (RGBA, LA, palette with transparency) are composited on white;
    L, P, CMYK, 16-bit and other modes are converted to RGB. Aspect ratio is not kept.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise DataError(f"image size must be a positive integer, got {size!r}")
    try:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        elif img.mode.startswith("I;16"):
            # 16-bit grey: scale to 8 bits instead of clipping at 255
            img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        return img.resize((int(size), int(size)), Image.Resampling.LANCZOS)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot convert image of mode {img.mode} to RGB: {exc}", kind="corrupt_image") from exc


_SAFE_PID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def prepare_images(df: pd.DataFrame, out_dir: str | os.PathLike, size: int) -> tuple[pd.DataFrame, list[dict]]:
    """Decode, resize and save each row's image to ``out_dir/{pid}.png``.

    Returns (rows whose image was written, skipped) where the frame gains
    ``image_path`` (absolute path str) and ``image_sha256`` (sha256 of the resized
    image's raw RGB bytes, for de-duplication across splits) and loses
    ``decoded_image``; ``skipped`` lists {"pid", "column", "reason", "kind"} for rows whose image
    is missing/corrupt/too large or not exactly one image, whose pid is not a safe file
    name, or whose pid repeats (``kind`` is one of SKIP_KINDS; count_skips tallies
    them). Each PNG is written to a temporary name and then renamed into place.
    """
    missing = [c for c in ("pid", "decoded_image") if c not in df.columns]
    if missing:
        raise DataError(f"prepare_images: missing column(s) {missing}; columns found: {list(df.columns)}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    kept_rows: list[int] = []
    paths: list[str] = []
    hashes: list[str] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    for pos, (pid, value) in enumerate(zip(df["pid"], df["decoded_image"])):
        pid = str(pid)
        if not _SAFE_PID.fullmatch(pid):
            skipped.append({"pid": pid, "column": "pid", "reason": f"pid {pid!r} is not a safe file name",
                            "kind": "unsafe_pid"})
            continue
        if pid in seen:
            skipped.append({"pid": pid, "column": "pid", "reason": f"duplicate pid {pid!r}", "kind": "duplicate_pid"})
            continue
        try:
            img = resize_image(load_image(value), size)
        except DataError as exc:
            # unclassified image errors are unusable data all the same
            skipped.append({"pid": pid, "column": "decoded_image", "reason": str(exc),
                            "kind": exc.kind or "corrupt_image"})
            continue
        seen.add(pid)
        final = out / f"{pid}.png"
        with atomic_file(final) as tmp:
            img.save(tmp, format="PNG")
        kept_rows.append(pos)
        paths.append(str(final))
        hashes.append(hashlib.sha256(img.tobytes()).hexdigest())
    result = df.iloc[kept_rows].drop(columns=["decoded_image"]).reset_index(drop=True)
    result["image_path"] = pd.Series(paths, dtype=object)
    result["image_sha256"] = pd.Series(hashes, dtype=object)
    return result, skipped


def count_skips(skipped: list[Mapping]) -> dict[str, int]:
    """How many of prepare_images' skipped entries there are of each kind, plus ``total``.

    Every kind in SKIP_KINDS is present (zeros included) so runs compare key by key;
    an entry with an unknown or no kind is counted under its own key ("unknown").
    """
    counts = dict.fromkeys(SKIP_KINDS, 0)
    for entry in skipped:
        kind = entry.get("kind") or "unknown"
        counts[kind] = counts.get(kind, 0) + 1
    counts["total"] = len(skipped)
    return counts
