"""Model stage: the base policy every later stage starts from."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.core.demo.warmstart import build_demo_base_model
from vlmrl_pipeline.core.lineage import check_model_available, write_model_ref
from vlmrl_pipeline.core.samples import SPLIT_TRAIN, read_manifest, split_rows
from vlmrl_pipeline.execution import CPU_TAGS
from vlmrl_pipeline.resources import NO_OP_CONFIG, ArtifactStore, DataSettingsResource, ModelSettingsResource

CHECKPOINT_DIR = "checkpoint"


@asset(config_schema=NO_OP_CONFIG,
       group_name="model", deps=[resized_images], kinds={"pytorch", "huggingface"}, code_version="model-1",
       tags=CPU_TAGS)
def base_model(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
) -> MaterializeResult:
    """The policy before RL: a hub model reference (real profile) or the demo model built here.

    With a hub id (``unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit``) this records the id and revision that every
    later stage loads. With ``demo:tiny-qwen3-vl`` it builds a Qwen3-VL-architecture model with its own tokenizer
    and warm-starts it on the training split only, so that its format compliance starts between 0% and 100%, as a
    real instruct model's does.
    """
    settings = model_settings.to_core()
    metadata: dict = {"model_name": settings.model_name, "revision": settings.revision or "unpinned"}
    if not settings.is_demo:
        # Before anything is written: a name that cannot be loaded fails here and the previous artifact stays.
        metadata.update(check_model_available(settings.model_name, settings.revision))
    with artifacts.staging(context.asset_key) as tmp:
        if settings.is_demo:
            artifacts.verify(resized_images, log=context.log.warning)
            train_rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_TRAIN)
            start = time.perf_counter()
            checkpoint, losses = build_demo_base_model(
                train_rows, tmp / CHECKPOINT_DIR, settings.tiny_model, model_settings.warm_start_settings(),
                style=data_settings.to_core().prompt_style, log=context.log.info,
            )
            from vlmrl_pipeline.core.model.loading import load_model

            model, _, _ = load_model(str(checkpoint), backend="transformers", dtype="float32", device="cpu")
            metadata.update(
                num_parameters=int(sum(p.numel() for p in model.parameters())),
                warm_start_rows=len(train_rows),
                warm_start_first_loss=float(losses[0]),
                warm_start_final_loss=float(losses[-1]),
                build_seconds=round(time.perf_counter() - start, 1),
            )
            write_model_ref(tmp, model_name=settings.model_name, revision=None, is_demo=True,
                            checkpoint_dir=CHECKPOINT_DIR)
        else:
            write_model_ref(tmp, model_name=settings.model_name, revision=settings.revision, is_demo=False,
                            checkpoint_dir=None)
    metadata["path"] = MetadataValue.path(str(artifacts.asset_dir(context.asset_key)))
    return MaterializeResult(metadata={**metadata, **environment_metadata()})


def base_model_path(artifacts: ArtifactStore) -> tuple[str, dict]:
    """What to load for the base policy (checkpoint folder or hub id), and the model reference itself."""
    from vlmrl_pipeline.core.lineage import model_load_path, read_model_ref

    folder = artifacts.asset_dir(base_model)
    ref = read_model_ref(folder)
    return model_load_path(ref, folder), ref
