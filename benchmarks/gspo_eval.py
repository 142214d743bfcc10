"""gspo_benchmark.py's evaluation measurements: batched versus sequential ``generate_completions`` and the
greedy decode profile (prefill versus decode)."""

from __future__ import annotations

import time

from benchmarks.bench_common import make_log
from benchmarks.gspo_workload import eval_inputs

log = make_log("bench")


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
