"""vLLM versus transformers on one GPU, side by side in one run: evaluation decoding and GSPO rollouts.

    python benchmarks/vllm_benchmark.py --part eval --models 8b,2b --out $OUT/eval.json
    python benchmarks/vllm_benchmark.py --part gspo --gspo-model 2b --out $OUT/gspo.json
    python benchmarks/vllm_benchmark.py --smoke --part eval --models 2b --out /tmp/smoke.json   # CPU, plumbing only
    python benchmarks/vllm_benchmark.py --report eval.json gspo.json                          # markdown tables

Checkpoints are the project's stand-ins (``core.standin.build_standin``): the published Qwen3-VL-8B / 2B
architectures, vocabulary, processor and chat template in bf16 safetensors, with random weights. Each is built once
into ``--work-dir`` (reused when its ``config.json`` exists). Every measurement runs in its own child process (this
script with a hidden ``--child``), so one engine's CUDA memory and compiled kernels never reach the other's numbers.

``--part eval``: greedy decoding of ``--prompts`` prompts (one 512x512 random-noise image each, a short math
question, chat format), all in one batch, ``--max-new-tokens`` new tokens each:

* transformers: the project's ``generate_completions`` (``model.generate``), batch = all prompts;
* vLLM: ``start_engine`` + ``generate_with_vllm`` (compiled + CUDA graphs unless ``--vllm-eager``), after an
  untimed warm-up batch (vLLM compiles Triton kernels inside its first batch; transformers gets the same warm-up).

Per engine: start seconds (load / engine start), decode wall seconds (preprocessing + prefill + decode of the timed
batch), new tokens counted from the outputs, tokens/s, approximate ms per decode step (= wall / max_new_tokens,
prefill included), peak GPU memory. Against the memory-bound limit: every decode step reads the language model's
weights once (embeddings and lm_head included, the vision tower excluded: it runs at prefill only), so
``limit tokens/s = batch x bandwidth / text weight bytes`` and the step-time floor is ``text weight bytes /
bandwidth``. Bandwidth comes from the GPU's name (or ``--bandwidth-gbps``); the weight bytes from the checkpoint's
safetensors headers. A second limit that also counts the KV-cache reads of each step is recorded beside it.

``--part gspo``: GSPO through the project's ``train_gspo`` (TRL ``GRPOTrainer``), transformers backend, bf16,
PEFT LoRA r=16 on the language layers, reward ``rehearsal.ascii_share_reward`` (random weights earn no task reward;
this one varies, so advantages are not all zero), rollouts through ``model.generate`` versus TRL's colocated vLLM
(``GSPOSettings(use_vllm=True)``). ``--gspo-warmup`` untimed + ``--steps`` timed optimizer steps; step wall time
from a ``TrainerCallback`` (``on_step_begin`` -> ``on_step_end``: rollout, rewards, forward/backward, optimizer and,
with vLLM, the weight sync), peak memory, TRL's logged rows (with vLLM: the rollout/train log-prob mismatch).

``--out`` holds a JSON list of result dicts, merged by (part, model, engine): a later run replaces an entry, except
that a skipped configuration never replaces a measured one. Every entry carries the device, package versions, all
settings and ``status`` (``ok``, ``failed`` with the error, or ``skipped`` with the reason).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODELS = {"8b": "qwen3vl-8b", "2b": "qwen3vl-2b"}
ENGINES = ("transformers", "vllm")
VERSION_PACKAGES = ("torch", "transformers", "trl", "vllm", "peft", "accelerate")

# Peak HBM bandwidth by GPU name (vendor data sheets), bytes/s. Checked in order; the first substring found wins.
BANDWIDTHS = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),  # SXM, "NVIDIA H100 80GB HBM3"
)

# Rough seconds per child on an H100, only to skip (and record as skipped) what cannot finish before --deadline-s
# instead of starting it and having it killed half-way.
ESTIMATE_S = {
    ("build", "2b"): 45, ("build", "8b"): 120,
    ("eval", "transformers", "2b"): 60, ("eval", "transformers", "8b"): 100,
    ("eval", "vllm", "2b"): 150, ("eval", "vllm", "8b"): 180,
    ("gspo", "transformers", "2b"): 120, ("gspo", "transformers", "8b"): 240,
    ("gspo", "vllm", "2b"): 200, ("gspo", "vllm", "8b"): 280,
}

GB = 1e9


def log(msg: str) -> None:
    print(f"[vllm-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> dict[str, str | None]:
    out = {}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def bandwidth_for(device: str | None, override_gbps: float | None) -> tuple[float | None, str]:
    """(bytes/s, where the number came from) for a GPU name; None when the name is not in :data:`BANDWIDTHS`."""
    if override_gbps:
        return override_gbps * 1e9, "--bandwidth-gbps"
    for key, value in BANDWIDTHS:
        if device and key in device:
            return value, f"data sheet ({key})"
    return None, f"unknown device {device!r}: pass --bandwidth-gbps"


def gpu_name_without_cuda() -> str:
    """The GPU's name from nvidia-smi: the parent never creates a CUDA context of its own (it would sit in the
    device memory the children measure)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip().splitlines()
        return out[0].strip() if out else "cpu"
    except (OSError, subprocess.SubprocessError):
        return "cpu"


# --------------------------------------------------------------------------------------------- inputs


def noise_images(n: int, size: int, seed: int):
    """``n`` RGB random-noise images, ``size`` px square (512 px -> 256 image tokens after Qwen3-VL's merge)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def math_questions(n: int, seed: int, two_digit: bool = False) -> tuple[list[str], list[str]]:
    """Short arithmetic questions and their answers. ``two_digit``: every number has two digits, so every prompt
    has the same token count (Qwen's tokenizer splits digits) and a batch needs no padding."""
    import random

    rng = random.Random(seed)
    questions, answers = [], []
    low = 10 if two_digit else 2
    for _ in range(n):
        a, b = rng.randint(low, 99), rng.randint(low, 99)
        questions.append(f"The picture shows {a} rows of {b} dots. How many dots are there? Answer with a number.")
        answers.append(str(a * b))
    return questions, answers


def chat_inputs(n: int, image_size: int, seed: int, two_digit: bool = False):
    """``(chat prompts, images)``: ``[{"role": "user", "content": [image, text]}]`` each, TRL's VLM format."""
    from vlmrl_pipeline.core.prompts import chat_prompt

    questions, _ = math_questions(n, seed, two_digit)
    return [chat_prompt(q) for q in questions], noise_images(n, image_size, seed)


def prompt_token_counts(processor, prompts, images) -> list[int]:
    """Tokens of each rendered prompt, image tokens included (what the KV cache holds before decoding)."""
    counts = []
    for prompt, image in zip(prompts, images):
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        counts.append(len(processor(text=[text], images=[[image]])["input_ids"][0]))
    return counts


# --------------------------------------------------------------------------------------------- checkpoint arithmetic


def checkpoint_weight_bytes(ckpt: Path) -> dict:
    """Bytes of the stored tensors by part, read from the safetensors headers (no weights loaded).

    ``text_bytes`` is what one decode step reads: every language-model tensor (layers, norms, embeddings, lm_head;
    a tied lm_head is the embedding matrix, stored once). The vision tower (``visual``) runs only at prefill.
    """
    parts = {"text_bytes": 0, "vision_bytes": 0, "embed_tokens_bytes": 0, "lm_head_bytes": 0}
    for shard in sorted(ckpt.glob("*.safetensors")):
        with shard.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            nbytes = end - start
            if ".visual." in f".{name}":
                parts["vision_bytes"] += nbytes
                continue
            parts["text_bytes"] += nbytes
            if "embed_tokens" in name:
                parts["embed_tokens_bytes"] += nbytes
            elif "lm_head" in name:
                parts["lm_head_bytes"] += nbytes
    parts["tied_embeddings"] = parts["lm_head_bytes"] == 0
    # Untied, the input embedding is only gathered (batch rows per step), not read whole: a tighter byte count.
    parts["text_bytes_read_untied_gather"] = parts["text_bytes"] - (
        0 if parts["tied_embeddings"] else parts["embed_tokens_bytes"])
    return parts


def kv_bytes_per_token(ckpt: Path) -> int:
    """bf16 K and V of one token over all language layers."""
    cfg = json.loads((ckpt / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return int(text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2 * 2)


def memory_bound(entry: dict, weights: dict, kv_per_token: int, bandwidth: float | None) -> dict:
    """Memory-bound limits of one eval entry (all prompts decoded as one batch)."""
    batch, new = entry.get("n_prompts"), entry.get("max_new_tokens")
    wbytes = weights["text_bytes"]
    out = {"text_weight_gb": round(wbytes / GB, 3), "kv_bytes_per_token": kv_per_token}
    if entry.get("decode_s") and new:
        out["ms_per_step_approx"] = round(1000 * entry["decode_s"] / new, 2)
    # Decode alone: the timed run minus the prefill-only pass (image preprocessing, vision tower, prefill), over the
    # new - 1 tokens that each took a decode step. Approximate where an engine overlaps prefill with decoding.
    prefill = entry.get("prefill_s")
    if entry.get("decode_s") and prefill is not None and new > 1 and batch and entry["decode_s"] > prefill:
        decode_only = entry["decode_s"] - prefill
        out["decode_only_s"] = round(decode_only, 3)
        out["ms_per_decode_step"] = round(1000 * decode_only / (new - 1), 2)
        out["decode_tokens_per_s"] = round(batch * (new - 1) / decode_only, 1)
    if not bandwidth or not batch:
        return out
    out["step_floor_ms"] = round(1000 * wbytes / bandwidth, 3)
    out["limit_tokens_per_s"] = round(batch * bandwidth / wbytes, 1)
    # The same with the KV cache each step also reads (mean context: prompt + half the new tokens).
    context = (entry.get("mean_prompt_tokens") or 0) + new / 2
    kv_bytes = batch * kv_per_token * context
    out["limit_with_kv_tokens_per_s"] = round(batch * bandwidth / (wbytes + kv_bytes), 1)
    out["kv_gb_per_step_mean"] = round(kv_bytes / GB, 3)
    if entry.get("tokens_per_s"):
        out["fraction_of_limit"] = round(entry["tokens_per_s"] / out["limit_tokens_per_s"], 4)
        out["fraction_of_limit_with_kv"] = round(entry["tokens_per_s"] / out["limit_with_kv_tokens_per_s"], 4)
    if out.get("decode_tokens_per_s"):
        out["decode_fraction_of_limit"] = round(out["decode_tokens_per_s"] / out["limit_tokens_per_s"], 4)
        out["decode_fraction_of_limit_with_kv"] = round(
            out["decode_tokens_per_s"] / out["limit_with_kv_tokens_per_s"], 4)
    return out


# --------------------------------------------------------------------------------------------- children


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_memory() -> dict:
    """This process's allocator peaks and the device-wide use (``mem_get_info``: every process on the GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3),
        "device_used_gb": round((total - free) / GB, 3),
        "device_total_gb": round(total / GB, 3),
    }


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def child_build(spec: dict) -> dict:
    """The stand-in in bf16 safetensors; full sizes are initialised on the GPU (bf16, seconds instead of minutes)."""
    import torch

    from vlmrl_pipeline.core.standin import build_standin

    device = "cuda" if torch.cuda.is_available() and not spec["tiny"] else "cpu"
    t0 = time.perf_counter()
    build_standin(spec["standin"], spec["ckpt"], tiny=spec["tiny"], device=device, packaging="bf16")
    return {"build_s": round(time.perf_counter() - t0, 1), "built_on": device}


class GenerateRecorder:
    """Wraps ``model.generate`` (an instance attribute, so the class is untouched): wall time of each call, and the
    new tokens of its output that are not padding. (Qwen's pad token is also an EOS id: a row that stops on it
    counts one token less than vLLM, which counts the EOS it emitted.)"""

    def __init__(self, model, pad_id: int | None):
        self.calls: list[dict] = []
        original = model.generate

        def generate(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            sync()
            seqs = out.sequences if hasattr(out, "sequences") else out
            new = seqs[:, kwargs["input_ids"].shape[1]:]
            per_row = (new != pad_id).sum(1) if pad_id is not None else new.new_full((new.shape[0],), new.shape[1])
            self.calls.append({"s": time.perf_counter() - t0, "rows": int(new.shape[0]), "steps": int(new.shape[1]),
                               "tokens": int(per_row.sum()), "rows_short": int((per_row < new.shape[1]).sum())})
            return out

        model.generate = generate


def child_eval_transformers(spec: dict) -> dict:
    import torch

    from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions
    from vlmrl_pipeline.core.model.loading import load_model

    on_gpu = torch.cuda.is_available()
    t0 = time.perf_counter()
    model, processor, _ = load_model(spec["ckpt"], backend="transformers", dtype="bfloat16" if on_gpu else "float32")
    sync()
    res: dict = {"start_s": round(time.perf_counter() - t0, 2), "start_what": "load_model (from_pretrained + .to)"}
    recorder = GenerateRecorder(model, processor.tokenizer.pad_token_id)
    prompts, images = chat_inputs(spec["n_prompts"], spec["image_size"], seed=spec["seed"])
    warm_prompts, warm_images = chat_inputs(spec["warmup_prompts"], spec["image_size"], seed=spec["seed"] + 1)

    t0 = time.perf_counter()
    generate_completions(model, processor, warm_prompts, warm_images,
                         GenerationSettings(max_new_tokens=spec["warmup_new_tokens"], batch_size=len(warm_prompts)))
    res["warmup_s"] = round(time.perf_counter() - t0, 2)
    recorder.calls.clear()

    # Prefill alone (one new token) on other images of the same shapes: the timed run minus this is the decode.
    prefill_prompts, prefill_images = chat_inputs(spec["n_prompts"], spec["image_size"], seed=spec["seed"] + 2)
    sync()
    t0 = time.perf_counter()
    generate_completions(model, processor, prefill_prompts, prefill_images,
                         GenerationSettings(max_new_tokens=1, batch_size=len(prefill_prompts)))
    sync()
    res["prefill_s"] = round(time.perf_counter() - t0, 3)
    recorder.calls.clear()

    settings = GenerationSettings(max_new_tokens=spec["max_new_tokens"], batch_size=len(prompts))
    log(f"transformers: decoding {len(prompts)} prompts x {spec['max_new_tokens']} new tokens in one batch")
    sync()
    t0 = time.perf_counter()
    texts = generate_completions(model, processor, prompts, images, settings)
    sync()
    decode_s = time.perf_counter() - t0
    if len(recorder.calls) != 1:
        raise RuntimeError(f"expected one generate call for one batch, got {len(recorder.calls)}")
    call = recorder.calls[0]
    res.update({
        "n_prompts": len(prompts), "max_new_tokens": spec["max_new_tokens"], "batch_size": len(prompts),
        "decode_s": round(decode_s, 3), "generate_s": round(call["s"], 3),
        "new_tokens": call["tokens"], "rows_ended_early": call["rows_short"],
        "tokens_per_s": round(call["tokens"] / decode_s, 1), "n_texts": len(texts),
        "mean_prompt_tokens": round(statistics.mean(prompt_token_counts(processor, prompts, images)), 1),
        "memory": cuda_memory(),
    })
    log(f"transformers: {res['new_tokens']} tokens in {decode_s:.2f}s = {res['tokens_per_s']} tok/s "
        f"(generate() alone {call['s']:.2f}s), peak {_f(res['memory'].get('peak_allocated_gb'))} GB")
    return res


def child_eval_vllm(spec: dict) -> dict:
    from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
    from vlmrl_pipeline.core.evaluation.vllm_engine import generate_with_vllm, start_engine, stop_engine
    from vlmrl_pipeline.core.model.loading import load_processor

    processor = load_processor(spec["ckpt"])
    prompts, images = chat_inputs(spec["n_prompts"], spec["image_size"], seed=spec["seed"])
    warm_prompts, warm_images = chat_inputs(spec["warmup_prompts"], spec["image_size"], seed=spec["seed"] + 1)
    settings = GenerationSettings(max_new_tokens=spec["max_new_tokens"], batch_size=len(prompts), engine="vllm",
                                  vllm_gpu_memory_utilization=spec["vllm_gpu_memory_utilization"],
                                  vllm_enforce_eager=spec["vllm_eager"])
    # No CUDA call in this process before the engine starts: vLLM would then have to spawn its engine core.
    t0 = time.perf_counter()
    llm = start_engine(spec["ckpt"], settings, spec["max_model_len"], dtype="bfloat16")
    res: dict = {"start_s": round(time.perf_counter() - t0, 2),
                 "start_what": "start_engine (load + profile + KV cache" + (")" if spec["vllm_eager"] else
                                                                           " + torch.compile + CUDA graphs)")}
    try:
        import vllm

        res["vllm_version"] = vllm.__version__
        t0 = time.perf_counter()
        generate_with_vllm(llm, processor, warm_prompts, warm_images,
                           dataclasses.replace(settings, max_new_tokens=spec["warmup_new_tokens"]))
        res["warmup_s"] = round(time.perf_counter() - t0, 2)
        # Prefill alone (one new token) on other images (no prefix-cache hits on the timed run's images).
        prefill_prompts, prefill_images = chat_inputs(spec["n_prompts"], spec["image_size"], seed=spec["seed"] + 2)
        t0 = time.perf_counter()
        generate_with_vllm(llm, processor, prefill_prompts, prefill_images,
                           dataclasses.replace(settings, max_new_tokens=1))
        res["prefill_s"] = round(time.perf_counter() - t0, 3)
        log(f"vLLM: decoding {len(prompts)} prompts x {spec['max_new_tokens']} new tokens (max_num_seqs "
            f"{len(prompts)})")
        t0 = time.perf_counter()
        texts, counts = generate_with_vllm(llm, processor, prompts, images, settings)
        decode_s = time.perf_counter() - t0
        res.update({
            "n_prompts": len(prompts), "max_new_tokens": spec["max_new_tokens"], "batch_size": len(prompts),
            "decode_s": round(decode_s, 3), "new_tokens": int(sum(counts)),
            "rows_ended_early": sum(c < spec["max_new_tokens"] for c in counts),
            "tokens_per_s": round(sum(counts) / decode_s, 1), "n_texts": len(texts),
            "gpu_memory_utilization": spec["vllm_gpu_memory_utilization"], "enforce_eager": spec["vllm_eager"],
            "max_model_len": spec["max_model_len"],
            # The engine core is another process: only the device-wide figure sees its memory.
            "memory": {k: v for k, v in cuda_memory().items() if k.startswith("device_")},
        })
    finally:
        stop_engine(llm)
    res["mean_prompt_tokens"] = round(statistics.mean(prompt_token_counts(processor, prompts, images)), 1)
    log(f"vLLM: {res['new_tokens']} tokens in {res['decode_s']:.2f}s = {res['tokens_per_s']} tok/s, engine start "
        f"{res['start_s']}s, device used {_f(res['memory'].get('device_used_gb'))} GB")
    return res


def gspo_dataset(n: int, image_size: int, seed: int, two_digit: bool = False):
    """TRL's VLM format, as ``samples.trl_dataset`` builds it: ``prompt`` (chat), ``image``, ``answer``."""
    import datasets

    prompts, images = chat_inputs(n, image_size, seed, two_digit)
    _, answers = math_questions(n, seed, two_digit)
    return datasets.Dataset.from_dict({"prompt": prompts, "image": images, "answer": answers})


class ProfiledBlocks:
    """Durations of TRL's ``profiling_context`` blocks (``vLLM.generate``, ``transformers.generate``,
    ``sync_weights``, ...) by step, caught where TRL reports them."""

    def __init__(self):
        self.step = 0
        self.blocks: dict[str, list[tuple[int, float]]] = {}
        try:
            import trl.extras.profiling as prof
        except ImportError:
            return
        original = prof.ProfilingContext._log_metrics
        me = self

        def _log_metrics(ctx, duration):
            me.blocks.setdefault(ctx.name.split(".", 1)[-1], []).append((me.step, duration))
            return original(ctx, duration)

        prof.ProfilingContext._log_metrics = _log_metrics

    def per_step(self, name: str, steps: int) -> list[float]:
        sums = [0.0] * steps
        for step, duration in self.blocks.get(name, []):
            if 1 <= step <= steps:
                sums[step - 1] += duration
        return [round(s, 3) for s in sums]


def record_mismatch_by_row(blocks: ProfiledBlocks) -> list[dict]:
    """Per completion: mean |log p_train - log p_vLLM| over its tokens, beside the left padding of its prompt in the
    trainer's batch (TRL's own metric averages these over the batch)."""
    from trl import GRPOTrainer

    rows: list[dict] = []
    original = GRPOTrainer._generate_and_score_completions

    def wrapped(self, inputs):
        out = original(self, inputs)
        old, sampled = out.get("old_per_token_logps"), out.get("sampling_per_token_logps")
        if old is not None and sampled is not None:
            mask = out["completion_mask"].bool()
            diff = (old - sampled).abs()
            for i in range(old.size(0)):
                rows.append({"step": blocks.step, "prompt_left_pad": int((out["prompt_mask"][i] == 0).sum()),
                             "prompt_tokens": int(out["prompt_mask"][i].sum()),
                             "mean_abs_logp_diff": round(float(diff[i][mask[i]].mean()), 4)})
        return out

    GRPOTrainer._generate_and_score_completions = wrapped
    return rows


def mismatch_by_padding(rows: list[dict]) -> dict:
    """Mean of the per-completion gaps, grouped by left padding (0 tokens vs more)."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault("unpadded" if r["prompt_left_pad"] == 0 else "left-padded", []).append(
            r["mean_abs_logp_diff"])
    return {k: {"completions": len(v), "mean_abs_logp_diff": round(statistics.mean(v), 4)} for k, v in groups.items()}


def child_gspo(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    from vlmrl_pipeline.core.model.loading import LoraSettings, load_model, peft_lora_config
    from vlmrl_pipeline.core.standin.rehearsal import ascii_share_reward
    from vlmrl_pipeline.core.training.gspo_config import GSPOSettings
    from vlmrl_pipeline.core.training.trainer import rollout_summary, train_gspo

    use_vllm = spec["engine"] == "vllm"
    on_gpu = torch.cuda.is_available()
    t0 = time.perf_counter()
    model, processor, _ = load_model(spec["ckpt"], backend="transformers", dtype="bfloat16" if on_gpu else "float32",
                                     load_in_4bit=False, max_seq_length=spec["max_seq_length"])
    res: dict = {"load_s": round(time.perf_counter() - t0, 2), "memory_after_load": cuda_memory()}
    lora = LoraSettings(r=16, lora_alpha=16)
    settings = GSPOSettings(
        per_device_train_batch_size=spec["batch"], num_generations=spec["num_generations"],
        gradient_accumulation_steps=spec["grad_accum"], max_completion_length=spec["max_completion_length"],
        max_steps=spec["warmup"] + spec["steps"], save_steps=0, logging_steps=1,
        use_vllm=use_vllm, vllm_gpu_memory_utilization=spec["vllm_gpu_memory_utilization"],
    )
    dataset = gspo_dataset(spec["train_rows"], spec["image_size"], seed=spec["seed"],
                           two_digit=spec.get("equal_prompts", False))
    blocks = ProfiledBlocks()
    mismatch_rows = record_mismatch_by_row(blocks) if use_vllm else []

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (rollout + rewards + forward/backward + optimizer + weight sync)."""

        def __init__(self):
            self.train_begin: float | None = None
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.begin.append(time.perf_counter())
            blocks.step = state.global_step + 1

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.end.append(time.perf_counter())

    timer = StepTimer()
    label = f"gspo {spec['engine']}"
    t_call = time.perf_counter()
    _, tres = train_gspo(model, processor, dataset, settings, Path(spec["work_dir"]) / "trainer",
                         [ascii_share_reward], [1.0], peft_config=peft_lora_config(lora),
                         log=lambda msg: log(f"{label}: {msg}"), callbacks=[timer],
                         max_seq_length=spec["max_seq_length"])
    sync()
    t_done = time.perf_counter()
    if len(timer.begin) != settings.max_steps or len(timer.end) != settings.max_steps:
        raise RuntimeError(f"timed {len(timer.begin)}/{len(timer.end)} step begins/ends, expected "
                           f"{settings.max_steps}")
    steps = [round(e - b, 3) for b, e in zip(timer.begin, timer.end)]
    timed = steps[spec["warmup"]:]
    rows = [h for h in tres.log_history if "loss" in h or "reward" in h]
    res.update({
        # Trainer construction (with vLLM: the colocated engine's start and compile) up to the first step.
        "trainer_setup_s": round((timer.train_begin or t_call) - t_call, 2),
        "train_wall_s": round(t_done - t_call, 2),
        "step_s_all": steps, "warmup_step_s": steps[:spec["warmup"]], "step_s_timed": timed,
        "median_step_s": round(statistics.median(timed), 3),
        "rollout_s_per_step": blocks.per_step("vLLM.generate" if use_vllm else "transformers.generate",
                                              settings.max_steps),
        "sync_weights_s_per_step": blocks.per_step("sync_weights", settings.max_steps) if use_vllm else None,
        "completion_mean_length": [h.get("completions/mean_length") for h in rows],
        "memory": cuda_memory(),
        "log_history": tres.log_history,
        "rollout_metrics": rollout_summary(tres.log_history),
        "mismatch_by_row": mismatch_rows, "mismatch_by_padding": mismatch_by_padding(mismatch_rows),
        "gspo_settings": dataclasses.asdict(settings), "lora": dataclasses.asdict(lora),
    })
    if mismatch_rows:
        log(f"{label}: rollout/train mismatch by the prompt's left padding: {res['mismatch_by_padding']}")
    log(f"{label}: steps {steps} s (median of timed {res['median_step_s']} s), peak "
        f"{_f(res['memory'].get('peak_allocated_gb'))} GB, rollout metrics {res['rollout_metrics']}")
    return res


CHILD_JOBS = {"build": child_build, "eval-transformers": child_eval_transformers, "eval-vllm": child_eval_vllm,
              "gspo-transformers": child_gspo, "gspo-vllm": child_gspo}


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out_path = Path(spec["result_path"])
    try:
        res = CHILD_JOBS[spec["job"]](spec)
        res["status"] = "ok"
        code = 0
    except Exception as exc:  # recorded in the result file; the exit code says it failed
        import traceback

        traceback.print_exc()
        res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:3000]}
        code = 1
    with contextlib.suppress(Exception):
        res["device"] = device_name()
    out_path.write_text(json.dumps(res, default=str))
    return code


# --------------------------------------------------------------------------------------------- parent


def run_child(spec: dict, timeout: float | None) -> dict:
    """Run one job in a fresh process (its own session, so a timeout kills vLLM's engine core with it)."""
    with tempfile.TemporaryDirectory() as d:
        spec = dict(spec, result_path=str(Path(d) / "result.json"))
        spec_path = Path(d) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], start_new_session=True)
        killed = False
        try:
            rc = proc.wait(timeout=None if timeout is None else max(timeout, 1))
        except subprocess.TimeoutExpired:
            killed, rc = True, None
        # Also after a normal exit: vLLM's engine core may outlive a child that crashed. End the whole session
        # before the next child starts.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rp = Path(spec["result_path"])
        if rp.exists():
            res = json.loads(rp.read_text())
            if killed:
                res["note"] = f"killed after {timeout:.0f}s (--deadline-s), after it had written its result"
        elif killed:
            res = {"status": "failed", "error": f"killed after {timeout:.0f}s (--deadline-s)"}
        else:
            res = {"status": "failed", "error": f"child exited with {rc} and wrote no result"}
        res["child_wall_s"] = round(time.perf_counter() - t0, 1)
        return res


def entry_key(e: dict) -> tuple:
    return (e.get("part"), e.get("model"), e.get("engine"))


def load_results(paths) -> list[dict]:
    """Entries of one or more results files, merged in order (later files win, as in :func:`merge_entry`)."""
    entries: list[dict] = []
    for p in paths:
        p = Path(p)
        if p.exists():
            for e in json.loads(p.read_text()):
                entries = merged(entries, e)
    return entries


def merge_into(target: Path, paths) -> None:
    """Add these results files' entries to the project's ``benchmarks/results.json``, beside
    ``gspo_benchmark.py``'s: each also gets that file's key, ``backend`` (the engine) and ``kind``
    (``vllm-eval`` / ``vllm-gspo``); an entry with the same key is replaced."""
    existing = json.loads(target.read_text()) if target.exists() else []
    new = load_results(paths)
    for e in new:
        e.update(backend=e["engine"], kind=f"vllm-{e['part']}")
    keys = {(e["model"], e["backend"], e["kind"]) for e in new}
    kept = [e for e in existing if (e.get("model"), e.get("backend"), e.get("kind")) not in keys]
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept + new, indent=1, default=str))
    os.replace(tmp, target)
    log(f"{len(new)} vLLM entries merged into {target} ({len(kept)} others kept)")


def merged(entries: list[dict], entry: dict) -> list[dict]:
    old = next((e for e in entries if entry_key(e) == entry_key(entry)), None)
    if old is not None and old.get("status") == "ok" and entry.get("status") == "skipped":
        return entries
    return [e for e in entries if entry_key(e) != entry_key(entry)] + [entry]


def merge_entry(path: Path, entry: dict) -> None:
    """Write ``entry`` into the results file now, so a run cut short keeps what it measured."""
    entries = merged(load_results([path]), entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1, default=str))
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("eval", "gspo", "all"), default="eval")
    p.add_argument("--models", default="8b,2b", help="eval: comma list of 8b, 2b")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma list of transformers, vllm")
    p.add_argument("--prompts", type=int, default=64, help="eval: prompts, all decoded in one batch")
    p.add_argument("--max-new-tokens", type=int, default=256, help="eval: new tokens per prompt (greedy)")
    p.add_argument("--warmup-prompts", type=int, default=8, help="eval: untimed warm-up batch, other images")
    p.add_argument("--warmup-new-tokens", type=int, default=16)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.5, help="eval: vLLM's share of the GPU")
    p.add_argument("--vllm-eager", action="store_true", help="eval: vLLM without torch.compile and CUDA graphs")
    p.add_argument("--max-seq-length", type=int, default=16384,
                   help="vLLM max_model_len (eval) and the model's context (GSPO, as the project passes it)")
    p.add_argument("--gspo-model", default="2b", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=8, help="GSPO per_device_train_batch_size (completions per step)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--equal-prompts", action="store_true",
                   help="GSPO: prompts of one token count (two-digit numbers), so no batch needs left padding")
    p.add_argument("--grad-accum", type=int, default=4,
                   help="GSPO gradient_accumulation_steps; TRL generates batch x grad-accum completions at once (the "
                        "seed's 8 x 4 = 32: 8 prompts x 4 generations)")
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="GSPO timed steps")
    p.add_argument("--gspo-warmup", type=int, default=1, help="GSPO untimed steps first")
    p.add_argument("--gspo-vllm-gpu-memory-utilization", type=float, default=0.3,
                   help="GSPO: the colocated engine's share of the GPU (GSPOSettings.vllm_gpu_memory_utilization)")
    p.add_argument("--bandwidth-gbps", type=float, default=None, help="GPU memory bandwidth in GB/s (overrides the "
                   "name lookup: H100 SXM 3350, H100 PCIe 2000, H200 4800)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="stand-in checkpoints and scratch (default /dev/shm/vllm_bench)")
    p.add_argument("--out", default=None, help="results JSON (merged by part, model, engine)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="wall-clock budget: configurations that would not finish in it are skipped (and recorded)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU plumbing check: tiny stand-in, 4 prompts, 8 new tokens, vLLM children skipped")
    p.add_argument("--report", nargs="+", metavar="RESULTS", help="print the markdown tables of results files")
    p.add_argument("--merge-into", metavar="TARGET", help="merge the results files given after it into TARGET "
                   "(benchmarks/results.json) and exit")
    p.add_argument("results", nargs="*", help="with --merge-into: the results files")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        code = child_main(args.child)
        sys.stdout.flush()
        sys.stderr.flush()
        # The result is written: skip interpreter teardown (vLLM's atexit hooks and a colocated engine's process
        # group can hang there); the parent ends whatever this process leaves behind.
        os._exit(code)
    if args.merge_into:
        merge_into(Path(args.merge_into), args.results)
        return 0
    if args.report:
        print(report(load_results(args.report)))
        return 0

    start = time.perf_counter()
    if args.smoke:
        args.prompts, args.max_new_tokens, args.warmup_prompts, args.warmup_new_tokens = 4, 8, 2, 4
        args.max_completion_length, args.steps, args.gspo_warmup = 8, 1, 1
        args.max_seq_length = min(args.max_seq_length, 4096)
    work = Path(args.work_dir or ("/tmp/vllm_bench_smoke" if args.smoke else "/dev/shm/vllm_bench"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or work / "results.json")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS] + [e for e in engines if e not in ENGINES]
    if bad:
        raise SystemExit(f"unknown model/engine: {bad}")
    parts = ["eval", "gspo"] if args.part == "all" else [args.part]
    vers = versions()
    gpu = gpu_name_without_cuda()
    vllm_skip = vllm_skip_reason(args.smoke)
    log(f"parts={parts} eval models={models if 'eval' in parts else '-'} gspo model="
        f"{args.gspo_model if 'gspo' in parts else '-'} engines={engines} gpu={gpu} versions={vers} out={out} "
        f"work={work}")
    if vllm_skip and "vllm" in engines:
        log(f"vLLM children will be skipped: {vllm_skip}")

    def remaining() -> float | None:
        return None if args.deadline_s is None else args.deadline_s - (time.perf_counter() - start)

    def left_text() -> str:
        left = remaining()
        return "no deadline" if left is None else f"{left:.0f}s left"

    def too_late(key: tuple) -> str | None:
        left, need = remaining(), 0 if args.smoke else ESTIMATE_S.get(key, 0)
        if left is not None and left < need:
            return f"{left:.0f}s of --deadline-s left, this needs about {need}s"
        return None

    def child_timeout() -> float | None:
        left = remaining()
        return None if left is None else left - 5

    common = {"versions": vers, "command": " ".join([Path(sys.executable).name] + sys.argv), "smoke": args.smoke}
    status = 0

    def ensure_checkpoint(m: str) -> tuple[Path | None, dict | None]:
        """The stand-in's folder, or None and the status its configurations are recorded with."""
        standin = MODELS[m]
        ckpt = work / f"{standin}{'-tiny' if args.smoke else ''}-bf16"
        if (ckpt / "config.json").exists():
            return ckpt, None
        late = too_late(("build", m))
        if late:
            return None, {"status": "skipped", "error": f"stand-in not built: {late}"}
        log(f"building stand-in {standin} -> {ckpt}")
        res = run_child({"job": "build", "standin": standin, "ckpt": str(ckpt), "tiny": args.smoke},
                        child_timeout())
        log(f"build {standin}: {res.get('status')} in {res.get('child_wall_s')}s {res.get('error') or ''}")
        if res.get("status") == "ok":
            return ckpt, None
        return None, {"status": "failed", "error": f"stand-in build failed: {res.get('error')}"}

    def skip_reason(part: str, engine: str, m: str, no_ckpt: dict | None) -> dict | None:
        if no_ckpt:
            return no_ckpt
        why = (vllm_skip if engine == "vllm" else None) or too_late((part, engine, m))
        return {"status": "skipped", "error": why} if why else None

    def record(entry: dict) -> None:
        nonlocal status
        entry.setdefault("device", gpu)
        if entry.get("status") == "failed":
            status = 1
        merge_entry(out, entry)
        log(f"{entry['part']} {entry['model']} {entry['engine']}: {entry.get('status')}"
            + (f" ({entry.get('error')})" if entry.get("error") else ""))

    if "eval" in parts:
        eval_settings = {"n_prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                         "batch_size": args.prompts, "greedy": True, "image_size": args.image_size,
                         "warmup_prompts": args.warmup_prompts, "warmup_new_tokens": args.warmup_new_tokens,
                         "vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization,
                         "vllm_enforce_eager": args.vllm_eager, "max_model_len": args.max_seq_length,
                         "seed": args.seed}
        for m in models:
            ckpt, no_ckpt = ensure_checkpoint(m)
            weights = checkpoint_weight_bytes(ckpt) if ckpt else None
            kv = kv_bytes_per_token(ckpt) if ckpt else None
            for engine in engines:
                entry = {"part": "eval", "model": MODELS[m], "engine": engine, **common, "settings": eval_settings,
                         "checkpoint": str(ckpt) if ckpt else None, "weights": weights}
                skip = skip_reason("eval", engine, m, no_ckpt)
                if skip:
                    record({**entry, **skip})
                    continue
                log(f"eval {MODELS[m]} {engine} ({left_text()})")
                res = run_child({"job": f"eval-{engine}", "ckpt": str(ckpt), "n_prompts": args.prompts,
                                 "max_new_tokens": args.max_new_tokens, "warmup_prompts": args.warmup_prompts,
                                 "warmup_new_tokens": args.warmup_new_tokens, "image_size": args.image_size,
                                 "vllm_gpu_memory_utilization": args.vllm_gpu_memory_utilization,
                                 "vllm_eager": args.vllm_eager, "max_model_len": args.max_seq_length,
                                 "seed": args.seed}, child_timeout())
                entry.update(res)
                bandwidth, source = bandwidth_for(entry.get("device"), args.bandwidth_gbps)
                entry.update(bandwidth_Bps=bandwidth, bandwidth_source=source)
                if res.get("status") == "ok":
                    entry["memory_bound"] = memory_bound(entry, weights, kv, bandwidth)
                record(entry)

    if "gspo" in parts:
        m = args.gspo_model
        gspo_settings = {"per_device_train_batch_size": args.batch, "num_generations": args.num_generations,
                         "gradient_accumulation_steps": args.grad_accum,
                         "completions_per_step": args.batch * args.grad_accum,
                         "max_completion_length": args.max_completion_length,
                         "warmup_steps_untimed": args.gspo_warmup, "timed_steps": args.steps,
                         "max_steps": args.gspo_warmup + args.steps, "backend": "transformers", "dtype": "bfloat16",
                         "load_in_4bit": False, "lora": {"r": 16, "lora_alpha": 16},
                         "reward": "ascii_share_reward", "image_size": args.image_size,
                         "equal_prompts": args.equal_prompts,
                         "max_seq_length": args.max_seq_length,
                         "vllm_gpu_memory_utilization": args.gspo_vllm_gpu_memory_utilization, "seed": args.seed}
        ckpt, no_ckpt = ensure_checkpoint(m)
        for engine in engines:
            entry = {"part": "gspo", "model": MODELS[m], "engine": engine, **common, "settings": gspo_settings,
                     "checkpoint": str(ckpt) if ckpt else None}
            skip = skip_reason("gspo", engine, m, no_ckpt)
            if skip:
                record({**entry, **skip})
                continue
            log(f"gspo {MODELS[m]} {engine} ({left_text()})")
            res = run_child({"job": f"gspo-{engine}", "engine": engine, "ckpt": str(ckpt), "batch": args.batch,
                             "grad_accum": args.grad_accum, "num_generations": args.num_generations,
                             "steps": args.steps,
                             "warmup": args.gspo_warmup, "max_completion_length": args.max_completion_length,
                             "max_seq_length": args.max_seq_length, "image_size": args.image_size,
                             "train_rows": 4 * args.batch * args.grad_accum, "equal_prompts": args.equal_prompts,
                             "seed": args.seed,
                             "vllm_gpu_memory_utilization": args.gspo_vllm_gpu_memory_utilization,
                             "work_dir": str(work / f"gspo-{MODELS[m]}-{engine}")}, child_timeout())
            record({**entry, **res})

    log(f"done in {time.perf_counter() - start:.0f}s; results in {out}")
    print(report(load_results([out])), flush=True)
    return status


def vllm_skip_reason(smoke: bool) -> str | None:
    if smoke:
        return "--smoke runs on the CPU; vLLM needs a CUDA GPU"
    from vlmrl_pipeline.core.evaluation.vllm_engine import vllm_problems

    problems = vllm_problems("the vLLM configurations")
    return "; ".join(problems) or None


# --------------------------------------------------------------------------------------------- report


def _f(v, nd=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _status(e: dict) -> str:
    s = e.get("status", "-")
    return s if s == "ok" else f"{s}: {str(e.get('error'))[:100]}"


def report(entries: list[dict]) -> str:
    lines: list[str] = []
    models = list(MODELS.values())
    entries = sorted(entries, key=lambda e: (models.index(e["model"]) if e.get("model") in models else 9,
                                             ENGINES.index(e["engine"]) if e.get("engine") in ENGINES else 9))
    ev = [e for e in entries if e.get("part") == "eval"]
    if ev:
        lines += ["## Evaluation decoding (greedy, all prompts in one batch)", "",
                  "| model | engine | status | prompts x new tokens | new tokens | start s | warm-up s | decode s | "
                  "tok/s | ms/step (approx) | floor ms/step | limit tok/s | of limit | of limit incl. KV | "
                  "peak GPU GB | device |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in ev:
            mb, mem = e.get("memory_bound") or {}, e.get("memory") or {}
            peak = mem.get("peak_allocated_gb") if e["engine"] == "transformers" else mem.get("device_used_gb")
            s = e.get("settings", {})
            lines.append("| " + " | ".join([
                e["model"], e["engine"], _status(e), f"{s.get('n_prompts')} x {s.get('max_new_tokens')}",
                _f(e.get("new_tokens")), _f(e.get("start_s"), 1), _f(e.get("warmup_s"), 1), _f(e.get("decode_s")),
                _f(e.get("tokens_per_s"), 1), _f(mb.get("ms_per_step_approx")), _f(mb.get("step_floor_ms"), 2),
                _f(mb.get("limit_tokens_per_s"), 0), _f(mb.get("fraction_of_limit"), 3),
                _f(mb.get("fraction_of_limit_with_kv"), 3), _f(peak), str(e.get("device", "-"))]) + " |")
        lines += ["", "Peak GPU GB: transformers `max_memory_allocated`; vLLM the device-wide use at the end "
                  "(`mem_get_info`; the engine pre-allocates `gpu_memory_utilization` of the GPU). ms/step = decode "
                  "wall / max_new_tokens, prefill and preprocessing included (an upper bound on the decode step). "
                  "Limit = batch x bandwidth / language-model weight bytes (one full read per step); 'incl. KV' adds "
                  "the mean KV-cache read per step.", ""]
        split = [e for e in ev if (e.get("memory_bound") or {}).get("decode_only_s")]
        if split:
            lines += ["Prefill and decode apart (decode = the timed run minus a prefill-only pass, 1 new token, "
                      "same batch and shapes, other images):", "",
                      "| model | engine | prefill s | decode s | ms/decode step | floor ms/step | decode tok/s | "
                      "of limit | of limit incl. KV |", "|---|---|---|---|---|---|---|---|---|"]
            for e in split:
                mb = e["memory_bound"]
                lines.append("| " + " | ".join([
                    e["model"], e["engine"], _f(e.get("prefill_s")), _f(mb.get("decode_only_s")),
                    _f(mb.get("ms_per_decode_step")), _f(mb.get("step_floor_ms"), 2),
                    _f(mb.get("decode_tokens_per_s"), 0), _f(mb.get("decode_fraction_of_limit"), 3),
                    _f(mb.get("decode_fraction_of_limit_with_kv"), 3)]) + " |")
            lines.append("")
        by = {entry_key(e): e for e in ev}
        for model in dict.fromkeys(e["model"] for e in ev):
            tf, vl = by.get(("eval", model, "transformers"), {}), by.get(("eval", model, "vllm"), {})
            w = (tf.get("weights") or vl.get("weights") or {})
            mb = tf.get("memory_bound") or vl.get("memory_bound") or {}
            bw = tf.get("bandwidth_Bps") or vl.get("bandwidth_Bps")
            source = tf.get("bandwidth_source") or vl.get("bandwidth_source")
            if w:
                lines.append(f"- {model}: language-model weights {w['text_bytes'] / GB:.2f} GB (vision tower "
                             f"{w['vision_bytes'] / GB:.2f} GB, not read per step), bandwidth "
                             f"{_f(bw / 1e12 if bw else None)} TB/s ({source}): step floor "
                             f"{_f(mb.get('step_floor_ms'))} ms, limit {_f(mb.get('limit_tokens_per_s'), 0)} tok/s "
                             f"at batch {(tf.get('settings') or vl.get('settings') or {}).get('n_prompts')}")
            if tf.get("status") == "ok" and vl.get("status") == "ok" and tf.get("tokens_per_s"):
                lines.append(f"- {model}: vLLM / transformers decode throughput = {vl['tokens_per_s']:.1f} / "
                             f"{tf['tokens_per_s']:.1f} tok/s = **{vl['tokens_per_s'] / tf['tokens_per_s']:.2f}x** "
                             f"(same device: {tf.get('device') == vl.get('device')})")
                tmb, vmb = tf.get("memory_bound") or {}, vl.get("memory_bound") or {}
                if tmb.get("decode_tokens_per_s") and vmb.get("decode_tokens_per_s"):
                    lines.append(f"- {model}: decode alone, vLLM / transformers = "
                                 f"{vmb['decode_tokens_per_s'] / tmb['decode_tokens_per_s']:.2f}x; prefill alone "
                                 f"{tf['prefill_s'] / vl['prefill_s']:.2f}x")
        lines.append("")
    gs = [e for e in entries if e.get("part") == "gspo"]
    if gs:
        lines += ["## GSPO step (transformers backend, bf16, LoRA r=16)", "",
                  "| model | rollouts | status | batch x completion | median step s | timed steps s | warm-up step s | "
                  "trainer setup s | rollout s/step | peak alloc GB | peak reserved GB | device used GB | device |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in gs:
            mem, s = e.get("memory") or {}, e.get("settings", {})
            w = s.get("warmup_steps_untimed", 1)
            rollout = (e.get("rollout_s_per_step") or [])[w:]
            lines.append("| " + " | ".join([
                e["model"], e["engine"] + (f" (util {s.get('vllm_gpu_memory_utilization')})"
                                           if e["engine"] == "vllm" else ""), _status(e),
                f"{s.get('completions_per_step', s.get('per_device_train_batch_size'))} x "
                f"{s.get('max_completion_length')}",
                _f(e.get("median_step_s")), " / ".join(_f(x) for x in e.get("step_s_timed") or []) or "-",
                " / ".join(_f(x, 1) for x in e.get("warmup_step_s") or []) or "-", _f(e.get("trainer_setup_s"), 1),
                _f(statistics.median(rollout)) if rollout else "-", _f(mem.get("peak_allocated_gb")),
                _f(mem.get("peak_reserved_gb")), _f(mem.get("device_used_gb")), str(e.get("device", "-"))]) + " |")
        lines += ["", "Step = `on_step_begin` -> `on_step_end` (rollout, rewards, forward/backward, optimizer; with "
                  "vLLM also the LoRA-merged weight sync). With vLLM colocated, peak alloc includes the engine's "
                  "weights and KV cache (about `vllm_gpu_memory_utilization` of the GPU).", ""]
        by = {entry_key(e): e for e in gs}
        for model in dict.fromkeys(e["model"] for e in gs):
            tf, vl = by.get(("gspo", model, "transformers"), {}), by.get(("gspo", model, "vllm"), {})
            if tf.get("median_step_s") and vl.get("median_step_s"):
                lines.append(f"- {model}: step time transformers / vLLM rollouts = {tf['median_step_s']:.2f} / "
                             f"{vl['median_step_s']:.2f} s = **{tf['median_step_s'] / vl['median_step_s']:.2f}x**; "
                             f"peak alloc {_f((tf.get('memory') or {}).get('peak_allocated_gb'))} vs "
                             f"{_f((vl.get('memory') or {}).get('peak_allocated_gb'))} GB")
            if vl.get("rollout_metrics"):
                shown = ", ".join(f"{k} {v:.4g}" for k, v in vl["rollout_metrics"].items())
                lines.append(f"- {model} vLLM rollout/train mismatch (TRL, over all steps): {shown}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
