"""Data stage: the filtered MathVista table, then resized images with the held-out split."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from vlmrl_pipeline.core.datasets import filter_mathvista, load_mathvista, prepare_images, split_train_eval
from vlmrl_pipeline.core.export import sha256_file
from vlmrl_pipeline.core.profiles import SYNTHETIC_SOURCE
from vlmrl_pipeline.core.samples import MANIFEST_NAME, SPLIT_EVAL, SPLIT_TRAIN
from vlmrl_pipeline.core.synthetic import write_synthetic_mathvista
from vlmrl_pipeline.resources import ArtifactStore, DataSettingsResource

FILTERED_NAME = "filtered.parquet"
PREVIEW_COLUMNS = ["pid", "question", "answer", "question_type", "answer_type"]


@asset(group_name="data", kinds={"parquet"}, code_version="1")
def mathvista_filtered(
    context: AssetExecutionContext, artifacts: ArtifactStore, data_settings: DataSettingsResource
) -> MaterializeResult:
    """MathVista rows kept for this run, as one parquet file (images embedded, MathVista's schema).

    Source: the hub (``AI4Math/MathVista``), a local copy in the hub's parquet layout, or the synthetic data set
    rendered here (the demo). Rows without an answer are always dropped; ``numeric_only`` keeps numeric answers
    (the seeds' rule) and ``free_form_only`` drops multiple choice. Every drop is counted in the metadata.
    """
    settings = data_settings.to_core()
    source = settings.source
    if source == SYNTHETIC_SOURCE:
        # Rendered into the hub's folder layout, then read back through the same loader a local copy uses.
        folder = artifacts.asset_dir("synthetic_mathvista")
        write_synthetic_mathvista(folder, num_rows=settings.synthetic_rows, seed=settings.seed,
                                  image_size=settings.image_size, split=settings.split)
        source = str(folder)
    raw = load_mathvista(source, settings.split)
    kept, counts = filter_mathvista(raw, numeric_only=settings.numeric_only, free_form_only=settings.free_form_only)
    if kept.empty:
        raise ValueError(f"no rows left after filtering {settings.source!r} ({counts})")
    with artifacts.staging("mathvista_filtered") as tmp:
        kept.to_parquet(tmp / FILTERED_NAME, index=False)
        digest = sha256_file(tmp / FILTERED_NAME)
    context.log.info(f"kept {counts['rows_kept']} of {counts['rows_in']} rows from {settings.source}")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(artifacts.asset_dir("mathvista_filtered") / FILTERED_NAME)),
            "source": settings.source,
            "split": settings.split,
            "numeric_only": settings.numeric_only,
            "free_form_only": settings.free_form_only,
            **{k: int(v) for k, v in counts.items()},
            "dataset_sha256": digest,
            "preview": MetadataValue.md(kept[PREVIEW_COLUMNS].head(10).to_markdown(index=False)),
        }
    )


@asset(group_name="data", deps=[mathvista_filtered], kinds={"pillow", "parquet"}, code_version="1")
def resized_images(
    context: AssetExecutionContext, artifacts: ArtifactStore, data_settings: DataSettingsResource
) -> MaterializeResult:
    """Every kept image decoded, converted to RGB and resized to ``image_size`` squared, plus the train/eval split.

    Writes ``images/{pid}.png`` and ``manifest.parquet`` (one row per usable sample, with ``split``,
    ``image_path`` and ``image_sha256``). Unreadable images are skipped and listed. ``eval_size`` rows are held out
    for evaluation; no row of them, and no image identical to one of theirs, is ever trained on.
    """
    settings = data_settings.to_core()
    filtered = pd.read_parquet(artifacts.asset_dir("mathvista_filtered") / FILTERED_NAME)
    final_dir = artifacts.asset_dir("resized_images")
    with artifacts.staging("resized_images") as tmp:
        prepared, skipped = prepare_images(filtered, tmp / "images", settings.image_size)
        if prepared.empty:
            raise ValueError(f"all {len(filtered)} images failed to load: {skipped[:5]}")
        train, held_out = split_train_eval(prepared, settings.eval_size, settings.seed)
        manifest = pd.concat([train.assign(split=SPLIT_TRAIN), held_out.assign(split=SPLIT_EVAL)], ignore_index=True)
        # Relative to the asset folder, so the data folder can move (read_manifest resolves them).
        manifest["image_path"] = [f"images/{pid}.png" for pid in manifest["pid"]]
        manifest.to_parquet(tmp / MANIFEST_NAME, index=False)
    dropped_duplicates = len(prepared) - len(manifest)
    for item in skipped:
        context.log.warning(f"skipped pid {item['pid']}: {item['reason']}")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(final_dir)),
            "image_size": settings.image_size,
            "num_images": len(prepared),
            "num_train": len(train),
            "num_eval": len(held_out),
            "num_skipped": len(skipped),
            "skipped": MetadataValue.json(skipped[:50]),
            "dropped_train_duplicates_of_eval_images": int(dropped_duplicates),
            "eval_pids": MetadataValue.json(sorted(held_out["pid"].astype(str).tolist())),
        }
    )


@asset_check(asset=resized_images, blocking=True, description="Train and eval are disjoint by pid and by image")
def train_eval_disjoint(artifacts: ArtifactStore) -> AssetCheckResult:
    """No evaluation sample (by ``pid`` or by identical resized image) appears in the training split."""
    manifest = pd.read_parquet(artifacts.asset_dir("resized_images") / MANIFEST_NAME)
    train = manifest[manifest["split"] == SPLIT_TRAIN]
    held_out = manifest[manifest["split"] == SPLIT_EVAL]
    shared_pids = sorted(set(train["pid"].astype(str)) & set(held_out["pid"].astype(str)))
    shared_images = sorted(set(train["image_sha256"]) & set(held_out["image_sha256"]))
    return AssetCheckResult(
        passed=not shared_pids and not shared_images and len(held_out) > 0 and len(train) > 0,
        metadata={
            "num_train": len(train),
            "num_eval": len(held_out),
            "shared_pids": len(shared_pids),
            "shared_images": len(shared_images),
        },
    )
