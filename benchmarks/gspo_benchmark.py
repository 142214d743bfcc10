"""GSPO speed and memory benchmark on the real Qwen3-VL 2B / 8B architectures (random weights), one GPU, one run.

    python benchmarks/gspo_benchmark.py                      # 2B and 8B, all three backends, + eval throughput
    python benchmarks/gspo_benchmark.py --models 8b --backends unsloth-4bit
    python benchmarks/gspo_benchmark.py --smoke              # tiny config on CPU, transformers backend, ~1 min

For each architecture the script writes one random-weight bf16 checkpoint (config values of the published
Qwen/Qwen3-VL-{2B,8B}-Instruct, a byte-level BPE tokenizer trained offline, vision special-token ids matching the
config) and loads it through the project's ``load_model`` for every backend:

* ``transformers-bf16``: ``AutoModelForImageTextToText`` in bf16, PEFT LoRA (TRL applies ``peft_lora_config``);
* ``unsloth-4bit``: ``FastVisionModel.from_pretrained(load_in_4bit=True)`` + ``get_peft_model`` (``apply_lora``);
* ``unsloth-16bit``: the same in 16 bit.

Each configuration runs in its own process (a clean CUDA allocator, and Unsloth's import-time patches of
transformers/TRL never leak into the plain baseline) and trains GSPO through the project's ``train_gspo``
(TRL ``GRPOTrainer``, ``importance_sampling_level="sequence"``, rewards ``REWARD_FUNCTIONS`` / ``REWARD_WEIGHTS``)
for ``--warmup`` untimed + ``--steps`` timed optimizer steps on the same batch shape. Measured: wall seconds per
step, rollout tokens per second (TRL's ``transformers.generate`` block), peak ``max_memory_allocated`` /
``max_memory_reserved``. The bf16 process first measures evaluation throughput (the project's
``generate_completions``, greedy, same prompts and ``max_new_tokens``) batched versus one prompt at a time.

Results are merged into ``--out`` (a JSON list) by ``(model, backend, kind)`` after every configuration, so a run
split over several calls (``--models 2b`` then ``--models 8b``) builds one file, and a run cut short keeps what
it measured. ``--report`` prints the markdown table of a results file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BACKENDS = ("transformers-bf16", "unsloth-4bit", "unsloth-16bit")
VERSION_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "unsloth", "unsloth_zoo", "bitsandbytes")

# Published config values (Qwen/Qwen3-VL-2B-Instruct and Qwen/Qwen3-VL-8B-Instruct config.json; field names as in
# transformers 5.17's Qwen3VLTextConfig / Qwen3VLVisionConfig). Token ids are not listed: they come from the
# tokenizer built here, so that processor and config agree.
ARCHS: dict[str, dict] = {
    "2b": {
        "name": "qwen3-vl-2b-arch",
        "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                      "mrope_interleaved": True}),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[5, 11, 17]),
        "tie_word_embeddings": True,
    },
    "8b": {
        "name": "qwen3-vl-8b-arch",
        "text": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                      "mrope_interleaved": True}),
        "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[8, 16, 24]),
        "tie_word_embeddings": False,
    },
    # --smoke: same code path, a shape that runs on two CPU cores. The vocab stays larger than the tokenizer, as
    # in the real runs (151936 vs a few thousand trained tokens).
    "tiny": {
        "name": "qwen3-vl-tiny-arch",
        "text": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                     rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                      "mrope_interleaved": True}),
        "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                       hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[1]),
        "tie_word_embeddings": True,
    },
}

# Rough seconds per child on an H100 (import + load + compile + steps), to skip what cannot finish before
# --deadline-s instead of being killed half-way.
ESTIMATE_S = {
    ("2b", "build"): 35, ("8b", "build"): 80,
    ("2b", "transformers-bf16"): 90, ("8b", "transformers-bf16"): 140,
    ("2b", "unsloth-4bit"): 150, ("8b", "unsloth-4bit"): 210,
    ("2b", "unsloth-16bit"): 140, ("8b", "unsloth-16bit"): 190,
}

GB = 1e9


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> dict[str, str | None]:
    out = {}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------------------------- data and processor


def synthetic_rows(n: int, image_size: int, seed: int):
    from vlmrl_pipeline.core.demo.synthetic import generate_synthetic_mathvista

    return generate_synthetic_mathvista(num_rows=n, seed=seed, image_size=image_size)


def prompt_texts(rows) -> list[str]:
    from vlmrl_pipeline.core.prompts import build_prompt_text

    return [build_prompt_text(r, "query") for r in rows.to_dict(orient="records")]


def build_processor(image_size: int, vocab: int):
    """The project's offline Qwen3-VL processor (BPE trained on synthetic MathVista prompts), images up to
    ``image_size`` px per side (512 px -> 32x32 patches -> 256 image tokens after the 2x2 merge)."""
    from vlmrl_pipeline.core.demo.tiny_model import TinyModelSpec, build_tiny_processor

    rows = synthetic_rows(200, 64, seed=123)
    corpus = prompt_texts(rows) + ["<REASONING> </REASONING> <SOLUTION> </SOLUTION>", "0123456789 .-,%"]
    corpus += [str(a) for a in rows["answer"]]
    return build_tiny_processor(corpus, TinyModelSpec(tokenizer="trained", vocab_size=vocab, image_size=image_size))


def write_images(rows, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in rows.to_dict(orient="records"):
        p = folder / f"{r['pid']}.png"
        p.write_bytes(r["decoded_image"]["bytes"])
        paths.append(str(p))
    return paths


def train_dataset(n: int, image_size: int, folder: Path):
    """TRL's VLM format, as ``samples.trl_dataset`` builds it: ``prompt`` (chat), ``image`` (lazy), ``answer``."""
    import datasets

    from vlmrl_pipeline.core.prompts import chat_prompt

    rows = synthetic_rows(n, image_size, seed=0)
    paths = write_images(rows, folder)
    ds = datasets.Dataset.from_dict({
        "prompt": [chat_prompt(t) for t in prompt_texts(rows)],
        "image": paths,
        "answer": [str(a) for a in rows["answer"]],
        "pid": [str(p) for p in rows["pid"]],
    })
    return ds.cast_column("image", datasets.Image())


def eval_inputs(n: int, image_size: int):
    import io

    from PIL import Image

    from vlmrl_pipeline.core.prompts import chat_prompt

    rows = synthetic_rows(n, image_size, seed=7)
    images = [Image.open(io.BytesIO(r["decoded_image"]["bytes"])).convert("RGB") for r in rows.to_dict("records")]
    return [chat_prompt(t) for t in prompt_texts(rows)], images


# --------------------------------------------------------------------------------------------- children


def param_breakdown(model) -> dict[str, float]:
    """GB held by parameters, by part (4-bit weights count at their packed size)."""
    parts = {"vision": 0, "embed_tokens": 0, "lm_head": 0, "language_layers": 0, "lora": 0, "other": 0}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen and p.numel() > 0:
            continue
        seen.add(p.data_ptr())
        nbytes = p.numel() * p.element_size()
        if "lora_" in name:
            key = "lora"
        elif ".visual." in f".{name}" or name.startswith("visual"):
            key = "vision"
        elif "embed_tokens" in name:
            key = "embed_tokens"
        elif "lm_head" in name:
            key = "lm_head"
        elif "layers." in name:
            key = "language_layers"
        else:
            key = "other"
        parts[key] += nbytes
    return {k: round(v / GB, 3) for k, v in parts.items()}


def device_info():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", "cpu"


def mem_snapshot() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    return {
        "allocated_gb": round(torch.cuda.memory_allocated() / GB, 3),
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3),
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
    }


def child_build(spec: dict) -> dict:
    """Write the random-weight bf16 checkpoint of one architecture (model built directly on the device)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from vlmrl_pipeline.core.modeling import CHAT_SPECIAL_TOKENS, VISION_SPECIAL_TOKENS, save_checkpoint

    arch = ARCHS[spec["arch"]]
    t0 = time.perf_counter()
    processor = build_processor(spec["image_size"], spec["tokenizer_vocab"])
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in CHAT_SPECIAL_TOKENS + VISION_SPECIAL_TOKENS}
    if max(ids.values()) >= arch["text"]["vocab_size"] or len(tok) > arch["text"]["vocab_size"]:
        raise ValueError("tokenizer ids must stay below the model vocab")
    config = Qwen3VLConfig(
        text_config=dict(arch["text"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(arch["vision"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=arch["tie_word_embeddings"],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.bos_token_id = None
    n_params = sum(p.numel() for p in model.parameters())
    t_built = time.perf_counter()
    save_checkpoint(model, processor, spec["ckpt"], extra={"arch": arch["name"], "n_params": n_params,
                                                           "tokenizer_len": len(tok), "token_ids": ids})
    t_saved = time.perf_counter()
    return {"n_params": n_params, "tokenizer_len": len(tok), "token_ids": ids,
            "build_s": round(t_built - t0, 1), "save_s": round(t_saved - t_built, 1)}


class GenerateHook:
    """Counts rollout generation time and tokens: TRL's ``profiling_context(..., "transformers.generate")`` block
    (preferred) and, as a fallback, a wrapper around the base model's ``generate``."""

    def __init__(self):
        self.profiled: list[float] = []
        self.calls: list[dict] = []
        self.active = False

    def install_profiling(self):
        import trl.extras.profiling as prof

        original = prof.ProfilingContext._log_metrics
        hook = self

        def _log_metrics(ctx, duration):
            if hook.active and ctx.name.endswith("transformers.generate"):
                hook.profiled.append(duration)
            return original(ctx, duration)

        prof.ProfilingContext._log_metrics = _log_metrics

    def wrap(self, base_model):
        import torch

        original = base_model.generate
        hook = self

        def generate(*args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if hook.active:
                ids = kwargs.get("input_ids", args[0] if args else None)
                seqs = out.sequences if hasattr(out, "sequences") else out
                new = seqs[:, ids.shape[1]:] if ids is not None else seqs
                pad = kwargs.get("pad_token_id")
                hook.calls.append({"s": dt, "rows": int(new.shape[0]), "decode_steps": int(new.shape[1]),
                                   "tokens": int(new.numel() if pad is None else (new != pad).sum())})
            return out

        base_model.generate = generate


def run_eval(model, processor, spec: dict) -> dict:
    """Greedy generation on the same prompts: ``batch_size`` at a time versus one by one."""
    import torch

    from vlmrl_pipeline.core.generation import GenerationSettings, generate_completions

    prompts, images = eval_inputs(spec["eval_prompts"], spec["image_size"])
    hook = GenerateHook()
    hook.wrap(model)
    # Warm-up (CUDA kernels, allocator), not timed.
    generate_completions(model, processor, prompts[:2], images[:2], GenerationSettings(max_new_tokens=4, batch_size=2))
    out = {"n_prompts": len(prompts), "max_new_tokens": spec["max_new_tokens"], "batch_size": spec["eval_batch"]}
    passes = max(1, int(spec.get("eval_passes", 1)))
    out["passes"] = passes
    for label, bs in (("sequential", 1), ("batched", spec["eval_batch"])):
        for i in range(passes):
            hook.calls.clear()
            hook.active = True
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            texts = generate_completions(model, processor, prompts, images,
                                         GenerationSettings(max_new_tokens=spec["max_new_tokens"], batch_size=bs))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            hook.active = False
            tokens = sum(c["tokens"] for c in hook.calls)
            if passes > 1 and i == 0:
                # The first pass meets every tensor shape for the first time; later passes show the warm speed.
                out[f"{label}_first_pass_s"] = round(dt, 3)
            out[f"{label}_s"] = round(dt, 3)
            out[f"{label}_samples_per_s"] = round(len(texts) / dt, 3)
            out[f"{label}_tokens"] = tokens
            out[f"{label}_tokens_per_s"] = round(tokens / dt, 1)
            out[f"{label}_generate_calls"] = len(hook.calls)
            # generate() alone (the rest is chat template + image preprocessing + decoding on the CPU)
            out[f"{label}_generate_s"] = round(sum(c["s"] for c in hook.calls), 3)
            out[f"{label}_ms_per_decode_step"] = round(
                1000 * out[f"{label}_generate_s"] / max(1, sum(c["decode_steps"] for c in hook.calls)), 1)
            log(f"eval {label} pass {i + 1}/{passes}: {len(texts)} samples in {dt:.2f}s "
                f"({len(texts) / dt:.2f} samples/s, {tokens} tokens)")
    out["speedup"] = round(out["batched_samples_per_s"] / out["sequential_samples_per_s"], 2)
    del model.generate  # drop the instance wrapper
    return out


def child_decode_profile(spec: dict) -> dict:
    """Where batched greedy generation spends its time: prefill (``max_new_tokens=1``) versus decode steps, batch 1
    versus ``eval_batch``, plus a ``torch.profiler`` table of the batched run."""
    import torch

    from vlmrl_pipeline.core.generation import GenerationSettings, generate_completions
    from vlmrl_pipeline.core.modeling import load_model

    on_gpu = torch.cuda.is_available()
    model, processor, _ = load_model(spec["ckpt"], backend="transformers", dtype="bfloat16" if on_gpu else "float32")
    bsz = spec["eval_batch"]
    prompts, images = eval_inputs(bsz, spec["image_size"])
    hook = GenerateHook()
    hook.wrap(model)
    generate_completions(model, processor, prompts[:2], images[:2], GenerationSettings(max_new_tokens=4, batch_size=2))
    out: dict = {"max_new_tokens": spec["max_new_tokens"]}
    for bs in (1, bsz):
        row = {}
        for label, n_new in (("prefill", 1), ("full", spec["max_new_tokens"])):
            times = []
            for _ in range(2):
                hook.calls.clear()
                hook.active = True
                generate_completions(model, processor, prompts[:bs], images[:bs],
                                     GenerationSettings(max_new_tokens=n_new, batch_size=bs))
                hook.active = False
                times.append(sum(c["s"] for c in hook.calls))
            row[f"{label}_s"] = round(min(times), 4)
        row["decode_ms_per_step"] = round(1000 * (row["full_s"] - row["prefill_s"]) / (spec["max_new_tokens"] - 1), 2)
        out[f"batch_{bs}"] = row
        log(f"decode profile batch {bs}: {row}")
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    for bs in (1, bsz):
        with profile(activities=acts) as prof:
            generate_completions(model, processor, prompts[:bs], images[:bs],
                                 GenerationSettings(max_new_tokens=16, batch_size=bs))
        sort = "cuda_time_total" if on_gpu else "cpu_time_total"
        out[f"profile_batch_{bs}_by_device_time"] = prof.key_averages().table(sort_by=sort, row_limit=15,
                                                                              max_name_column_width=60)
        out[f"profile_batch_{bs}_by_cpu_time"] = prof.key_averages().table(sort_by="cpu_time_total", row_limit=12,
                                                                           max_name_column_width=60)
        print(out[f"profile_batch_{bs}_by_device_time"], flush=True)
    return out


def child_gspo(spec: dict) -> dict:
    backend = spec["backend"]
    unsloth = backend.startswith("unsloth")
    if unsloth:
        import unsloth  # noqa: F401  -- first, so that it patches transformers and TRL before they are imported
    import torch

    from vlmrl_pipeline.core.gspo_config import GSPOSettings, build_grpo_config
    from vlmrl_pipeline.core.modeling import LoraSettings, apply_lora, load_model, peft_lora_config, vision_token_ids
    from vlmrl_pipeline.core.rewards import REWARD_FUNCTIONS, REWARD_WEIGHTS
    from vlmrl_pipeline.core.training import train_gspo

    on_gpu = torch.cuda.is_available()
    result: dict = {}
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, processor, used = load_model(
        spec["ckpt"], backend="unsloth" if unsloth else "transformers",
        dtype="bfloat16" if on_gpu else "float32", load_in_4bit=backend == "unsloth-4bit",
        max_seq_length=spec["max_seq_length"],
    )
    result["load_s"] = round(time.perf_counter() - t0, 1)
    result["backend_used"] = used
    result["mem_after_load"] = mem_snapshot()
    result["param_gb_after_load"] = param_breakdown(model)
    result["suppressed_token_ids"] = vision_token_ids(processor)
    cfg = model.config
    result["config_token_ids"] = {k: getattr(cfg, k, None) for k in
                                  ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    log(f"{backend}: loaded in {result['load_s']}s, {result['mem_after_load']}")

    if spec.get("eval"):
        result["eval"] = run_eval(model, processor, spec)
        result["eval"]["mem"] = mem_snapshot()
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    lora = LoraSettings(r=16, lora_alpha=16)
    settings = GSPOSettings(
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        num_generations=spec["num_generations"], max_completion_length=spec["max_completion_length"],
        max_steps=spec["warmup"] + spec["steps"], importance_sampling_level="sequence",
        logging_steps=1,
    )
    work = Path(spec["work_dir"])
    dataset = train_dataset(spec["train_rows"], spec["image_size"], work / "train_images")
    peft_config = None
    t_lora = time.perf_counter()
    if used == "unsloth":
        model = apply_lora(model, lora, used, seed=settings.seed)
    else:
        peft_config = peft_lora_config(lora)
    result["lora_s"] = round(time.perf_counter() - t_lora, 1)
    grpo_args = build_grpo_config(settings, work / "probe", processor, REWARD_WEIGHTS)
    result["effective"] = {k: getattr(grpo_args, k, None) for k in
                           ("optim", "bf16", "gradient_checkpointing", "loss_type", "importance_sampling_level",
                            "per_device_train_batch_size", "num_generations", "max_completion_length",
                            "steps_per_generation", "generation_batch_size")}
    result["effective"]["generation_kwargs"] = grpo_args.generation_kwargs

    hook = GenerateHook()
    hook.install_profiling()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hook.wrap(base)
    stamps: list[tuple[float, str]] = []

    def on_log(msg: str) -> None:
        if msg.startswith("GSPO step"):
            if on_gpu:
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), msg))
        log(f"{backend}: {msg}")

    hook.active = True
    t_train = time.perf_counter()
    trained, tres = train_gspo(
        model, processor, dataset, settings, work / "trainer", REWARD_FUNCTIONS, REWARD_WEIGHTS,
        peft_config=peft_config, log=on_log,
    )
    t_end = time.perf_counter()
    hook.active = False
    result["mem_train"] = mem_snapshot()
    result["param_gb_trained"] = param_breakdown(trained)
    result["trainable_params"] = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    result["total_params"] = sum(p.numel() for p in trained.parameters())
    result["train_wall_s"] = round(t_end - t_train, 1)
    times = [t for t, _ in stamps]
    if len(times) != settings.max_steps:
        raise RuntimeError(f"expected {settings.max_steps} logged steps, got {len(times)}: {[m for _, m in stamps]}")
    edges = [t_train] + times
    step_walls = [b - a for a, b in zip(edges, edges[1:])]
    w = spec["warmup"]
    timed = step_walls[w:]
    result["warmup_s"] = round(sum(step_walls[:w]), 2)
    result["warmup_note"] = "trainer construction + first step(s), incl. Unsloth's compile where it applies"
    result["step_s_all"] = [round(x, 3) for x in step_walls]
    result["step_s"] = round(sum(timed) / len(timed), 3)
    hist = [h for h in tres.log_history if "loss" in h or "reward" in h]
    result["trl_step_time"] = [round(float(h["step_time"]), 3) for h in hist if "step_time" in h]
    lengths = [float(h["completions/mean_length"]) for h in hist if "completions/mean_length" in h]
    result["completion_mean_length"] = lengths
    result["rewards"] = [round(float(h["reward"]), 4) for h in hist if "reward" in h]
    result["losses"] = [float(h["loss"]) for h in hist if "loss" in h]
    completions_per_step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    # Generation time per step: TRL's profiling block when it fired once per step, else the generate wrapper.
    if len(hook.profiled) == settings.max_steps:
        gen_s, source = hook.profiled, "trl profiling_context transformers.generate"
    elif len(hook.calls) == settings.max_steps:
        gen_s, source = [c["s"] for c in hook.calls], "base_model.generate wrapper"
    else:
        gen_s, source = None, f"no per-step generate timing (profiled={len(hook.profiled)}, calls={len(hook.calls)})"
    result["gen_timing_source"] = source
    result["generate_calls"] = hook.calls
    if gen_s is not None and len(lengths) == settings.max_steps:
        tokens = [completions_per_step * n for n in lengths]
        result["gen_s_per_step"] = [round(x, 3) for x in gen_s]
        result["gen_tokens_per_step"] = tokens
        result["gen_tokens_per_s"] = round(sum(tokens[w:]) / sum(gen_s[w:]), 1)
        result["gen_share_of_step"] = round(sum(gen_s[w:]) / sum(timed), 3)
    else:
        result["gen_tokens_per_s"] = None
    result["settings"] = dataclasses.asdict(settings)
    result["lora"] = dataclasses.asdict(lora)
    log(f"{backend}: step_s={result['step_s']} warmup_s={result['warmup_s']} gen_tok/s={result['gen_tokens_per_s']} "
        f"peak={result['mem_train'].get('peak_allocated_gb')}GB")
    return result


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out_path = Path(spec["result_path"])
    try:
        if spec["job"] == "build":
            res = child_build(spec)
        elif spec["job"] == "decode_profile":
            res = child_decode_profile(spec)
        else:
            res = child_gspo(spec)
        res["status"] = "ok"
    except Exception as exc:  # recorded in the result file; the exit code says it failed
        import traceback

        traceback.print_exc()
        res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        out_path.write_text(json.dumps(res, default=str))
        return 1
    res["device"] = device_info()[1]
    out_path.write_text(json.dumps(res, default=str))
    return 0


# --------------------------------------------------------------------------------------------- parent


def load_results(path: Path) -> list[dict]:
    if path.exists():
        return json.loads(path.read_text())
    return []


def merge_result(path: Path, entry: dict) -> None:
    """Replace the entry with the same (model, backend, kind), except that a failure never replaces a success."""
    entries = load_results(path)
    key = (entry["model"], entry["backend"], entry["kind"])
    kept = []
    for e in entries:
        if (e["model"], e["backend"], e["kind"]) == key:
            if e.get("status") == "ok" and entry.get("status") != "ok":
                log(f"keeping the earlier successful entry for {key}; this run: {entry.get('status')}")
                return
            continue
        kept.append(e)
    kept.append(entry)
    order = {n: i for i, n in enumerate(a["name"] for a in ARCHS.values())}
    kept.sort(key=lambda e: (order.get(e["model"], 9), e["kind"] == "eval", e["kind"],
                             BACKENDS.index(e["backend"]) if e["backend"] in BACKENDS else 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept, indent=1, default=str))
    os.replace(tmp, path)


def run_child(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        spec = dict(spec, result_path=str(Path(d) / "result.json"))
        spec_path = Path(d) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "failed", "error": f"timeout after {timeout:.0f}s (--deadline-s)"}
        rp = Path(spec["result_path"])
        if rp.exists():
            return json.loads(rp.read_text())
        return {"status": "failed", "error": f"child exited with {rc} and wrote no result"}


def unsloth_skip_reason() -> str | None:
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (Unsloth needs one)"
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny config on CPU, transformers backend; checks the path")
    p.add_argument("--models", default="2b,8b", help="comma list of 2b, 8b")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma list of {', '.join(BACKENDS)}")
    p.add_argument("--configs", default=None,
                   help="explicit model:backend list (e.g. 8b:unsloth-16bit,2b:transformers-bf16); overrides "
                        "--models/--backends")
    p.add_argument("--steps", type=int, default=3, help="timed GSPO steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed GSPO steps first (Unsloth compiles here)")
    p.add_argument("--batch", type=int, default=8, help="completions per step (per_device_train_batch_size)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--max-seq-length", type=int, default=16384)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64, help="eval generation length")
    p.add_argument("--eval-passes", type=int, default=1,
                   help="repeat each eval mode; numbers are from the last pass, the first is kept as *_first_pass_s "
                        "(1 = one cold pass, what the committed results.json measured)")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--out", default=None, help="results JSON (merged); default benchmarks/results.json")
    p.add_argument("--work-dir", default=None, help="checkpoints and scratch; default a folder under /tmp")
    p.add_argument("--deadline-s", type=float, default=None, help="skip configurations that cannot finish in time")
    p.add_argument("--merge", nargs="+", metavar="RESULTS",
                   help="merge these results files into --out (by model, backend, kind) and exit")
    p.add_argument("--decode-profile", action="store_true",
                   help="only profile greedy generation (prefill vs decode, batch 1 vs --eval-batch) per model")
    p.add_argument("--tag", default=None,
                   help="store GSPO entries as kind 'gspo:TAG' (a side measurement that keeps the main entries)")
    p.add_argument("--report", metavar="RESULTS", help="print the markdown table of a results file and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.report:
        print(report(load_results(Path(args.report))))
        return 0
    if args.merge:
        target = Path(args.out or REPO_ROOT / "benchmarks" / "results.json")
        for f in args.merge:
            for e in load_results(Path(f)):
                merge_result(target, e)
        print(report(load_results(target)))
        return 0
    start = time.perf_counter()
    if args.smoke:
        models = ["tiny"]
        args.max_completion_length = min(args.max_completion_length, 8)
        args.image_size = 128
        args.eval_prompts, args.eval_batch, args.max_new_tokens = 4, 4, 8
        args.max_seq_length = 4096
        tokenizer_vocab = 1024
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        tokenizer_vocab = 2048
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    pairs = [(m, b) for m in models for b in backends]
    if args.configs and not args.smoke:
        pairs = [tuple(c.strip().split(":", 1)) for c in args.configs.split(",") if c.strip()]
        models = list(dict.fromkeys(m for m, _ in pairs))
    bad = [m for m, _ in pairs if m not in ARCHS] + [b for _, b in pairs if b not in BACKENDS]
    if bad:
        raise SystemExit(f"unknown model/backend: {bad}")
    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "vlmrl_bench_smoke" / "results.json" if args.smoke
        else REPO_ROOT / "benchmarks" / "results.json")
    default_work = Path(tempfile.gettempdir()) / ("vlmrl_bench_smoke" if args.smoke else "vlmrl_bench")
    work_root = Path(args.work_dir or default_work)
    work_root.mkdir(parents=True, exist_ok=True)
    skip_unsloth = unsloth_skip_reason()
    vers = versions()
    log(f"models={models} backends={backends} out={out} versions={vers}")
    batch_settings = {
        "per_device_train_batch_size": args.batch, "num_generations": args.num_generations,
        "prompts_per_step": args.batch // args.num_generations, "gradient_accumulation_steps": 1,
        "max_completion_length": args.max_completion_length, "image_size": args.image_size,
        "image_tokens_per_prompt": (args.image_size // 32) ** 2, "warmup_steps": args.warmup,
        "timed_steps": args.steps, "max_seq_length": args.max_seq_length,
    }

    def remaining() -> float:
        if args.deadline_s is None:
            return 1e9
        return args.deadline_s - (time.perf_counter() - start)

    status = 0
    for m in models:
        arch = ARCHS[m]
        ckpt = work_root / f"{arch['name']}-ckpt"
        common = {"arch": m, "ckpt": str(ckpt), "image_size": args.image_size, "tokenizer_vocab": tokenizer_vocab}
        if not (ckpt / "config.json").exists():
            need = ESTIMATE_S.get((m, "build"), 0)
            if remaining() < need:
                log(f"skip {arch['name']}: {remaining():.0f}s left, building needs ~{need}s")
                continue
            log(f"building {arch['name']} -> {ckpt}")
            res = run_child({**common, "job": "build"}, remaining() - 5)
            log(f"build: {res}")
            if res.get("status") != "ok":
                status = 1
                for b in [b for mm, b in pairs if mm == m]:
                    merge_result(out, {"model": arch["name"], "backend": b, "kind": "gspo", "status": "failed",
                                       "error": f"checkpoint build failed: {res.get('error')}"})
                continue
        if args.decode_profile:
            spec = {**common, "job": "decode_profile", "eval_batch": args.eval_batch,
                    "max_new_tokens": args.max_new_tokens}
            log(f"decode profile {arch['name']} ({remaining():.0f}s left)")
            res = run_child(spec, remaining() - 5)
            merge_result(out, {"model": arch["name"], "backend": "transformers-bf16", "kind": "decode-profile",
                               "versions": vers, **res})
            continue
        for b in [b for mm, b in pairs if mm == m]:
            entry = {"model": arch["name"], "backend": b, "kind": f"gspo:{args.tag}" if args.tag else "gspo",
                     "batch": batch_settings,
                     "versions": vers, "command": " ".join([Path(sys.executable).name] + sys.argv)}
            if b.startswith("unsloth") and skip_unsloth:
                log(f"skip {arch['name']} {b}: {skip_unsloth}")
                merge_result(out, dict(entry, status="skipped", error=skip_unsloth))
                continue
            need = ESTIMATE_S.get((m, b), 0)
            if remaining() < need:
                log(f"skip {arch['name']} {b}: {remaining():.0f}s left, needs ~{need}s (rerun with --models {m} "
                    f"--backends {b})")
                continue
            want_eval = b == "transformers-bf16" and not args.no_eval and not args.tag
            spec = {**common, "job": "gspo", "backend": b, "steps": args.steps, "warmup": args.warmup,
                    "batch": args.batch, "num_generations": args.num_generations,
                    "max_completion_length": args.max_completion_length, "max_seq_length": args.max_seq_length,
                    "train_rows": 16, "eval": want_eval, "eval_prompts": args.eval_prompts,
                    "eval_batch": args.eval_batch, "max_new_tokens": args.max_new_tokens,
                    "eval_passes": args.eval_passes, "work_dir": str(work_root / f"{arch['name']}-{b}")}
            log(f"run {arch['name']} {b} ({remaining():.0f}s left)")
            t0 = time.perf_counter()
            res = run_child(spec, remaining() - 5)
            res["child_wall_s"] = round(time.perf_counter() - t0, 1)
            if res.get("status") != "ok":
                status = 1
                log(f"{arch['name']} {b} failed: {res.get('error')}")
            ev = res.pop("eval", None)
            merge_result(out, {**entry, **res,
                               "peak_mem_gb": res.get("mem_train", {}).get("peak_allocated_gb"),
                               "peak_reserved_gb": res.get("mem_train", {}).get("peak_reserved_gb")})
            if ev is not None:
                merge_result(out, {"model": arch["name"], "backend": b, "kind": "eval", "status": "ok",
                                   "device": res.get("device"), "versions": vers, "greedy": True, **ev,
                                   "peak_mem_gb": ev.get("mem", {}).get("peak_allocated_gb")})
    log(f"done in {time.perf_counter() - start:.0f}s; results in {out}")
    print(report(load_results(out)))
    return status


# --------------------------------------------------------------------------------------------- report


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def report(entries: list[dict]) -> str:
    lines = ["| model | backend | kind | status | step s (mean of timed) | warm-up s | rollout tok/s | peak alloc GB | "
             "peak reserved GB | weights after load GB | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for e in entries:
        by[(e["model"], e["backend"], e["kind"])] = e
        if not e["kind"].startswith("gspo"):
            continue
        status = e.get("status")
        if status != "ok":
            status = f"{status}: {str(e.get('error'))[:80]}"
        kind = e["kind"] + (f" (completion {e['batch']['max_completion_length']})" if e.get("batch") else "")
        cells = [e["model"], e["backend"], kind, status, _fmt(e.get("step_s")), _fmt(e.get("warmup_s"), 1),
                 _fmt(e.get("gen_tokens_per_s"), 1), _fmt(e.get("peak_mem_gb")), _fmt(e.get("peak_reserved_gb")),
                 _fmt(e.get("mem_after_load", {}).get("allocated_gb")), str(e.get("device", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    for e in entries:
        if e["kind"] == "decode-profile" and e.get("status") == "ok":
            b1 = e.get("batch_1", {})
            bn = next((v for k, v in e.items() if k.startswith("batch_") and k != "batch_1"), {})
            lines.append(f"- {e['model']} greedy decode: batch 1 prefill {b1.get('prefill_s')}s, "
                         f"{b1.get('decode_ms_per_step')} ms/step; batched prefill {bn.get('prefill_s')}s, "
                         f"{bn.get('decode_ms_per_step')} ms/step")
    ev = [e for e in entries if e["kind"] == "eval"]
    if ev:
        lines += ["", "| model | eval prompts | batch | max_new_tokens | sequential samples/s | batched samples/s | "
                  "speed-up |", "|---|---|---|---|---|---|---|"]
        for e in ev:
            lines.append(f"| {e['model']} | {e.get('n_prompts')} | {e.get('batch_size')} | {e.get('max_new_tokens')} | "
                         f"{_fmt(e.get('sequential_samples_per_s'))} | {_fmt(e.get('batched_samples_per_s'))} | "
                         f"{_fmt(e.get('speedup'))}x |")
    lines.append("")
    for m in ("qwen3-vl-8b-arch", "qwen3-vl-2b-arch", "qwen3-vl-tiny-arch"):
        bf = by.get((m, "transformers-bf16", "gspo"), {})
        q4 = by.get((m, "unsloth-4bit", "gspo"), {})
        if bf.get("peak_mem_gb") and q4.get("peak_mem_gb"):
            r = q4["peak_mem_gb"] / bf["peak_mem_gb"]
            lines.append(f"- {m}: Unsloth-4bit peak / bf16 peak = {q4['peak_mem_gb']:.2f} / {bf['peak_mem_gb']:.2f} "
                         f"= {r:.3f} (target <= 0.3: {'met' if r <= 0.3 else 'MISSED'})")
        if q4.get("peak_reserved_gb"):
            fits = q4["peak_reserved_gb"] * GB <= 24 * 2**30
            lines.append(f"- {m}: Unsloth-4bit step peak reserved {q4['peak_reserved_gb']:.2f} GB, allocated "
                         f"{q4['peak_mem_gb']:.2f} GB; fits a 24 GB (24 GiB) card: {'yes' if fits else 'NO'}")
    for e in ev:
        lines.append(f"- {e['model']}: batched/sequential eval speed-up {e.get('speedup')}x "
                     f"(target >= 5x: {'met' if (e.get('speedup') or 0) >= 5 else 'MISSED'})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
