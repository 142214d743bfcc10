"""RLinf's form (geo3k as RLinf trains on it: a prompt with ``<image>``, image lists, ``\\boxed{}`` answers),
loaded into the canonical MathVista schema."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from vlmrl_pipeline.core.answers.matching import parse_number, unbox_answer
from vlmrl_pipeline.core.data.schema import MATHVISTA_COLUMNS, UNREADABLE_COLUMN, DataError, is_missing, normalise_frame
from vlmrl_pipeline.core.data.sources import (
    check_local_source,
    mark_undecodable,
    read_json,
    read_parquet_records,
    split_files,
)


def strip_boxed(text: Any) -> Any:
    """The content of a whole-string ``\\boxed{...}`` (balanced braces), else ``text`` unchanged.

    ``"\\boxed{2\\sqrt{3}}"`` gives ``"2\\sqrt{3}"``; ``"\\boxed{1}+\\boxed{2}"`` and
    ``"x = \\boxed{1}"`` are left alone, since the box is not the whole answer there.
    Surrounding whitespace is ignored; non-strings come back unchanged.
    """
    if not isinstance(text, str):
        return text
    # One brace matcher for gold answers everywhere: the scorers' (escapes and "\\boxed {" handled there).
    unboxed = unbox_answer(text)
    return text if unboxed == text.strip() else unboxed


def _image_list(value: Any) -> list:
    """An image cell as a list of images: lists/tuples/1-d arrays as they are, a single image wrapped."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == object:
        return list(value)
    if is_missing(value):
        return []
    return [value]


def _image_record(image: Any) -> Any:
    """One image as a {"bytes", "path"} dict, so a column of them has one parquet type whatever the source held.

    Values that are neither bytes, a path, a dict nor a PIL image are passed through for load_image to refuse.
    """
    if isinstance(image, Mapping):
        data = image.get("bytes")
        return {"bytes": bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else None,
                "path": None if is_missing(image.get("path")) else str(image.get("path"))}
    if isinstance(image, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(image), "path": None}
    if isinstance(image, (str, os.PathLike)):
        return {"bytes": None, "path": os.fspath(image)}
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    return image


def _relative_to(image: Any, folder: Path) -> Any:
    """Resolve a relative image path (bare or in a {"bytes": None, "path"} dict) against ``folder``."""
    if isinstance(image, str) and image and not os.path.isabs(image):
        return os.path.abspath(folder / image)
    if isinstance(image, Mapping) and not image.get("bytes"):
        path = image.get("path")
        if isinstance(path, str) and path and not os.path.isabs(path):
            return {**image, "path": os.path.abspath(folder / path)}
    return image


def _read_json_records(path: Path) -> pd.DataFrame:
    """Rows of a ``.jsonl`` (one object a line) or ``.json`` (a list of objects, or objects keyed by id) file."""
    if path.suffix == ".jsonl":
        records = []
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:  # see sources.read_json
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"cannot read JSON lines file {path}: line {number}: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read JSON lines file {path}: {exc}") from exc
    else:
        data = read_json(path)
        if isinstance(data, Mapping):
            # keyed by id: the key is the id unless the row has its own
            records = [{"id": k, **v} if isinstance(v, Mapping) else v for k, v in data.items()]
        elif isinstance(data, list):
            records = data
        else:
            raise DataError(f"{path}: expected a list of rows or an object of rows, got {type(data).__name__}")
    bad = [i for i, r in enumerate(records) if not isinstance(r, Mapping)]
    if bad:
        raise DataError(f"{path}: row {bad[0]} is not a JSON object")
    return pd.DataFrame([mark_undecodable(r, path) for r in records])


def _load_hub_rlinf(source: str, split: str, image_keys: tuple[str, ...]) -> pd.DataFrame:
    """Load ``source`` from the hub with every image (also inside lists) left undecoded."""
    import datasets  # lazy: heavy import, only needed for hub ids

    def undecoded(feature: Any) -> Any:
        if isinstance(feature, datasets.Image):
            return datasets.Image(decode=False)
        if isinstance(feature, datasets.Sequence):
            return datasets.Sequence(undecoded(feature.feature), length=feature.length)
        list_type = getattr(datasets, "List", None)  # datasets >= 4 spells list features this way
        if list_type is not None and isinstance(feature, list_type):
            return list_type(undecoded(feature.feature), length=feature.length)
        if isinstance(feature, list):
            return [undecoded(f) for f in feature]
        if isinstance(feature, dict):
            return {k: undecoded(v) for k, v in feature.items()}
        return feature

    ds = datasets.load_dataset(source, split=split)
    for key in image_keys:
        if key in ds.column_names:
            feature = ds.features[key]
            plain = undecoded(feature)
            if plain != feature:
                ds = ds.cast_column(key, plain)
    return ds.to_pandas()


def _answer_type(answer: Any) -> str:
    if parse_number(answer) is None:
        return "text"
    return "float" if "." in str(answer) else "integer"


def load_rlinf(
    source: str,
    split: str = "train",
    *,
    prompt_key: str = "problem",
    answer_key: str = "answer",
    image_keys: tuple[str, ...] | list[str] = ("images",),
    pid_key: str | None = None,
) -> pd.DataFrame:
    """Load RLinf-format rows (geo3k as RLinf trains on it) into the canonical MathVista schema.

    ``source`` is a local folder (``{split}-*.parquet`` / ``{split}.parquet``, or else
    ``{split}.jsonl`` / ``{split}.json`` and their ``{split}-*`` shards, recursively; relative
    image paths in JSON rows are taken from the file's folder) or a hub id read with
    ``datasets.load_dataset`` (images undecoded). Each row has a prompt (``prompt_key``)
    whose text may hold ``<image>`` placeholders, image columns (``image_keys``; a list
    of images, a single image, bytes or {"bytes", "path"} dicts) and an answer
    (``answer_key``), often ``\\boxed{x}``.

    The result has exactly MATHVISTA_COLUMNS, so filtering, image preparation and
    training work unchanged: ``pid`` from ``pid_key`` (when given and present), else
    ``id``/``pid``, else ``{split}-{row index}``; ``question`` = ``query`` = the prompt
    text, placeholders kept (chat_prompt places the image there); ``decoded_image`` =
    the row's images as a list of {"bytes", "path"} dicts (one parquet type for every
    row; a count other than one is a counted "image_count" skip in prepare_images);
    ``answer`` = strip_boxed(raw answer);
    ``question_type`` "free_form"; ``answer_type`` "integer"/"float"/"text";
    ``metadata`` {"format": "rlinf", "raw_answer", "num_images"}.
    Raises DataError naming the setting to change when a key is not a column.
    """
    source = os.fspath(source)
    image_keys = (image_keys,) if isinstance(image_keys, str) else tuple(image_keys)
    if not image_keys:
        raise DataError("load_rlinf: image_keys is empty; name the column(s) that hold the images")
    if os.path.isdir(source):
        root = Path(source)
        files = split_files(root, split, ".parquet")
        json_files = split_files(root, split, ".jsonl") + split_files(root, split, ".json")
        if files and json_files:
            raise DataError(
                f"{root} holds split {split!r} as parquet ({files[0]}) and as JSON ({json_files[0]}); "
                f"point source at the folder of the one to use"
            )
        if files:
            df = pd.concat([read_parquet_records(f) for f in files], ignore_index=True)
            where = f"{root} split {split!r} ({len(files)} file(s))"
        elif json_files:
            frames = []
            for f in json_files:
                frame = _read_json_records(f)
                # relative image paths point from the JSON file's folder, as in MathVista's GitHub layout
                for key in image_keys:
                    if key in frame.columns:
                        frame[key] = pd.Series(
                            [[_relative_to(i, f.parent) for i in _image_list(v)] if isinstance(v, (list, tuple))
                             else _relative_to(v, f.parent) for v in frame[key]],
                            dtype=object, index=frame.index,
                        )
                frames.append(frame)
            df = pd.concat(frames, ignore_index=True)
            where = f"{root} split {split!r} ({len(json_files)} JSON file(s))"
        else:
            raise DataError(
                f"no files for split {split!r} under {root} (looked for '{split}-*.parquet', '{split}.parquet', "
                f"'{split}-*.jsonl', '{split}.jsonl' and '{split}.json', recursively)"
            )
    else:
        check_local_source(source)
        df = _load_hub_rlinf(source, split, image_keys)
        where = f"hub dataset {source!r} split {split!r}"

    columns = list(df.columns)
    for setting, key in [("prompt_key", prompt_key), ("answer_key", answer_key)] + [
        ("image_keys", k) for k in image_keys
    ]:
        if key not in df.columns:
            raise DataError(
                f"{where}: no column {key!r} (set {setting} to the right column); columns found: {columns}"
            )
    if len(df) == 0:
        raise DataError(f"{where}: the table has no rows")
    df = df.reset_index(drop=True)
    id_column = next((c for c in ([pid_key] if pid_key else []) + ["id", "pid"] if c in df.columns), None)
    rows = []
    for i, record in enumerate(df.to_dict(orient="records")):
        pid = record.get(id_column) if id_column else None
        pid = f"{split}-{i}" if is_missing(pid) or str(pid) == "" else str(pid)
        prompt = record[prompt_key]
        prompt = None if is_missing(prompt) else str(prompt)
        raw = record[answer_key]
        raw = None if is_missing(raw) else str(raw)
        answer = None if raw is None else strip_boxed(raw).strip()
        images = [img for key in image_keys for img in _image_list(record[key])]
        rows.append({
            "pid": pid,
            "question": prompt,
            "query": prompt,
            # Always a list of {"bytes", "path"} dicts (one parquet type); load_image takes exactly one.
            "decoded_image": [_image_record(img) for img in images],
            "choices": None,
            "unit": None,
            "precision": float("nan"),
            "answer": answer,
            "question_type": "free_form",
            "answer_type": _answer_type(answer),
            "metadata": {"format": "rlinf", "raw_answer": raw, "num_images": len(images)},
            UNREADABLE_COLUMN: record.get(UNREADABLE_COLUMN),  # an undecodable cell: dropped, named, by the filter
        })
    frame = pd.DataFrame(rows, columns=[*MATHVISTA_COLUMNS, UNREADABLE_COLUMN])
    if frame[UNREADABLE_COLUMN].isna().all():
        frame = frame.drop(columns=[UNREADABLE_COLUMN])  # only present when some cell was undecodable
    return normalise_frame(frame, where)
