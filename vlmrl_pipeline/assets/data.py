"""Data stage: the filtered MathVista table, then resized images with the held-out split."""

import json

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from vlmrl_pipeline.assets.metadata import environment_metadata, table_metadata
from vlmrl_pipeline.core.data.filtering import filter_rows, split_train_eval, split_validation
from vlmrl_pipeline.core.data.images import count_skips, prepare_images
from vlmrl_pipeline.core.data.mathvista import load_mathvista
from vlmrl_pipeline.core.data.rlinf import load_rlinf
from vlmrl_pipeline.core.data.schema import MATHVISTA_COLUMNS
from vlmrl_pipeline.core.demo.synthetic import write_synthetic_mathvista
from vlmrl_pipeline.core.files import sha256_file, write_json_atomic
from vlmrl_pipeline.core.profiles import SYNTHETIC_SOURCE
from vlmrl_pipeline.core.samples import MANIFEST_NAME, SPLIT_EVAL, SPLIT_TRAIN, SPLIT_VALIDATION
from vlmrl_pipeline.execution import CPU_TAGS
from vlmrl_pipeline.resources import NO_OP_CONFIG, ArtifactStore, DataSettingsResource

FILTERED_NAME = "filtered.parquet"
FILTER_COUNTS_NAME = "filter_counts.json"
SKIPPED_NAME = "skipped.json"
DROPPED_NAME = "dropped.json"
SYNTHETIC_DIR = "synthetic_mathvista"
"""Beside the asset folders: the synthetic source, rendered there in the hub's layout (not an asset of its own)."""
"""Beside the filter's counts: one entry per dropped row, ``{"row", "pid", "column", "kind", "reason"}``."""
LOST_KINDS = ("unreadable", "missing_pid", "missing_answer", "duplicate_pid")
"""Drops caused by bad input (``few_rows_lost`` counts them), as opposed to the filters' deliberate choices."""
MAX_LISTED = 200
"""Entries listed in metadata (the JSON files hold all of them)."""
PREVIEW_COLUMNS = ["pid", "question", "answer", "question_type", "answer_type"]


@asset(config_schema=NO_OP_CONFIG,
       group_name="data", kinds={"parquet"}, code_version="data-2", tags=CPU_TAGS)
def mathvista_filtered(
    context: AssetExecutionContext, artifacts: ArtifactStore, data_settings: DataSettingsResource
) -> MaterializeResult:
    """The source rows kept for this run, as one parquet file in MathVista's schema (images embedded or linked).

    Source: the hub (``AI4Math/MathVista``), a local copy in the hub's parquet layout or in MathVista's GitHub
    layout (``testmini.json`` + ``images/``), a data set in RLinf's form such as geo3k (``dataset_format=rlinf``,
    read through ``prompt_key``/``answer_key``/``image_keys``), or the synthetic set rendered here (the demo).
    Rows without an answer and repeated pids are always dropped; ``numeric_only`` keeps numeric answers (the
    seeds' rule) and ``free_form_only`` drops multiple choice. Rows without a pid, or with text that is not UTF-8,
    are dropped too. Every drop is counted in the metadata and named (row, pid, column, why) in ``dropped.json``.
    """
    # Held from the start: the synthetic source is rendered into its folder before the staging step.
    with artifacts.lock(context.asset_key):
        return _filter_source(context, artifacts, data_settings)


def _filter_source(context: AssetExecutionContext, artifacts: ArtifactStore,
                   data_settings: DataSettingsResource) -> MaterializeResult:
    settings = data_settings.to_core()
    source = settings.source
    if source == SYNTHETIC_SOURCE:
        # Rendered into the hub's folder layout, then read back through the same loader a local copy uses.
        folder = artifacts.asset_dir(SYNTHETIC_DIR)
        write_synthetic_mathvista(folder, num_rows=settings.synthetic_rows, seed=settings.seed,
                                  image_size=settings.image_size, split=settings.split,
                                  tasks=settings.synthetic_tasks)
        source = str(folder)
    if settings.dataset_format == "rlinf":
        raw = load_rlinf(source, settings.split, prompt_key=settings.prompt_key, answer_key=settings.answer_key,
                         image_keys=settings.image_keys)
    elif settings.dataset_format == "mathvista":
        raw = load_mathvista(source, settings.split)
    else:
        raise ValueError(f"dataset_format must be 'mathvista' or 'rlinf', got {settings.dataset_format!r}")
    kept, counts, dropped = filter_rows(raw, numeric_only=settings.numeric_only,
                                        free_form_only=settings.free_form_only)
    if kept.empty:
        raise ValueError(f"no rows left after filtering {settings.source!r} ({counts}); first drops: {dropped[:5]}")
    with artifacts.staging(context.asset_key) as tmp:
        kept.to_parquet(tmp / FILTERED_NAME, index=False)
        write_json_atomic(tmp / FILTER_COUNTS_NAME, counts)
        write_json_atomic(tmp / DROPPED_NAME, dropped)
        digest = sha256_file(tmp / FILTERED_NAME)
    context.log.info(f"kept {counts['rows_kept']} of {counts['rows_in']} rows from {settings.source}: {counts}")
    for item in dropped:
        if item["kind"] in LOST_KINDS:  # bad input, not a filter choice: say which row and why
            context.log.warning(f"dropped row {item['row']} (pid {item['pid']}, column {item['column']!r}, "
                                f"{item['kind']}): {item['reason']}")
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            **table_metadata(kept),
            "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key) / FILTERED_NAME)),
            "source": settings.source,
            "split": settings.split,
            "dataset_format": settings.dataset_format,
            "numeric_only": settings.numeric_only,
            "free_form_only": settings.free_form_only,
            **{k: int(v) for k, v in counts.items()},
            # every drop named (row, pid, column, why); all of them are in dropped.json
            "dropped": MetadataValue.json(dropped[:MAX_LISTED]),
            "num_multi_choice_kept": int((kept["question_type"] == "multi_choice").sum()),
            "dataset_sha256": digest,
            "preview": MetadataValue.md(kept[PREVIEW_COLUMNS].head(10).to_markdown(index=False)),
        }
    )


@asset_check(asset=mathvista_filtered, blocking=True,
             description="Non-empty, MathVista's columns, an answer in every row, unique pids")
def filtered_rows_valid(artifacts: ArtifactStore) -> AssetCheckResult:
    """The filtered table is what every later stage assumes: rows exist, the schema is MathVista's, every row has
    an answer and a distinct pid. A violation stops the run before images are prepared."""
    table = pd.read_parquet(artifacts.asset_dir(mathvista_filtered) / FILTERED_NAME)
    missing_columns = [c for c in MATHVISTA_COLUMNS if c not in table.columns]
    blank_answers = int(table["answer"].isna().sum() + (table["answer"].astype(str).str.strip() == "").sum()) \
        if "answer" in table.columns else len(table)
    repeated_pids = int(table["pid"].astype(str).duplicated().sum()) if "pid" in table.columns else len(table)
    return AssetCheckResult(
        passed=len(table) > 0 and not missing_columns and blank_answers == 0 and repeated_pids == 0,
        metadata={"num_rows": len(table), "missing_columns": MetadataValue.json(missing_columns),
                  "blank_answers": blank_answers, "repeated_pids": repeated_pids},
    )


@asset(config_schema=NO_OP_CONFIG,
       group_name="data", deps=[mathvista_filtered], kinds={"pillow", "parquet"}, code_version="images-2",
       tags=CPU_TAGS)
def resized_images(
    context: AssetExecutionContext, artifacts: ArtifactStore, data_settings: DataSettingsResource
) -> MaterializeResult:
    """Every kept image decoded, converted to RGB and resized to ``image_size`` squared, plus the train/eval split.

    Writes ``images/{pid}.png``, ``manifest.parquet`` (one row per usable sample, with ``split``, ``image_path``
    and ``image_sha256``) and ``skipped.json``. A missing, corrupt or oversized image, or a row with other than
    one image, is skipped and counted by kind. ``eval_size`` rows are held out for evaluation; no row of them,
    and no image identical to one of theirs, is ever trained on.
    """
    settings = data_settings.to_core()
    artifacts.verify(mathvista_filtered, log=context.log.warning)
    filtered = pd.read_parquet(artifacts.asset_dir(mathvista_filtered) / FILTERED_NAME)
    final_dir = artifacts.asset_dir(context.asset_key)
    with artifacts.staging(context.asset_key) as tmp:
        prepared, skipped = prepare_images(filtered, tmp / "images", settings.image_size)
        if prepared.empty:
            raise ValueError(f"all {len(filtered)} images failed to load: {skipped[:5]}")
        train, held_out = split_train_eval(prepared, settings.eval_size, settings.seed)
        splits = [train.assign(split=SPLIT_TRAIN), held_out.assign(split=SPLIT_EVAL)]
        validation = train.iloc[0:0]
        if settings.validation_size:  # 0: the manifest is the two-split one, byte for byte
            carved, validation = split_validation(train, settings.validation_size, settings.seed)
            splits = [carved.assign(split=SPLIT_TRAIN), held_out.assign(split=SPLIT_EVAL),
                      validation.assign(split=SPLIT_VALIDATION)]
            train = carved
        manifest = pd.concat(splits, ignore_index=True)
        # Relative to the asset folder, so the data folder can move (read_manifest resolves them).
        manifest["image_path"] = [f"images/{pid}.png" for pid in manifest["pid"]]
        manifest.to_parquet(tmp / MANIFEST_NAME, index=False)
        write_json_atomic(tmp / SKIPPED_NAME, skipped)
    dropped_duplicates = len(prepared) - len(manifest)  # of eval's images, then validation's
    for item in skipped:
        context.log.warning(f"skipped pid {item['pid']} ({item['kind']}): {item['reason']}")
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            **table_metadata(manifest),
            "path": MetadataValue.path(str(final_dir)),
            "image_size": settings.image_size,
            "num_images": len(prepared),
            "num_train": len(train),
            "num_eval": len(held_out),
            "num_validation": len(validation),
            "num_skipped": len(skipped),
            **{f"skipped_{kind}": n for kind, n in count_skips(skipped).items() if kind != "total"},
            "skipped": MetadataValue.json(skipped[:MAX_LISTED]),
            "dropped_train_duplicates_of_eval_images": int(dropped_duplicates),
            "eval_pids": MetadataValue.json(sorted(held_out["pid"].astype(str).tolist())),
        }
    )


def _load_manifest_splits(artifacts: ArtifactStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = pd.read_parquet(artifacts.asset_dir(resized_images) / MANIFEST_NAME)
    return manifest[manifest["split"] == SPLIT_TRAIN], manifest[manifest["split"] == SPLIT_EVAL]


@asset_check(asset=resized_images, blocking=True,
             description="Train, eval and validation are pairwise disjoint by pid and by image")
def train_eval_disjoint(artifacts: ArtifactStore) -> AssetCheckResult:
    """No sample (by ``pid`` or by identical resized image) is in two of the splits: training, held-out
    evaluation, validation (when ``validation_size`` carved one); training and evaluation are never empty."""
    manifest = pd.read_parquet(artifacts.asset_dir(resized_images) / MANIFEST_NAME)
    splits = {name: manifest[manifest["split"] == name] for name in (SPLIT_TRAIN, SPLIT_EVAL, SPLIT_VALIDATION)}
    shared: dict[str, int] = {}
    for i, (a, rows_a) in enumerate(splits.items()):
        for b, rows_b in list(splits.items())[i + 1:]:
            shared[f"shared_pids_{a}_{b}"] = len(set(rows_a["pid"].astype(str)) & set(rows_b["pid"].astype(str)))
            shared[f"shared_images_{a}_{b}"] = len(set(rows_a["image_sha256"]) & set(rows_b["image_sha256"]))
    unknown = sorted(set(manifest["split"]) - set(splits))
    return AssetCheckResult(
        passed=not any(shared.values()) and not unknown and len(splits[SPLIT_EVAL]) > 0
        and len(splits[SPLIT_TRAIN]) > 0,
        metadata={
            "num_train": len(splits[SPLIT_TRAIN]),
            "num_eval": len(splits[SPLIT_EVAL]),
            "num_validation": len(splits[SPLIT_VALIDATION]),
            # The two-split names, kept: train vs eval.
            "shared_pids": shared[f"shared_pids_{SPLIT_TRAIN}_{SPLIT_EVAL}"],
            "shared_images": shared[f"shared_images_{SPLIT_TRAIN}_{SPLIT_EVAL}"],
            **shared,
            "unknown_splits": MetadataValue.json(unknown),
        },
    )


@asset_check(asset=resized_images, blocking=True,
             description="Few rows lost to bad input (missing answers, duplicate pids, bad images); none empty")
def few_rows_lost(artifacts: ArtifactStore, data_settings: DataSettingsResource) -> AssetCheckResult:
    """Rows lost to bad input stay under ``max_lost_fraction`` of the source, and both splits have rows.

    Rows the filters remove on purpose (non-numeric answers, multiple choice) are not losses; a missing pid or
    answer, undecodable text, a repeated pid and an unusable image are.
    """
    counts = json.loads((artifacts.asset_dir(mathvista_filtered) / FILTER_COUNTS_NAME).read_text())
    skipped = json.loads((artifacts.asset_dir(resized_images) / SKIPPED_NAME).read_text())
    train, held_out = _load_manifest_splits(artifacts)
    lost = sum(counts.get(f"dropped_{kind}", 0) for kind in LOST_KINDS) + len(skipped)
    fraction = lost / counts["rows_in"] if counts["rows_in"] else 1.0
    limit = data_settings.max_lost_fraction
    return AssetCheckResult(
        passed=fraction <= limit and len(train) > 0 and len(held_out) > 0,
        metadata={
            "rows_in": counts["rows_in"],
            "rows_lost": lost,
            "lost_fraction": round(fraction, 4),
            "max_lost_fraction": limit,
            **_lost_by_kind(counts, skipped),
            "num_train": len(train),
            "num_eval": len(held_out),
        },
    )


def _lost_by_kind(counts: dict, skipped: list[dict]) -> dict[str, int]:
    """``lost_<kind>``: the filter's bad-input drops plus the image stage's skips (a duplicate pid can be either)."""
    lost = {f"lost_{kind}": int(counts.get(f"dropped_{kind}", 0)) for kind in LOST_KINDS}
    for kind, n in count_skips(skipped).items():
        if kind != "total":
            lost[f"lost_{kind}"] = lost.get(f"lost_{kind}", 0) + n
    return lost
