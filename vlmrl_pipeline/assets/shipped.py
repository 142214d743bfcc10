"""What is shipped is what is evaluated: the merged checkpoint (``merged_records``) and each GGUF type with its
mmproj (``gguf_records``) answer the held-out samples the adapter answered in ``after_records``, with the same
prompts, chat template and scorer; a blocking check per artifact fails one that lost accuracy."""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from vlmrl_pipeline.assets.data import mathvista_filtered, resized_images
from vlmrl_pipeline.assets.evaluation import after_completions, after_records, records_file
from vlmrl_pipeline.assets.export import GGUF_SUMMARY, MERGED_16BIT_DIR, gguf_model, merged_model
from vlmrl_pipeline.assets.metadata import environment_metadata, table_metadata
from vlmrl_pipeline.assets.provenance import lineage
from vlmrl_pipeline.assets.training import lora_adapter
from vlmrl_pipeline.core.environment import environment_fingerprint
from vlmrl_pipeline.core.evaluation.generation import greedy_new_ids, next_token_logits
from vlmrl_pipeline.core.evaluation.records import (
    generate_for_rows,
    generate_for_rows_vllm,
    load_completions,
    save_completions,
    save_records,
    score_stored_completions,
    summarize_records,
)
from vlmrl_pipeline.core.evaluation.shipped import accuracy_kept, compare_to_adapter, logit_agreement
from vlmrl_pipeline.core.export.gguf import llama_cpp_runtime_available
from vlmrl_pipeline.core.export.merge import read_checkpoint_config, stored_dtype
from vlmrl_pipeline.core.export.mtmd import evaluate_gguf, runtime_version, stop_token_ids
from vlmrl_pipeline.core.files import sha256_dir, write_json_atomic
from vlmrl_pipeline.core.model.card import CARD_NAME
from vlmrl_pipeline.core.model.loading import load_model, load_processor, vision_token_ids, vllm_dtype
from vlmrl_pipeline.core.prompts import chat_prompts
from vlmrl_pipeline.core.rewards import REWARD_VERSION, gspo_reward_set
from vlmrl_pipeline.core.samples import SPLIT_EVAL, open_images, read_manifest, split_rows
from vlmrl_pipeline.execution import CPU_TAGS, GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import (
    NO_OP_CONFIG,
    ArtifactStore,
    DataSettingsResource,
    EvalSettingsResource,
    ExportSettingsResource,
    ModelSettingsResource,
    TrainingSettingsResource,
)

SHIPPED_CODE_VERSION = f"shipped-2+rewards-{REWARD_VERSION}"
GGUF_RECORDS_SUMMARY = "gguf_records.json"
NO_RUNTIME_HINT = "pip install -e '.[gguf]'"
MERGED_NAME = "merged"


def gguf_name(gguf_type: str) -> str:
    """How a GGUF type is named in records, the report and metadata (``gguf-q8_0``)."""
    return f"gguf-{gguf_type}"


def _adapter_rows(artifacts: ArtifactStore) -> pd.DataFrame:
    """The held-out rows the adapter answered (``after_completions``, which ``after_records`` scores), in its order:
    the shipped artifacts answer exactly those. Depending on the completions, not the records, keeps a generation
    change to one pass down the lineage (completions, then every records asset, then the report)."""
    completions, _ = load_completions(artifacts.asset_dir(after_completions))
    rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL)
    rows = rows.assign(pid=rows["pid"].astype(str)).set_index("pid", drop=False)
    return rows.loc[completions["pid"].astype(str).tolist()].reset_index(drop=True)


def _records(rows: pd.DataFrame, completions: list[str], answer_format: str, artifact: str, sha256: str,
             runtime: str, rewards) -> pd.DataFrame:
    # Scored with exactly the training's reward set (functions, weights, boxed values), as after_records is.
    records = score_stored_completions(rows, pd.DataFrame({"pid": rows["pid"].astype(str), "completion": completions}),
                                       answer_format, rewards=rewards)
    # Each record names what answered it, so a records file read alone still says which bytes it measured.
    return records.assign(artifact=artifact, artifact_sha256=sha256, runtime=runtime)


def _rates(name: str, records: pd.DataFrame) -> dict[str, float]:
    """The artifact's rates as float metadata (plotted across runs); its change against the adapter is the
    checks' and the report's, which read ``after_records``."""
    return {f"{name}_{column}": round(float(records[column].astype(bool).mean()), 4)
            for column in ("correct", "correct_mathvista", "format_ok", "answered")}


@asset(config_schema=NO_OP_CONFIG,
       group_name="export", deps=[merged_model, after_completions, resized_images, mathvista_filtered],
       kinds={"pytorch", "pandas"}, code_version=SHIPPED_CODE_VERSION, pool=GPU_POOL, tags=GPU_TAGS,
       op_tags=gpu_op_tags())
def merged_records(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
    export_settings: ExportSettingsResource,
    training_settings: TrainingSettingsResource,
) -> MaterializeResult:
    """The merged 16-bit checkpoint (``merged_model/checkpoint``, what is shipped as safetensors) evaluated like
    the adapter: the same held-out rows as ``after_records``, the same prompts and generation settings, the same
    engine (transformers, or vLLM with ``eval_settings.engine="vllm"``), the same scorer. Per-sample records
    (``merged_records.json`` / ``.parquet``), each with the checkpoint's sha256 and the runtime."""
    data, settings, export = data_settings.to_core(), eval_settings.to_core(), export_settings.to_core()
    model_cfg = model_settings.to_core()
    checkpoint = artifacts.asset_dir(merged_model) / MERGED_16BIT_DIR
    rows = _adapter_rows(artifacts)
    sha256 = sha256_dir(checkpoint, exclude=(CARD_NAME,))  # the weights, as merged_model's weights_sha256
    progress = lambda done, total: context.log.info(f"merged_records: generated {done}/{total}")  # noqa: E731
    with artifacts.lock(context.asset_key):
        if settings.engine == "vllm":
            processor = load_processor(str(checkpoint))
            scratch = artifacts.asset_dir(context.asset_key).parent / ".merged_records.vllm-scratch"
            completions, seconds, engine = generate_for_rows_vllm(
                str(checkpoint), processor, rows, settings, data.prompt_style, model_cfg.max_seq_length,
                adapter_dir=None, scratch_dir=scratch, dtype=vllm_dtype(export.merged_dtype), progress=progress)
            shutil.rmtree(scratch, ignore_errors=True)
            import vllm

            runtime = f"vllm {vllm.__version__}"
        else:
            import transformers

            # As shipped: the checkpoint's own dtype, no quantization on load.
            model, processor, _ = load_model(str(checkpoint), backend="transformers", dtype=export.merged_dtype)
            completions, seconds = generate_for_rows(model, processor, rows, settings, data.prompt_style,
                                                     progress=progress)
            engine, runtime = {"engine": "transformers"}, f"transformers {transformers.__version__}"
            del model
        records = _records(rows, completions, data.answer_format, MERGED_NAME, sha256, runtime,
                           gspo_reward_set(data.answer_format, training_settings.to_core()))
        provenance = {**lineage(artifacts, artifacts.asset_dir(lora_adapter)), "artifact": MERGED_NAME,
                      "artifact_path": str(checkpoint), "artifact_sha256": sha256, "runtime": runtime,
                      "dtype": export.merged_dtype, "generation": asdict(settings), "engine": engine,
                      "generation_seconds": seconds, "answer_format": data.answer_format,
                      "environment": environment_fingerprint(), "summary": summarize_records(records)}
        with artifacts.staging(context.asset_key) as tmp:
            save_completions(tmp, rows["pid"].tolist(), completions, provenance)
            save_records(records, tmp, "merged_records", provenance)
    summary = provenance["summary"]
    return MaterializeResult(metadata={
        **environment_metadata(), **table_metadata(records),
        "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key) / "merged_records.json")),
        "artifact_sha256": sha256, "runtime": runtime, "generation_seconds": round(seconds, 2),
        **{k: round(float(summary[k]), 4) for k in ("accuracy", "accuracy_mathvista", "format_compliance",
                                                    "answer_rate")},
    })


@asset(config_schema=NO_OP_CONFIG,
       group_name="export", deps=[gguf_model, merged_model, after_completions, resized_images, mathvista_filtered],
       kinds={"gguf", "llamacpp", "pandas"}, code_version=SHIPPED_CODE_VERSION, tags=CPU_TAGS)
def gguf_records(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    data_settings: DataSettingsResource,
    eval_settings: EvalSettingsResource,
    export_settings: ExportSettingsResource,
    training_settings: TrainingSettingsResource,
) -> MaterializeResult:
    """Each GGUF type of ``gguf_model`` with its mmproj, run by llama.cpp's multimodal runtime (``libmtmd``)
    greedily on the held-out rows ``after_records`` scored: the prompt string is the one the chat template
    renders for the other evaluations (its image placeholder handed to mtmd), completions are decoded and scored
    as theirs. Per type ``gguf_records_<type>.json`` / ``.parquet``, each record with the file's sha256 and the
    runtime's version. On the first ``shipped_logit_samples`` rows each GGUF is also compared token by token with
    the merged checkpoint (first-token logits, greedy tokens): ``gguf_records.json``."""
    data, settings, export = data_settings.to_core(), eval_settings.to_core(), export_settings.to_core()
    rewards = gspo_reward_set(data.answer_format, training_settings.to_core())
    if not llama_cpp_runtime_available():
        # Said, not hidden: the report shows the GGUF rows as not evaluated and the check warns.
        reason = f"llama.cpp's runtime is not installed ({NO_RUNTIME_HINT})"
        context.log.warning(f"gguf_records: {reason}; the GGUF files are not evaluated")
        with artifacts.lock(context.asset_key), artifacts.staging(context.asset_key) as tmp:
            write_json_atomic(tmp / GGUF_RECORDS_SUMMARY, {"types": {}, "not_evaluated": reason})
        return MaterializeResult(metadata={**environment_metadata(), "not_evaluated": reason})
    folder = artifacts.asset_dir(gguf_model)
    summary = json.loads((folder / GGUF_SUMMARY).read_text())
    checkpoint = artifacts.asset_dir(merged_model) / MERGED_16BIT_DIR
    rows = _adapter_rows(artifacts)
    prompts, paths = chat_prompts(rows, data.prompt_style), rows["image_path"].astype(str).tolist()
    # The merged checkpoint, on the device evaluation would use, is the token-by-token reference.
    k = min(export.shipped_logit_samples, len(rows))
    reference_logits = reference_ids = None
    processor = load_processor(str(checkpoint))
    if k:
        model, processor, _ = load_model(str(checkpoint), backend="transformers",
                                         dtype=stored_dtype(read_checkpoint_config(str(checkpoint))) or "float32")
        images = open_images(rows.head(k))
        reference_logits = next_token_logits(model, processor, prompts[:k], images).numpy()
        reference_ids = greedy_new_ids(model, processor, prompts[:k], images, settings.max_new_tokens)
        del model
    runtime = runtime_version()
    stops, suppress = stop_token_ids(checkpoint), vision_token_ids(processor)
    out: dict = {"runtime": runtime, "rows": len(rows), "types": {}, "logit_samples": k,
                 "extra_buffer_types": export.llama_cpp_extra_buffer_types}
    metadata: dict = {}
    with artifacts.lock(context.asset_key), artifacts.staging(context.asset_key) as tmp:
        for export_entry in summary["exports"]:
            gguf_type, model_info = export_entry["gguf_type"], export_entry["model"]
            mmproj_info = export_entry.get("mmproj")
            if mmproj_info is None:
                raise RuntimeError(f"{model_info['file']} has no mmproj beside it: a vision model's GGUF cannot see "
                                   "the images without one")
            name = gguf_name(gguf_type)
            result = evaluate_gguf(folder / model_info["file"], folder / mmproj_info["file"], processor, prompts,
                                   paths, max_new_tokens=settings.max_new_tokens, stop_ids=stops,
                                   suppress_ids=suppress, logits_samples=k,
                                   extra_buffer_types=export.llama_cpp_extra_buffer_types)
            records = _records(rows, result.completions, data.answer_format, name, model_info["sha256"], runtime,
                               rewards)
            records = records.assign(mmproj_sha256=mmproj_info["sha256"])
            entry = {"artifact": name, "file": model_info["file"], "sha256": model_info["sha256"],
                     "mmproj_file": mmproj_info["file"], "mmproj_sha256": mmproj_info["sha256"],
                     "seconds": round(result.seconds, 2), "prompt_tokens_identical": result.prompt_tokens_identical,
                     "image_tokens_identical": result.image_tokens_identical,
                     "first_prompt_difference": result.first_prompt_difference,
                     "image_tokens": result.image_tokens[:1], "weight_buffers": result.weight_buffers,
                     "summary": summarize_records(records)}
            if k and result.first_logits is not None:
                vocab = min(reference_logits.shape[-1], result.first_logits.shape[-1])
                entry["vs_merged"] = logit_agreement(reference_logits[:, :vocab], result.first_logits[:, :vocab],
                                                     reference_ids, result.new_tokens[:k])
            out["types"][gguf_type] = entry
            save_records(records, tmp, f"gguf_records_{gguf_type}",
                         {**lineage(artifacts, artifacts.asset_dir(lora_adapter)), **entry,
                          "generation": asdict(settings), "environment": environment_fingerprint()})
            context.log.info(
                f"{name}: accuracy {entry['summary']['accuracy']:.3f}, "
                f"{result.prompt_tokens_identical}/{len(rows)} prompts token-identical to transformers' "
                f"({result.image_tokens_identical}/{len(rows)} images in as many tokens), "
                f"{result.seconds:.1f} s" + (f"; vs merged: first-token argmax {entry['vs_merged']['argmax_agree']}/"
                                             f"{k}, greedy identical {entry['vs_merged']['greedy_identical']}/{k}"
                                             if "vs_merged" in entry else ""))
            metadata.update({f"{gguf_type}_sha256": model_info["sha256"], f"{gguf_type}_seconds": entry["seconds"],
                             f"{gguf_type}_prompt_tokens_identical": result.prompt_tokens_identical,
                             f"{gguf_type}_image_tokens_identical": result.image_tokens_identical,
                             **_rates(gguf_type, records)})
            if "vs_merged" in entry:
                v = entry["vs_merged"]
                metadata.update({f"{gguf_type}_first_token_argmax_agree": float(v["argmax_agree"]) / k,
                                 f"{gguf_type}_greedy_identical": float(v["greedy_identical"]) / k,
                                 f"{gguf_type}_mean_relative_logit_diff": round(v["mean_relative_logit_diff"], 5)})
        write_json_atomic(tmp / GGUF_RECORDS_SUMMARY, out)
    return MaterializeResult(metadata={
        **environment_metadata(), "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key))),
        "runtime": runtime, "gguf_types": ", ".join(out["types"]), "num_samples": len(rows), **metadata})


def gguf_records_file(artifacts: ArtifactStore, gguf_type: str) -> Path:
    return artifacts.asset_dir(gguf_records) / f"gguf_records_{gguf_type}.parquet"


def _kept(artifacts: ArtifactStore, tolerance: float, named: dict[str, Path]) -> AssetCheckResult:
    adapter = pd.read_parquet(records_file(artifacts, after_records, ".parquet"))
    problems, metadata = [], {}
    for name, path in named.items():
        comparison = compare_to_adapter(adapter, pd.read_parquet(path))
        found = accuracy_kept(comparison, tolerance)
        problems += [f"{name}: {p}" for p in found]
        for key in ("accuracy", "accuracy_mathvista"):
            m = comparison["metrics"][key]
            metadata[f"{name}_{key}_difference"] = round(float(m["difference"]), 4)
            metadata[f"{name}_{key}_ci_high"] = round(float(m["ci_high"]), 4)
        metadata[f"{name}_lost_pids"] = MetadataValue.json(comparison["flips"]["accuracy"]["lost"][:100])
    return AssetCheckResult(passed=not problems, severity=AssetCheckSeverity.ERROR,
                            description="; ".join(problems) or None,
                            metadata={**metadata, "tolerance": tolerance, "problems": "; ".join(problems) or "none"})


@asset_check(asset=merged_records, blocking=True,
             description="The merged checkpoint keeps the adapter's held-out accuracy (within the tolerance)")
def merged_accuracy_kept(artifacts: ArtifactStore, export_settings: ExportSettingsResource) -> AssetCheckResult:
    """Fails when the merged checkpoint's accuracy (strict or MathVista's) is below the adapter's with the paired
    interval below 0 and a drop over ``shipped_accuracy_tolerance``, naming the samples that flipped."""
    return _kept(artifacts, export_settings.to_core().shipped_accuracy_tolerance,
                 {MERGED_NAME: records_file(artifacts, merged_records, ".parquet")})


@asset_check(asset=gguf_records, blocking=True,
             description="Every GGUF type keeps the adapter's held-out accuracy (within the tolerance)")
def gguf_accuracy_kept(artifacts: ArtifactStore, export_settings: ExportSettingsResource) -> AssetCheckResult:
    """The same verdict as ``merged_accuracy_kept`` for each GGUF type ``gguf_records`` evaluated, naming the
    types that failed and their flipped samples."""
    out = json.loads((artifacts.asset_dir(gguf_records) / GGUF_RECORDS_SUMMARY).read_text())
    if not out["types"]:
        # Nothing measured is no pass; a warning, so a machine without the runtime still runs the lineage.
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN,
                                description=f"no GGUF evaluated: {out.get('not_evaluated', 'no types')}",
                                metadata={"problems": out.get("not_evaluated", "no GGUF types evaluated")})
    return _kept(artifacts, export_settings.to_core().shipped_accuracy_tolerance,
                 {gguf_name(t): gguf_records_file(artifacts, t) for t in out["types"]})
