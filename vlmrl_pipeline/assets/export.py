"""Export stage: the adapter merged into standalone checkpoints, and the merged model as GGUF for llama.cpp."""

import hashlib
import json

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.provenance import ADAPTER_WEIGHTS, card_facts, card_sample, lineage
from vlmrl_pipeline.assets.training import lora_adapter
from vlmrl_pipeline.core.evaluation.generation import (
    end_of_turn_id,
    greedy_token_ids,
)
from vlmrl_pipeline.core.export.gguf import export_gguf, gguf_greedy_tokens, inspect_gguf, llama_cpp_runtime_available
from vlmrl_pipeline.core.export.merge import (
    read_checkpoint_config,
    stored_dtype,
)
from vlmrl_pipeline.core.export.merged import MERGE_CHECK, MERGE_CHECK_PROMPTS, MERGED_16BIT_DIR, merge_and_compare
from vlmrl_pipeline.core.export.settings import GGUF_QUANTIZER_TYPES
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.llama_cpp import LLAMA_CPP_PYTHON_VERSION, llama_cpp_tools
from vlmrl_pipeline.core.memory import peak_memory
from vlmrl_pipeline.core.model.card import merged_card, portable_base_reference
from vlmrl_pipeline.core.model.loading import load_model
from vlmrl_pipeline.core.prompts import chat_prompts
from vlmrl_pipeline.core.samples import SPLIT_EVAL, open_images, read_manifest, split_rows
from vlmrl_pipeline.execution import CPU_TAGS, GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import (
    NO_OP_CONFIG,
    ArtifactStore,
    DataSettingsResource,
    ExportSettingsResource,
    ModelSettingsResource,
    asset_folder,
)

GGUF_SUMMARY = "gguf.json"
GGUF_CHECK_TOKENS = 16


@asset(config_schema=NO_OP_CONFIG,
       group_name="export", deps=[lora_adapter, base_model, resized_images], kinds={"safetensors", "huggingface"},
       code_version="export-4", pool=GPU_POOL, tags=GPU_TAGS, op_tags=gpu_op_tags())
def merged_model(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    data_settings: DataSettingsResource,
    model_settings: ModelSettingsResource,
    export_settings: ExportSettingsResource,
) -> MaterializeResult:
    """The LoRA adapter merged into the base weights: a standalone 16-bit checkpoint (``checkpoint/``, bf16 by
    default) that loads with plain ``transformers`` and needs no PEFT, and with ``merged_4bit`` also Unsloth's
    merged 4-bit bitsandbytes checkpoint (``checkpoint-4bit/``, GPU only).

    A base saved pre-quantized in 4-bit (Unsloth's ``...-bnb-4bit`` ids) is dequantized first, so the 16-bit
    checkpoint holds no 4-bit layer. The merged checkpoint is loaded back and compared with base + adapter (loaded
    the way evaluation loads it) on held-out prompts: first-token logits (``merge_check.json``, checked by
    ``merged_matches_adapter``) and a sample generation. Peak host and GPU memory are recorded.
    """
    settings = export_settings.to_core()
    model_cfg = model_settings.to_core()
    style = data_settings.to_core().prompt_style
    artifacts.verify(lora_adapter, base_model, resized_images, log=context.log.warning)
    load_path, ref = base_model_path(artifacts)
    adapter_dir = artifacts.asset_dir(lora_adapter)
    rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL).head(MERGE_CHECK_PROMPTS)
    facts = card_facts(artifacts, portable_base_reference(ref, asset_folder(base_model)),
                       sha256_file(adapter_dir / ADAPTER_WEIGHTS), style)

    def card(check: dict) -> str:
        return merged_card(facts, card_sample(artifacts, style), check, settings.merged_dtype,
                           folder=f"{asset_folder(context.asset_key)}/{MERGED_16BIT_DIR}")

    with artifacts.staging(context.asset_key) as tmp, peak_memory() as usage:
        metadata = merge_and_compare(load_path, adapter_dir, tmp, settings, revision=ref.get("revision"),
                                     prompts=chat_prompts(rows, style), images=open_images(rows),
                                     trained_in_4bit=model_cfg.load_in_4bit, max_seq_length=model_cfg.max_seq_length,
                                     card=card, log=context.log.info)
    metadata.update({f"peak_{k}": v for k, v in usage.items() if k != "host_start_gb"})
    context.log.info(f"merged checkpoint generates: {metadata['sample_generation']!r}")
    return MaterializeResult(
        # The weights' hash is the data version: evaluations of the merged checkpoint turn stale when its bytes
        # change, and stay fresh when a re-run wrote the same bytes.
        data_version=DataVersion(metadata["weights_sha256"]),
        metadata={
            **environment_metadata(),
            "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key) / MERGED_16BIT_DIR)),
            "dtype": settings.merged_dtype,
            "merged_4bit": settings.merged_4bit,
            **lineage(artifacts, adapter_dir, with_rewards=False),
            **metadata,
        }
    )


@asset_check(asset=merged_model, blocking=True,
             description="The merged checkpoint computes what base + adapter computes (first-token logits)")
def merged_matches_adapter(artifacts: ArtifactStore) -> AssetCheckResult:
    """A merge that dropped, doubled or mis-scaled the adapter, or dequantized the base wrongly, must not be
    exported as the trained policy. Tolerance: ``core.export.merge.MERGE_LOGIT_TOLERANCE`` of the logits' spread."""
    check = json.loads((artifacts.asset_dir(merged_model) / MERGE_CHECK).read_text())
    return AssetCheckResult(passed=bool(check["within_tolerance"]),
                            metadata={k: v for k, v in check.items() if isinstance(v, (int, float, str, bool))})


@asset(config_schema=NO_OP_CONFIG,
       group_name="export", deps=[merged_model, resized_images], kinds={"gguf", "llamacpp"}, code_version="gguf-1",
       tags=CPU_TAGS)
def gguf_model(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    data_settings: DataSettingsResource,
    export_settings: ExportSettingsResource,
) -> MaterializeResult:
    """The merged model as GGUF for llama.cpp (and Ollama, LM Studio): per type in ``gguf_types`` one language-model
    file ``model-<type>.gguf``, plus the vision encoder and projector ``mmproj-<type>.gguf`` that llama.cpp loads
    beside it.

    Written by llama.cpp's own converter and quantizer, taken from the ``llama-cpp-python`` source release (no
    compiler, no network at run time once fetched). Every file is read back and compared with the checkpoint
    (architecture, one block per layer, widths, every token at its id, the pre-tokenizer llama.cpp recognised);
    with the llama.cpp runtime installed, each file is also run on a held-out prompt and its greedy tokens
    compared with ``transformers``' on the merged checkpoint. Sizes and sha256 per file are in the metadata.
    """
    settings = export_settings.to_core()
    artifacts.verify(merged_model, resized_images, log=context.log.warning)
    checkpoint = artifacts.asset_dir(merged_model) / MERGED_16BIT_DIR
    if any(t in GGUF_QUANTIZER_TYPES for t in settings.gguf_types) and not llama_cpp_runtime_available():
        raise RuntimeError(f"gguf_types {list(settings.gguf_types)} include a type only llama.cpp's quantizer "
                           "writes, and the llama.cpp runtime is not installed: pip install -e '.[gguf]', or drop "
                           f"{sorted(GGUF_QUANTIZER_TYPES)} from gguf_types")
    tools = llama_cpp_tools()
    runtime = settings.verify_with_llama_cpp and llama_cpp_runtime_available()
    with artifacts.staging(context.asset_key) as tmp, peak_memory() as usage:
        exports = export_gguf(checkpoint, tmp, settings.gguf_types, tools.converter, settings.mmproj_type,
                              log=context.log.info)
        summary = {"converter": f"llama.cpp from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}",
                   "source_checkpoint": str(checkpoint), "exports": [e.summary() for e in exports]}
        if runtime:
            # The same held-out prompt through transformers and through llama.cpp, text only, greedy.
            row = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL).head(1)
            prompt = chat_prompts(row, data_settings.to_core().prompt_style)[0]
            # In the dtype it was saved in: float32 would double an 8B model's host memory (33 GB).
            model, processor, _ = load_model(str(checkpoint), backend="transformers",
                                             dtype=stored_dtype(read_checkpoint_config(str(checkpoint))) or "float32",
                                             device="cpu")
            prompt_ids, expected = greedy_token_ids(model, processor, prompt, GGUF_CHECK_TOKENS)
            stop = [end_of_turn_id(processor.tokenizer)]
            for export, entry in zip(exports, summary["exports"], strict=True):
                got, _ = gguf_greedy_tokens(export.model_file, prompt_ids, GGUF_CHECK_TOKENS, stop_ids=stop)
                agree = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                             min(len(got), len(expected)))
                entry["llama_cpp_check"] = {
                    "greedy_tokens_llama_cpp": got, "greedy_tokens_transformers": expected,
                    "agreeing_prefix": agree, "identical": got == expected,
                    "text": processor.tokenizer.decode(got),
                }
                context.log.info(f"{export.model_file.name} in llama.cpp: {entry['llama_cpp_check']['text']!r} "
                                 f"({agree}/{len(expected)} greedy tokens as transformers)")
        (tmp / GGUF_SUMMARY).write_text(json.dumps(summary, indent=2))
    metadata: dict = {
        "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key))),
        "gguf_types": ", ".join(settings.gguf_types),
        "converter": summary["converter"],
        "tokenizer_pre": exports[0].model_info["tokenizer_pre"],
        "architecture": exports[0].model_info["architecture"],
        "llama_cpp_runtime_check": "ran" if runtime else
        ("off" if not settings.verify_with_llama_cpp else "skipped: llama.cpp runtime not installed"),
        **lineage(artifacts, artifacts.asset_dir(lora_adapter), with_rewards=False),
        **{f"peak_{k}": v for k, v in usage.items() if k != "host_start_gb"},
    }
    if exports[0].mmproj_file is not None:
        info = exports[0].mmproj_info
        metadata.update({"mmproj_file": info["file"], "mmproj_size_bytes": info["size_bytes"],
                         "mmproj_sha256": info["sha256"], "mmproj_num_tensors": info["num_tensors"]})
    for export, entry in zip(exports, summary["exports"], strict=True):
        t = export.gguf_type
        metadata.update({f"{t}_file": export.model_info["file"], f"{t}_size_bytes": export.model_info["size_bytes"],
                         f"{t}_sha256": export.model_info["sha256"],
                         f"{t}_num_tensors": export.model_info["num_tensors"],
                         f"{t}_tensor_types": json.dumps(export.model_info["tensor_types"])})
        if "llama_cpp_check" in entry:
            metadata[f"{t}_llama_cpp_greedy_agreement"] = (
                f"{entry['llama_cpp_check']['agreeing_prefix']}/{len(entry['llama_cpp_check']['greedy_tokens_transformers'])}")
    files = sorted({e.model_info["sha256"] for e in exports} | {e.mmproj_info["sha256"] for e in exports
                                                                  if e.mmproj_info is not None})
    return MaterializeResult(metadata={**metadata, **environment_metadata()},
                             data_version=DataVersion(hashlib.sha256(" ".join(files).encode()).hexdigest()))


@asset_check(asset=gguf_model, blocking=True,
             description="Every GGUF file reads back with the checksum, architecture and tokenizer recorded")
def gguf_files_intact(artifacts: ArtifactStore) -> AssetCheckResult:
    """Re-reads each GGUF file named in ``gguf.json`` and compares it with what the export recorded: a file that
    was truncated, replaced or corrupted after export must not be handed to llama.cpp as this model."""
    folder = artifacts.asset_dir(gguf_model)
    summary = json.loads((folder / GGUF_SUMMARY).read_text())
    problems: list[str] = []
    checked = 0
    for export in summary["exports"]:
        for part in ("model", "mmproj"):
            recorded = export.get(part)
            if recorded is None:
                continue
            path = folder / recorded["file"]
            if not path.exists():
                problems.append(f"{recorded['file']} is missing")
                continue
            if sha256_file(path) != recorded["sha256"]:
                problems.append(f"{recorded['file']} changed since export (sha256)")
                continue
            now = inspect_gguf(path)
            for key in ("architecture", "num_tensors", "tokenizer_pre", "num_tokens"):
                if now[key] != recorded[key]:
                    problems.append(f"{recorded['file']}: {key} {now[key]!r} != recorded {recorded[key]!r}")
            checked += 1
    return AssetCheckResult(passed=not problems and checked > 0,
                            metadata={"files_checked": checked, "problems": "; ".join(problems) or "none"})
