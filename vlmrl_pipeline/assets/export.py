"""Export stage: the adapter merged into a standalone checkpoint."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.provenance import lineage
from vlmrl_pipeline.assets.training import lora_adapter
from vlmrl_pipeline.core.export import dir_size_bytes, merge_adapter_to_checkpoint, sha256_file
from vlmrl_pipeline.core.generation import GenerationSettings, generate_completions
from vlmrl_pipeline.core.modeling import load_model
from vlmrl_pipeline.core.samples import SPLIT_EVAL, chat_prompts, open_images, read_manifest, split_rows
from vlmrl_pipeline.execution import GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import ArtifactStore, DataSettingsResource

MERGED_DTYPE = "bfloat16"


@asset(group_name="export", deps=[lora_adapter, base_model, resized_images], kinds={"safetensors", "huggingface"},
       code_version="export-1", pool=GPU_POOL, tags=GPU_TAGS, op_tags=gpu_op_tags())
def merged_model(
    context: AssetExecutionContext, artifacts: ArtifactStore, data_settings: DataSettingsResource
) -> MaterializeResult:
    """The LoRA adapter merged into the base weights, saved as a standalone 16-bit (bf16) checkpoint with its
    processor: loads with plain ``transformers`` and needs no PEFT. Verified by loading it back and generating.
    """
    load_path, ref = base_model_path(artifacts)
    with artifacts.staging("merged_model") as tmp:
        merge_adapter_to_checkpoint(load_path, artifacts.asset_dir("lora_adapter"), tmp / "checkpoint",
                                    dtype=MERGED_DTYPE, revision=ref.get("revision"))
        # Proof that the export is usable: load it with plain transformers and generate for one eval sample.
        model, processor, _ = load_model(str(tmp / "checkpoint"), backend="transformers", dtype="float32")
        rows = split_rows(read_manifest(artifacts.asset_dir("resized_images")), SPLIT_EVAL).head(1)
        sample = generate_completions(model, processor, chat_prompts(rows, data_settings.to_core().prompt_style),
                                      open_images(rows), GenerationSettings(max_new_tokens=32, batch_size=1))[0]
        weights = sorted((tmp / "checkpoint").glob("*.safetensors"))
        size = dir_size_bytes(tmp / "checkpoint")
        digest = sha256_file(weights[0]) if len(weights) == 1 else "sharded"
    context.log.info(f"merged checkpoint generates: {sample!r}")
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(artifacts.asset_dir("merged_model") / "checkpoint")),
            "dtype": MERGED_DTYPE,
            **lineage(artifacts, artifacts.asset_dir("lora_adapter"), with_rewards=False),
            "size_bytes": size,
            "weights_sha256": digest,
            "sample_generation": sample,
        }
    )
