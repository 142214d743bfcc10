"""Provenance that travels with every artifact: which model, data, rewards and adapter produced a number."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.files import write_json_atomic

MODEL_REF_NAME = "model_ref.json"


def write_model_ref(folder: str | os.PathLike, *, model_name: str, revision: str | None, is_demo: bool,
                    checkpoint_dir: str | None) -> Path:
    """Record which base model the lineage uses: a local checkpoint built here, or a hub id (+ revision)."""
    return write_json_atomic(
        Path(folder) / MODEL_REF_NAME,
        {"model_name": model_name, "revision": revision, "is_demo": is_demo, "checkpoint_dir": checkpoint_dir},
    )


def check_model_available(model_name: str, revision: str | None = None) -> dict[str, Any]:
    """Fail now, naming the setting, when ``model_name`` (a local checkpoint folder or a hub id) cannot be loaded.

    Reads only the model's ``config.json`` (through ``transformers``, so the hub cache and ``HF_HUB_OFFLINE``
    apply), not its weights: ``base_model`` calls this before it replaces the previous reference, so a typo
    fails that step at once instead of two GPU steps later. Returns ``{"model_type": ...}``.
    """
    where = f"model_name={model_name!r}" + (f" (revision {revision!r})" if revision else "")
    path = Path(os.path.expanduser(model_name))
    if path.exists() or path.is_absolute() or model_name.startswith((".", "~")):
        if not path.is_dir():
            raise ValueError(f"{where}: no checkpoint folder at {path} (a local path must be a folder holding "
                             "config.json and the weights; a hub id looks like 'org/name')")
        if not (path / "config.json").is_file():
            raise ValueError(f"{where}: {path} has no config.json, so it is not a transformers checkpoint folder")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_name, revision=revision)
    except Exception as exc:  # noqa: BLE001 - hub, validation, parsing: all mean "this cannot be loaded"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{where} cannot be loaded: {type(exc).__name__}: {first[:300]} (check the name, the "
                         "revision and, for a hub id, network access or the local hub cache)") from exc
    return {"model_type": str(getattr(config, "model_type", None) or "unknown")}


def read_model_ref(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MODEL_REF_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {MODEL_REF_NAME} in {folder}: materialize base_model first")
    return json.loads(path.read_text())


def model_load_path(ref: dict[str, Any], base_model_folder: str | os.PathLike) -> str:
    """What to pass to ``from_pretrained``: the built checkpoint (relative to the asset folder) or the hub id."""
    if ref.get("checkpoint_dir"):
        return str(Path(base_model_folder) / ref["checkpoint_dir"])
    return ref["model_name"]


# --------------------------------------------------------------------------- source fingerprints

SYNTHETIC_FINGERPRINT_KEYS = ("synthetic_rows", "seed", "image_size", "synthetic_tasks")
"""The settings that, with the split, decide what the synthetic source renders."""


def _mathvista_json_images(json_file: Path) -> list[Path]:
    """The image files a MathVista GitHub-layout ``{split}.json`` names (``image``, relative to its folder).

    An unreadable file gives none: the loader rejects that file anyway, and its own size/mtime is still hashed.
    """
    try:
        with open(json_file, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    problems = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    images = {p.get("image") for p in problems if isinstance(p, dict)}
    return sorted(json_file.parent / i for i in images if isinstance(i, str) and i)


def source_files(source: str | os.PathLike, split: str, dataset_format: str = "mathvista") -> list[Path]:
    """The files of a local source folder that the loaders read for ``split`` (sorted; missing ones included).

    ``mathvista``: the parquet shards ``{split}-*.parquet`` / ``{split}.parquet`` below the folder (the hub's
    layout, images embedded), or MathVista's GitHub layout: ``{split}.json`` in the folder or in ``data/``,
    ``query.json`` beside it when present, and every image file the json names (a named image that does not
    exist is listed too, so its arrival counts as a change). ``rlinf``: the split's parquet, ``.jsonl`` and
    ``.json`` files; image files that JSON rows point to are not followed (their columns are settings the
    caller did not pass). The same matching rule as ``data.mathvista.load_mathvista`` / ``data.rlinf.load_rlinf``
    (shared ``split_files``); when a folder holds a split twice, both are listed and the loader reports the conflict.
    """
    # The loaders' own rules, so the two cannot drift.
    from vlmrl_pipeline.core.data.mathvista import mathvista_json_files
    from vlmrl_pipeline.core.data.sources import split_files

    root = Path(source)
    files = split_files(root, split, ".parquet")
    if dataset_format == "rlinf":
        files += split_files(root, split, ".jsonl") + split_files(root, split, ".json")
    elif dataset_format == "mathvista":
        for json_file in mathvista_json_files(root, split):
            files.append(json_file)
            if (json_file.parent / "query.json").is_file():
                files.append(json_file.parent / "query.json")
            files += _mathvista_json_images(json_file)
    else:
        raise ValueError(f"dataset_format must be 'mathvista' or 'rlinf', got {dataset_format!r}")
    return sorted(set(files))


def source_fingerprint(source: str | os.PathLike, split: str, dataset_format: str = "mathvista",
                       synthetic_settings: dict[str, Any] | None = None) -> str | None:
    """A sha256 hex digest that changes when the data the lineage would load changes; None for a hub id.

    What a data-watching sensor compares between ticks, to start the lineage only when the source changed.

    * A local folder: the sorted (path relative to the folder, size, mtime_ns) of ``source_files`` plus the
      split and format. Adding, removing, replacing or touching a read file changes it; a file the loaders do
      not read (another split, a README) does not. File contents are not read, so a check costs one ``stat``
      per file even for a folder of many GB (only a GitHub-layout ``{split}.json`` is parsed, for the names of
      its images); the price is that a rewrite with the same size and mtime goes unseen, and a copy of the
      same bytes with a new mtime counts as a change.
    * ``"synthetic"``: a hash of ``synthetic_settings`` (``synthetic_rows``, ``seed``, ``image_size``,
      ``synthetic_tasks``) and the split, which is everything that decides the rendered set.
    * A hub id: None; a revision on the hub cannot be checked offline.

    Raises FileNotFoundError for a local-looking path that is not a folder, or a folder without any file for
    the split; ValueError for the synthetic source without its settings, or an unknown format.
    """
    from vlmrl_pipeline.core.data.sources import is_local_path
    from vlmrl_pipeline.core.profiles import SYNTHETIC_SOURCE

    source = os.fspath(source)
    if source == SYNTHETIC_SOURCE:
        # synthetic_tasks came later; a caller without it means the set that existed before it, "mathvista".
        synthetic_settings = {"synthetic_tasks": "mathvista", **(synthetic_settings or {})}
        missing = [k for k in SYNTHETIC_FINGERPRINT_KEYS if k not in synthetic_settings]
        if missing:
            raise ValueError(f"the synthetic source's fingerprint needs synthetic_settings with {missing}")
        state: dict[str, Any] = {"kind": "synthetic", "split": split, "dataset_format": dataset_format,
                                 **{k: synthetic_settings[k] for k in SYNTHETIC_FINGERPRINT_KEYS}}
    elif os.path.isdir(source):
        files = source_files(source, split, dataset_format)
        if not files:
            raise FileNotFoundError(f"{source} holds no {dataset_format} files for split {split!r}")
        entries = []
        for path in files:
            try:
                stat = path.stat()
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            except FileNotFoundError:
                size, mtime_ns = -1, -1  # named by the split's json but absent
            entries.append([Path(os.path.relpath(path, source)).as_posix(), size, mtime_ns])
        state = {"kind": "local", "split": split, "dataset_format": dataset_format, "files": entries}
    elif is_local_path(source):
        raise FileNotFoundError(f"local source {source} is not a folder")
    else:
        return None
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
