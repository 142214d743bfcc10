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

BACKENDS = ("transformers-bf16", "unsloth-4bit", "unsloth-16bit", "unsloth-4bit-vllm", "unsloth-16bit-vllm",
            "transformers-bf16-vllm")
ENGINES = {
    "transformers-bf16": "transformers bf16 + PEFT LoRA, rollouts through model.generate",
    "unsloth-4bit": "Unsloth 4-bit + LoRA, rollouts through model.generate",
    "unsloth-16bit": "Unsloth 16-bit + LoRA, rollouts through model.generate",
    "unsloth-4bit-vllm": "Unsloth 4-bit + LoRA, fast_inference (Unsloth's in-process vLLM, weights shared)",
    "unsloth-16bit-vllm": "Unsloth 16-bit + LoRA, fast_inference (Unsloth's in-process vLLM, weights shared)",
    "transformers-bf16-vllm": "transformers bf16 + PEFT LoRA, TRL's colocated vLLM (a second copy of the weights)",
}
"""What each configuration is; ``-vllm`` ones roll out through vLLM."""

# The seed's epoch: 466 training prompts of the numeric MathVista split, 8 prompts (32 completions) per optimizer
# step = 58 optimizer steps of 4 micro-steps of 8 completions.
SEED_EPOCH_MICRO_STEPS = 58 * 4
# Memory bandwidth and dense bf16 tensor throughput, the limits each phase is held against.
GPU_LIMITS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.0e12, 312e12), "L40S": (0.864e12, 362e12),
              "4090": (1.008e12, 165e12)}
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
    # Seed batch, child walls measured on an H200 (2026-12-03); the 4-bit vLLM path plus its warm-up step.
    ("8b", "unsloth-4bit-vllm"): 420, ("8b", "unsloth-16bit-vllm"): 300, ("8b", "transformers-bf16-vllm"): 180,
    ("8b", "standin"): 90, ("8b", "unsloth-4bit-seed"): 340,
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

    from vlmrl_pipeline.core.model.loading import CHAT_SPECIAL_TOKENS, VISION_SPECIAL_TOKENS, save_checkpoint

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

    from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions

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

    from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions
    from vlmrl_pipeline.core.model.loading import load_model

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


class DeviceMemorySampler:
    """Peak device memory in use (``total - free`` from ``cudaMemGetInfo``, sampled every ``interval`` s in a
    thread): what the card holds for this process, the vLLM engine, CUDA context and workspaces included, which
    ``torch.cuda.max_memory_*`` alone does not see. The benchmark runs one process per GPU, so the device's use is
    the process's."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak, self.baseline = interval, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            self._stop.wait(self.interval)

    def start(self):
        self.baseline = self._used()
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())
        return self.peak


def apply_memory_cap(cap_gb: float | None) -> dict:
    """Hold this process's torch allocations (the in-process vLLM engine's included) under ``cap_gb`` GiB, so a
    configuration that needs more fails here as it would on a card of that size."""
    import torch

    if not cap_gb or not torch.cuda.is_available():
        return {}
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, cap_gb * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return {"capped_gb": cap_gb, "cap_fraction_of_device": round(fraction, 4), "device_total_gb": round(total / GB, 1)}


class PhaseHook:
    """Every TRL ``profiling_context`` block (``vLLM.generate``, ``transformers.generate``, ``sync_weights``,
    ``GRPOTrainer._prepare_inputs``, ``GRPOTrainer.compute_loss``, ``GRPOTrainer._get_per_token_logps_and_entropies``,
    the reward functions) with its end time, so each can be assigned to the optimizer step it ran in."""

    def __init__(self):
        self.events: list[tuple[float, str, float]] = []
        self.active = False

    def install(self):
        import torch
        import trl.extras.profiling as prof

        original, original_exit = prof.ProfilingContext._log_metrics, prof.ProfilingContext.__exit__
        hook = self

        def _log_metrics(ctx, duration):
            if hook.active:
                hook.events.append((time.perf_counter(), ctx.name, float(duration)))
            return original(ctx, duration)

        def __exit__(ctx, *exc):
            # Kernels run asynchronously: wait for them, so a block's time is its GPU work, not its launches.
            if hook.active and torch.cuda.is_available():
                torch.cuda.synchronize()
            return original_exit(ctx, *exc)

        prof.ProfilingContext._log_metrics = _log_metrics
        prof.ProfilingContext.__exit__ = __exit__

    def per_step(self, edges: list[float]) -> list[dict[str, float]]:
        steps: list[dict[str, float]] = [{} for _ in range(len(edges) - 1)]
        for t, name, d in self.events:
            for i in range(len(edges) - 1):
                if edges[i] <= t <= edges[i + 1]:
                    steps[i][name] = steps[i].get(name, 0.0) + d
                    break
        return [{k: round(v, 3) for k, v in sorted(st.items())} for st in steps]


def _optimizer_timer():
    import torch
    from transformers import TrainerCallback

    def synced_now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class OptimizerTimer(TrainerCallback):
        """Seconds in ``optimizer.step`` (and the scheduler/zero_grad transformers does with it), per step; and the
        micro-step boundaries inside each optimizer step (step begin, each accumulation sub-step's end, the moment
        before the optimizer), so a first micro-step's compile can be told from the micro-steps that reuse it."""

        def __init__(self):
            self.durations: list[float] = []
            self.micro_edges: list[list[float]] = []
            self._t0 = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.micro_edges.append([synced_now()])

        def on_substep_end(self, args, state, control, **kwargs):
            if self.micro_edges:
                self.micro_edges[-1].append(synced_now())

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._t0 = synced_now()
            if self.micro_edges:
                self.micro_edges[-1].append(self._t0)

        def on_optimizer_step(self, args, state, control, **kwargs):
            if self._t0 is not None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.durations.append(time.perf_counter() - self._t0)
                self._t0 = None

    return OptimizerTimer()


def gpu_limits(device_name: str) -> tuple[float, float] | None:
    for key, limits in GPU_LIMITS.items():
        if key in device_name:
            return limits
    return None


STEADY_BASIS = {
    "warmup": "the timed steps after the warm-up step(s)",
    "first-step": "the one step less its first micro-step's training compile; an upper bound where the first "
                  "_prepare_inputs compiled too (Unsloth's logprob recompute for vLLM's importance correction)",
}


def steady_micro_step(micro_edges: list[list[float]], events: list[tuple[float, str, float]],
                      step_walls: list[float], warmup: int, grad_accum: int, optimizer_s: list[float]) -> dict:
    """Each optimizer step's micro-step walls, and the steady seconds per micro-step where no warm-up step was run:
    the first micro-step's training (its wall less its ``_prepare_inputs``, which holds the rollout of the whole
    optimizer step) beyond the median of the other micro-steps is the one-off compile, taken out of the step (the
    micro-steps plus the optimizer; the trainer's construction, in the first logged step's wall, is left out).

    >>> r = steady_micro_step([[0.0, 70.0, 80.0, 90.0, 100.0]], [(60.0, "T._prepare_inputs", 50.0)], [130.0], 0, 4,
    ...                       [1.0])
    >>> r["micro_step_s"], r["first_micro_step_excess_s"], r["s_per_micro_step_steady"]
    ([[70.0, 10.0, 10.0, 10.0]], 10.0, 22.75)
    """
    walls = [[round(b - a, 3) for a, b in zip(e, e[1:])] for e in micro_edges]
    out: dict = {"micro_step_s": walls, "first_micro_step_excess_s": None, "s_per_micro_step_steady": None}
    complete = [w for w in walls if len(w) == grad_accum]
    if len(complete) != len(step_walls) or grad_accum < 2:
        return out
    if warmup > 0:
        timed = step_walls[warmup:]
        out["s_per_micro_step_steady"] = round(sum(timed) / len(timed) / grad_accum, 3)
        out["steady_basis"] = STEADY_BASIS["warmup"]
        return out
    first = micro_edges[0]
    prepare = sum(d for t, name, d in events if name.endswith("._prepare_inputs") and first[0] <= t <= first[1])
    rest = sorted(walls[0][1:])
    excess = max(0.0, walls[0][0] - prepare - rest[len(rest) // 2])
    out["first_micro_step_excess_s"] = round(excess, 3)
    out["first_prepare_inputs_s"] = round(prepare, 3)
    out["steady_basis"] = STEADY_BASIS["first-step"]
    step = sum(walls[0]) + (optimizer_s[0] if optimizer_s else 0.0)
    out["s_per_micro_step_steady"] = round((step - excess) / grad_accum, 3)
    return out


def phase_breakdown(phases: dict[str, float], step_s: float, optimizer_s: float | None) -> dict[str, float | None]:
    """One timed optimizer step split into what the issue names: rollout, logprob recompute, forward/backward,
    optimizer, weight sync (TRL's block names; Unsloth's trainer keeps TRL's ``profiling_context`` names)."""
    def pick(*names):
        return sum(v for k, v in phases.items() if any(k.endswith(n) for n in names))

    rollout = pick("vLLM.generate", "transformers.generate", "transformers.generate_batch")
    sync = pick("sync_weights")
    prepare = pick("_prepare_inputs")
    rewards = pick("_calculate_rewards")
    logps_all = pick("_get_per_token_logps_and_entropies")
    forward = pick("compute_loss")
    # _prepare_inputs holds the rollout, the rewards and the old/reference log-prob pass; compute_loss holds one
    # _get_per_token_logps_and_entropies call per micro-step (the training forward).
    recompute = max(0.0, prepare - rollout - sync - rewards) if prepare else None
    backward_other = step_s - prepare - forward - (optimizer_s or 0.0) if prepare else None
    return {"rollout_s": round(rollout, 3), "weight_sync_s": round(sync, 3),
            "logprob_recompute_and_scoring_s": None if recompute is None else round(recompute, 3),
            "rewards_s": round(rewards, 3), "forward_s": round(forward, 3),
            "backward_and_rest_s": None if backward_other is None else round(backward_other, 3),
            "optimizer_s": None if optimizer_s is None else round(optimizer_s, 3),
            "logps_calls_total_s": round(logps_all, 3)}


def child_gspo(spec: dict) -> dict:
    backend = spec["backend"]
    unsloth = backend.startswith("unsloth")
    four_bit = "4bit" in backend
    vllm = backend.endswith("-vllm")
    if unsloth:
        import unsloth  # noqa: F401  -- first, so that it patches transformers and TRL before they are imported
    import torch

    from vlmrl_pipeline.core.model.loading import (
        LoraSettings,
        apply_lora,
        is_prequantized_4bit,
        load_model,
        peft_lora_config,
        vision_token_ids,
        vllm_4bit_checkpoint,
    )
    from vlmrl_pipeline.core.rewards import REWARD_FUNCTIONS, REWARD_WEIGHTS
    from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, build_grpo_config
    from vlmrl_pipeline.core.training.trainer import train_gspo

    on_gpu = torch.cuda.is_available()
    result: dict = {"engine": ENGINES[backend], **apply_memory_cap(spec.get("cap_gb"))}
    sampler = DeviceMemorySampler().start() if on_gpu else None
    if sampler is not None:
        result["device_gb_before_load"] = round(sampler.baseline / GB, 3)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    work = Path(spec["work_dir"])
    ckpt = spec["ckpt"]
    if unsloth and four_bit and spec.get("prequantize") and not is_prequantized_4bit(ckpt):
        # The seed loads Unsloth's pre-quantized upload; the same packaging, made from the bf16 stand-in once.
        t0 = time.perf_counter()
        ckpt = str(vllm_4bit_checkpoint(ckpt, spec["vllm_4bit_cache"], log=log))
        result["prequantize_s"] = round(time.perf_counter() - t0, 1)
        torch.cuda.reset_peak_memory_stats()
    result["checkpoint"] = ckpt
    total = torch.cuda.get_device_properties(0).total_memory if on_gpu else 0
    engine_share = min(0.95, spec["engine_gb"] * 2**30 / total) if (vllm and on_gpu and spec.get("engine_gb")) else 0.3
    t0 = time.perf_counter()
    model, processor, used = load_model(
        ckpt, backend="unsloth" if unsloth else "transformers",
        dtype="bfloat16" if on_gpu else "float32", load_in_4bit=four_bit,
        max_seq_length=spec["max_seq_length"], fast_inference=unsloth and vllm,
        gpu_memory_utilization=engine_share, vllm_standby=bool(spec.get("standby", True)),
        vllm_4bit_cache=spec.get("vllm_4bit_cache"), log=log,
    )
    result["load_s"] = round(time.perf_counter() - t0, 1)
    result["backend_used"] = used
    result["vllm_gpu_memory_utilization"] = round(engine_share, 4) if vllm else None
    result["mem_after_load"] = mem_snapshot()
    if sampler is not None:
        result["device_gb_after_load"] = round(sampler._used() / GB, 3)
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
    grad_accum = int(spec.get("grad_accum", 1))
    settings = GSPOSettings(
        per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=grad_accum,
        num_generations=spec["num_generations"], max_completion_length=spec["max_completion_length"],
        max_steps=spec["warmup"] + spec["steps"], importance_sampling_level="sequence",
        logging_steps=1, save_steps=0, use_vllm=vllm,
        vllm_gpu_memory_utilization=engine_share if vllm and not unsloth else 0.3,
    )
    dataset = train_dataset(spec["train_rows"], spec["image_size"], work / "train_images")
    first = dataset[0]
    prompt_text = processor.apply_chat_template(first["prompt"], tokenize=False, add_generation_prompt=True)
    result["prompt_tokens"] = int(len(processor(text=[prompt_text], images=[first["image"]],
                                                return_tensors="pt")["input_ids"][0]))
    peft_config = None
    t_lora = time.perf_counter()
    if used == "unsloth":
        model = apply_lora(model, lora, used, seed=settings.seed)
    else:
        peft_config = peft_lora_config(lora)
    result["lora_s"] = round(time.perf_counter() - t_lora, 1)
    grpo_args = build_grpo_config(settings, work / "probe", processor, REWARD_WEIGHTS,
                                  max_seq_length=spec["max_seq_length"])
    result["effective"] = {k: getattr(grpo_args, k, None) for k in
                           ("optim", "bf16", "gradient_checkpointing", "loss_type", "importance_sampling_level",
                            "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                            "max_completion_length", "steps_per_generation", "generation_batch_size", "use_vllm",
                            "vllm_importance_sampling_correction")}
    result["effective"]["generation_kwargs"] = grpo_args.generation_kwargs

    hook = GenerateHook()
    hook.install_profiling()
    phases = PhaseHook()
    phases.install()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not vllm:
        hook.wrap(base)
    optimizer_timer = _optimizer_timer()
    stamps: list[tuple[float, str]] = []

    def on_log(msg: str) -> None:
        if msg.startswith("GSPO step"):
            if on_gpu:
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), msg))
        log(f"{backend}: {msg}")

    hook.active = phases.active = True
    t_train = time.perf_counter()
    trained, tres = train_gspo(
        model, processor, dataset, settings, work / "trainer", REWARD_FUNCTIONS, REWARD_WEIGHTS,
        peft_config=peft_config, log=on_log, callbacks=[optimizer_timer], max_seq_length=spec["max_seq_length"],
    )
    t_end = time.perf_counter()
    hook.active = phases.active = False
    result["mem_train"] = mem_snapshot()
    if sampler is not None:
        result["peak_device_gb"] = round(sampler.stop() / GB, 3)
        cap = spec.get("cap_gb")
        result["fits_cap"] = None if not cap else result["peak_device_gb"] <= cap * 2**30 / GB
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
    result["s_per_micro_step"] = round(result["step_s"] / grad_accum, 3)
    result["completions_per_micro_step"] = spec["batch"]
    result["projected_epoch_h"] = round(result["s_per_micro_step"] * SEED_EPOCH_MICRO_STEPS / 3600, 2)
    per_step = phases.per_step(edges)
    result["phases_per_step"] = per_step
    # Each profiled block on its own (seconds from the start of training): a first micro-step that compiles shows
    # here beside the three that do not.
    result["phase_events"] = [[round(t - t_train, 3), name, round(d, 3)] for t, name, d in phases.events]
    opt = optimizer_timer.durations
    result.update(steady_micro_step(optimizer_timer.micro_edges, phases.events, step_walls, w, grad_accum, opt))
    if result.get("s_per_micro_step_steady") is not None:
        # The compile is paid once a run, not once a step: the epoch is that once plus 232 steady micro-steps.
        result["projected_epoch_h"] = round((result["first_micro_step_excess_s"] if w == 0 else 0.0)
                                            / 3600 + result["s_per_micro_step_steady"] * SEED_EPOCH_MICRO_STEPS
                                            / 3600, 2)
    timed_opt = opt[w:] if len(opt) == settings.max_steps else None
    breakdowns = [phase_breakdown(per_step[i], step_walls[i], timed_opt[i - w] if timed_opt else None)
                  for i in range(w, len(step_walls))]
    result["breakdown"] = {k: round(sum(b[k] for b in breakdowns) / len(breakdowns), 3)
                           if all(b[k] is not None for b in breakdowns) else None for k in breakdowns[0]}
    hist = [h for h in tres.log_history if "loss" in h or "reward" in h]
    result["trl_step_time"] = [round(float(h["step_time"]), 3) for h in hist if "step_time" in h]
    lengths = [float(h["completions/mean_length"]) for h in hist if "completions/mean_length" in h]
    result["completion_mean_length"] = lengths
    result["rewards"] = [round(float(h["reward"]), 4) for h in hist if "reward" in h]
    result["losses"] = [float(h["loss"]) for h in hist if "loss" in h]
    gaps = [float(h["sampling/sampling_logp_difference/mean"]) for h in hist
            if "sampling/sampling_logp_difference/mean" in h]
    result["logp_gap_mean"] = gaps
    completions_per_step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    if len(hook.profiled) == settings.max_steps:
        gen_s, source = hook.profiled, "trl profiling_context transformers.generate"
    elif len(hook.calls) == settings.max_steps:
        gen_s, source = [c["s"] for c in hook.calls], "base_model.generate wrapper"
    elif vllm:
        gen_s = [sum(v for k, v in st.items() if k.endswith("vLLM.generate")) for st in per_step]
        source = "trl profiling_context vLLM.generate"
    else:
        gen_s, source = None, f"no per-step generate timing (profiled={len(hook.profiled)}, calls={len(hook.calls)})"
    result["gen_timing_source"] = source
    result["generate_calls"] = hook.calls
    if gen_s is not None and len(lengths) == settings.max_steps and sum(gen_s[w:]) > 0:
        tokens = [completions_per_step * n for n in lengths]
        result["gen_s_per_step"] = [round(x, 3) for x in gen_s]
        result["gen_tokens_per_step"] = tokens
        result["gen_tokens_per_s"] = round(sum(tokens[w:]) / sum(gen_s[w:]), 1)
        result["gen_share_of_step"] = round(sum(gen_s[w:]) / sum(timed), 3)
    else:
        result["gen_tokens_per_s"] = None
    limits = gpu_limits(device_info()[1])
    if limits is not None and lengths:
        bandwidth, flops = limits
        parts = result["param_gb_after_load"]
        # A decode step reads every language-layer weight and lm_head once (the embedding: one row per token).
        decode_bytes = (parts["language_layers"] + parts["lm_head"]) * GB
        decode_steps = max(lengths[w:]) if lengths[w:] else max(lengths)
        rollout_limit = decode_steps * decode_bytes / bandwidth
        prompt_tokens = result["prompt_tokens"]
        tokens_per_micro = spec["batch"] * (prompt_tokens + sum(lengths[w:]) / max(1, len(lengths[w:])))
        n_params = result["total_params"] - result["trainable_params"]
        train_limit = 6 * n_params * tokens_per_micro / flops
        result["limits"] = {"bandwidth_Bps": bandwidth, "bf16_flops": flops,
                            "decode_bytes_per_step_gb": round(decode_bytes / GB, 3),
                            "rollout_limit_s_per_optimizer_step": round(rollout_limit, 3),
                            "train_flop_per_micro_step": 6 * n_params * tokens_per_micro,
                            "train_limit_s_per_micro_step": round(train_limit, 3)}
        if result["breakdown"].get("rollout_s"):
            result["limits"]["rollout_of_limit"] = round(rollout_limit / result["breakdown"]["rollout_s"], 4)
    result["settings"] = dataclasses.asdict(settings)
    result["lora"] = dataclasses.asdict(lora)
    log(f"{backend}: step_s={result['step_s']} s/micro={result['s_per_micro_step']} warmup_s={result['warmup_s']} "
        f"gen_tok/s={result['gen_tokens_per_s']} peak torch={result['mem_train'].get('peak_allocated_gb')}GB "
        f"device={result.get('peak_device_gb')}GB breakdown={result['breakdown']}")
    return result


def child_standin(spec: dict) -> dict:
    """The Qwen3-VL stand-in (``core.standin``: the published config, Qwen's real vocabulary and processor, random
    weights) in bf16: real prompt lengths, unlike the trained small tokenizer of ``child_build``."""
    from vlmrl_pipeline.core.standin import build_standin

    t0 = time.perf_counter()
    build_standin(spec["standin"], spec["ckpt"], packaging="bf16", device="cuda")
    return {"build_s": round(time.perf_counter() - t0, 1), "standin": spec["standin"]}


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out_path = Path(spec["result_path"])
    try:
        if spec["job"] == "build":
            res = child_build(spec)
        elif spec["job"] == "standin":
            res = child_standin(spec)
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


def run_timed_child(spec: dict, timeout: float, label: str) -> dict:
    """:func:`run_child` with its wall time recorded and a failure logged under ``label``."""
    t0 = time.perf_counter()
    res = run_child(spec, timeout)
    res["child_wall_s"] = round(time.perf_counter() - t0, 1)
    if res.get("status") != "ok":
        log(f"{label} failed: {res.get('error')}")
    return res


def unsloth_skip_reason() -> str | None:
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (Unsloth needs one)"
    return None


SEED_BATCH_CONFIGS = {
    # backend: (vLLM engine GiB, capped, warm-up steps or None for --warmup). The engine's share holds the shared
    # 4-bit weights (7.3 GB) and the KV cache of one rollout (32 sequences x ~1300 tokens x 144 KiB = 6 GB); 16-bit
    # needs 17.5 GB of weights before any.
    # A warm-up step: the first step's _prepare_inputs (33 s of vLLM rollout, 56 s of logprob recompute) compiles
    # the recompute, which the first-step estimate cannot take out; a second step costs ~40 s.
    "unsloth-4bit-vllm": (15.0, True, None),
    # The reference, as measured before: TRL's colocated engine at 0.3 of the GPU, no cap (it needs ~70 GB).
    "transformers-bf16-vllm": (None, False, None),
    # 16-bit weights (17.5 GB) in a 21 GiB engine: measured to leave vLLM no KV cache under the 24 GiB cap.
    "unsloth-16bit-vllm": (21.0, True, None),
    # generate: one optimizer step (~5 min) and no warm-up step: its _prepare_inputs is the rollout alone (no
    # recompute on this on-policy path), so the first-step estimate takes the whole compile out.
    "unsloth-4bit": (None, True, 0),
}
"""The seed-batch paths, in the order they run (the most informative first, should the deadline cut the run)."""


def run_seed_batch(args, start: float) -> int:
    """The seed's micro-step (8 completions = 2 prompts x 4 generations, 1024-token completions, one 512x512 image
    each, the seed's GRPOConfig with accumulation 4: one rollout of 32 completions per optimizer step) on the
    Qwen3-VL 8B stand-in, each path in its own process, one after another on one GPU."""
    out = Path(args.out or REPO_ROOT / "benchmarks" / "results.json")
    work_root = Path(args.work_dir or Path(tempfile.gettempdir()) / "vlmrl_seed_batch")
    work_root.mkdir(parents=True, exist_ok=True)
    vers = versions()

    def remaining() -> float:
        return 1e9 if args.deadline_s is None else args.deadline_s - (time.perf_counter() - start)

    ckpt = work_root / "qwen3vl-8b-standin-bf16"
    if not (ckpt / "config.json").exists():
        log(f"building the qwen3vl-8b stand-in (bf16) -> {ckpt}")
        res = run_child({"job": "standin", "standin": "qwen3vl-8b", "ckpt": str(ckpt)}, remaining() - 5)
        log(f"stand-in: {res}")
        if res.get("status") != "ok":
            return 1
    status = 0
    for backend in [c.strip() for c in args.seed_configs.split(",") if c.strip()]:
        if backend not in SEED_BATCH_CONFIGS:
            raise SystemExit(f"unknown seed-batch configuration {backend!r}: {sorted(SEED_BATCH_CONFIGS)}")
        engine_gb, capped, warmup = SEED_BATCH_CONFIGS[backend]
        warmup = args.warmup if warmup is None else warmup
        cap = args.cap_gb if capped else None
        entry = {"model": "qwen3vl-8b", "backend": backend, "kind": "seed-batch", "engine": ENGINES[backend],
                 "capped_gb": cap, "max_completion_length": args.max_completion_length, "versions": vers,
                 "command": " ".join([Path(sys.executable).name] + sys.argv)}
        if backend.startswith("unsloth") and unsloth_skip_reason():
            merge_result(out, dict(entry, status="skipped", error=unsloth_skip_reason()))
            continue
        need = ESTIMATE_S.get(("8b", backend + ("-seed" if backend == "unsloth-4bit" else "")), 240)
        if remaining() < need:
            log(f"skip {backend}: {remaining():.0f}s left, needs ~{need}s (rerun with --seed-configs {backend})")
            continue
        spec = {"job": "gspo", "arch": "8b", "ckpt": str(ckpt), "backend": backend, "steps": args.steps,
                "warmup": warmup, "batch": args.batch, "grad_accum": args.grad_accum,
                "num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
                "max_seq_length": args.max_seq_length, "image_size": args.image_size,
                "train_rows": 4 * args.batch * args.grad_accum // args.num_generations, "eval": False,
                "cap_gb": cap, "engine_gb": engine_gb, "prequantize": True,
                "vllm_4bit_cache": str(work_root / "vllm-4bit"), "work_dir": str(work_root / backend)}
        log(f"run {backend} (cap {cap} GiB, engine {engine_gb} GiB; {remaining():.0f}s left)")
        res = run_timed_child(spec, remaining() - 5, backend)
        if res.get("status") != "ok":
            status = 1
        elif cap and res.get("fits_cap") is False:
            res["status"] = "exceeds-cap"
            res["error"] = f"peak device memory {res.get('peak_device_gb')} GB over the {cap} GiB cap"
        merge_result(out, {**entry, **res, "peak_mem_gb": res.get("mem_train", {}).get("peak_allocated_gb"),
                           "peak_reserved_gb": res.get("mem_train", {}).get("peak_reserved_gb")})
    log(f"done in {time.perf_counter() - start:.0f}s; results in {out}")
    print(seed_batch_report(load_results(out)))
    return status


def seed_batch_report(entries: list[dict]) -> str:
    rows = [e for e in entries if e.get("kind") == "seed-batch"]
    if not rows:
        return ""
    lines = ["| path | status | s / micro-step (8 x 1024) | steady s / micro-step | first step s | peak device GB | "
             "torch peak GB | cap GiB | seed epoch h | rollout s (limit) | fwd s | bwd+rest s | optimizer s | "
             "logp gap |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = next((e for e in rows if e["backend"] == "transformers-bf16-vllm" and e.get("status") == "ok"), None)
    for e in rows:
        b = e.get("breakdown") or {}
        lim = e.get("limits") or {}
        gap = e.get("logp_gap_mean") or []
        status = e.get("status") if e.get("status") == "ok" else f"{e.get('status')}: {str(e.get('error'))[:60]}"
        lines.append("| " + " | ".join([
            e["engine"], status, _fmt(e.get("s_per_micro_step")), _fmt(e.get("s_per_micro_step_steady")),
            _fmt((e.get("step_s_all") or [None])[0], 1),
            _fmt(e.get("peak_device_gb")), _fmt(e.get("peak_mem_gb")), _fmt(e.get("capped_gb"), 0),
            _fmt(e.get("projected_epoch_h")),
            f"{_fmt(b.get('rollout_s'), 1)} ({_fmt(lim.get('rollout_limit_s_per_optimizer_step'), 1)})",
            _fmt(b.get("forward_s"), 1), _fmt(b.get("backward_and_rest_s"), 1), _fmt(b.get("optimizer_s"), 2),
            _fmt(gap[-1] if gap else None, 4)]) + " |")
    if ref:
        for e in rows:
            if e.get("status") == "ok" and e is not ref:
                steady = e.get("s_per_micro_step_steady") or e["s_per_micro_step"]
                ref_steady = ref.get("s_per_micro_step_steady") or ref["s_per_micro_step"]
                lines.append(f"- {e['backend']}: {e['s_per_micro_step'] / ref['s_per_micro_step']:.2f}x the bf16 + "
                             f"colocated vLLM micro-step ({ref['s_per_micro_step']:.2f} s) as measured, "
                             f"{steady / ref_steady:.2f}x steady ({steady:.2f} / {ref_steady:.2f} s; "
                             f"{e.get('steady_basis') or 'as measured'})")
    return "\n".join(lines)


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
    p.add_argument("--seed-batch", action="store_true",
                   help="the seed's micro-step on the 8B stand-in, side by side: "
                        + ", ".join(SEED_BATCH_CONFIGS) + " (kind 'seed-batch' in --out)")
    p.add_argument("--seed-configs", default=",".join(SEED_BATCH_CONFIGS),
                   help="with --seed-batch: which configurations, in this order")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient_accumulation_steps (the seed: 4)")
    p.add_argument("--cap-gb", type=float, default=24.0,
                   help="with --seed-batch: the device-memory cap (GiB) of the capped configurations")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.report:
        print(report(load_results(Path(args.report))))
        print(seed_batch_report(load_results(Path(args.report))))
        return 0
    if args.merge:
        target = Path(args.out or REPO_ROOT / "benchmarks" / "results.json")
        for f in args.merge:
            for e in load_results(Path(f)):
                merge_result(target, e)
        print(report(load_results(target)))
        return 0
    start = time.perf_counter()
    if args.seed_batch:
        return run_seed_batch(args, start)
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
                    "batch": args.batch, "grad_accum": args.grad_accum, "num_generations": args.num_generations,
                    "max_completion_length": args.max_completion_length, "max_seq_length": args.max_seq_length,
                    "train_rows": 16, "eval": want_eval, "eval_prompts": args.eval_prompts,
                    "eval_batch": args.eval_batch, "max_new_tokens": args.max_new_tokens,
                    "eval_passes": args.eval_passes, "work_dir": str(work_root / f"{arch['name']}-{b}")}
            log(f"run {arch['name']} {b} ({remaining():.0f}s left)")
            res = run_timed_child(spec, remaining() - 5, f"{arch['name']} {b}")
            if res.get("status") != "ok":
                status = 1
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
