"""The merged checkpoint a user ships, made and proven: the adapter merged into the base (``core.export.merge``),
loaded back with plain transformers, and compared with base + adapter on held-out prompts.

:func:`merge_and_compare` is what the ``merged_model`` asset runs; the asset adds the lock, the model card's facts
(which need the artifact store), the run log and the metadata.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions, next_token_logits
from vlmrl_pipeline.core.export.merge import (
    bnb_quantization,
    checkpoint_has_4bit_layers,
    merge_adapter_4bit_unsloth,
    merge_adapter_to_checkpoint,
    merge_agreement,
    read_checkpoint_config,
    stored_dtype,
)
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.files import dir_size_bytes, sha256_dir, write_json_atomic
from vlmrl_pipeline.core.memory import peak_memory
from vlmrl_pipeline.core.model.card import CARD_NAME
from vlmrl_pipeline.core.model.loading import load_model, load_policy

MERGED_16BIT_DIR = "checkpoint"
MERGED_4BIT_DIR = "checkpoint-4bit"
MERGE_CHECK = "merge_check.json"
MERGE_CHECK_PROMPTS = 4
"""Held-out prompts whose first-token logits the merged checkpoint must reproduce."""
SAMPLE_GENERATION = GenerationSettings(max_new_tokens=32, batch_size=1)


def free_gpu() -> None:
    """Drop what the last model left behind before the next one loads (two copies of an 8B model do not fit)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def merge_and_compare(load_path: str, adapter_dir: str | Path, out_dir: str | Path, settings: ExportSettings, *,
                      revision: str | None, prompts: list, images: list, trained_in_4bit: bool, max_seq_length: int,
                      card: Callable[[dict[str, Any]], str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge ``adapter_dir`` into the base at ``load_path``: ``out_dir/checkpoint`` in ``settings.merged_dtype``
    (and with ``merged_4bit`` Unsloth's ``out_dir/checkpoint-4bit``), its model card (``card(check)``) and
    ``out_dir/merge_check.json`` (the merged checkpoint's first-token logits against base + adapter's on
    ``prompts``/``images``). Returns what the asset records: the check's figures, a sample generation, sizes,
    weight hashes and the merge's time and peak memory.

    A base saved pre-quantized in 4-bit (Unsloth's ``...-bnb-4bit`` ids) is dequantized first, so the 16-bit
    checkpoint holds no 4-bit layer (refused otherwise). ``trained_in_4bit``: training quantized a 16-bit base on
    load, which the check notes (the merged weights are the 16-bit ones).
    """
    out_dir, adapter_dir = Path(out_dir), Path(adapter_dir)
    merged_dir = out_dir / MERGED_16BIT_DIR
    metadata: dict[str, Any] = {}
    with peak_memory() as merge_usage:
        merge_adapter_to_checkpoint(load_path, adapter_dir, merged_dir, dtype=settings.merged_dtype,
                                    revision=revision)
    if checkpoint_has_4bit_layers(merged_dir):
        raise RuntimeError(f"the merged {settings.merged_dtype} checkpoint still holds bitsandbytes 4-bit layers")
    log(f"merged into {settings.merged_dtype} in {merge_usage['seconds']} s, peak host memory "
        f"{merge_usage['host_peak_gb']} GB")
    # Proof that the export is usable and is the trained policy: plain transformers loads it, generates, and its
    # next-token logits match base + adapter's on the same prompts.
    model, processor, _ = load_model(str(merged_dir), backend="transformers", dtype=settings.merged_dtype)
    merged_logits = next_token_logits(model, processor, prompts, images)
    metadata["sample_generation"] = generate_completions(model, processor, prompts[:1], images[:1],
                                                         SAMPLE_GENERATION)[0]
    del model
    free_gpu()
    # The reference is the base as stored plus the adapter: a 4-bit hub checkpoint as saved, a 16-bit one in
    # 16-bit. (A 16-bit base that training and evaluation quantized on the fly, load_in_4bit, is not the
    # reference: merging into the 16-bit weights is what a merged checkpoint means, as Unsloth's merged_16bit.)
    base_config = read_checkpoint_config(load_path, revision)
    policy, policy_processor, _ = load_policy(
        load_path, backend="transformers", revision=revision, dtype=stored_dtype(base_config) or "bfloat16",
        load_in_4bit=False, adapter_dir=adapter_dir)
    check = merge_agreement(next_token_logits(policy, policy_processor, prompts, images), merged_logits)
    check["reference"] = "base as stored + adapter (transformers)" + (
        ", 4-bit as saved" if bnb_quantization(base_config) else "")
    if trained_in_4bit and not bnb_quantization(base_config):
        check["note"] = ("evaluation and training quantized this 16-bit base to 4-bit on load; the merged "
                         "checkpoint carries the 16-bit weights, so its answers can differ from after_records'")
    del policy
    free_gpu()
    write_json_atomic(out_dir / MERGE_CHECK, check)
    log(f"merged vs {check['reference']}: first-token argmax {check['argmax_agree']}/{check['prompts']}, max logit "
        f"difference {check['relative_logit_diff']:.4f} of the spread")
    (merged_dir / CARD_NAME).write_text(card(check), encoding="utf-8")
    metadata.update(size_bytes=dir_size_bytes(merged_dir), weights_sha256=sha256_dir(merged_dir, exclude=(CARD_NAME,)),
                    merge_relative_logit_diff=check["relative_logit_diff"],
                    merge_argmax_agree=f"{check['argmax_agree']}/{check['prompts']}",
                    merge_seconds=merge_usage["seconds"], merge_peak_host_gb=merge_usage["host_peak_gb"])
    if settings.merged_4bit:
        merge_adapter_4bit_unsloth(adapter_dir, out_dir / MERGED_4BIT_DIR, base_load_path=load_path,
                                   max_seq_length=max_seq_length)
        model, processor, _ = load_model(str(out_dir / MERGED_4BIT_DIR), backend="transformers", dtype="bfloat16")
        metadata["sample_generation_4bit"] = generate_completions(model, processor, prompts[:1], images[:1],
                                                                  SAMPLE_GENERATION)[0]
        del model
        free_gpu()
        metadata.update(size_bytes_4bit=dir_size_bytes(out_dir / MERGED_4BIT_DIR),
                        weights_sha256_4bit=sha256_dir(out_dir / MERGED_4BIT_DIR, exclude=(CARD_NAME,)))
    return metadata
