"""``gspo_benchmark.py --seed-batch``: the seed's micro-step on the Qwen3-VL 8B stand-in, each path in its own
process, and its table."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_common import RESULTS_JSON, library_versions, make_log
from benchmarks.gspo_configs import ENGINES, ESTIMATE_S, SEED_BATCH_CONFIGS, VERSION_PACKAGES
from benchmarks.gspo_report import cell
from benchmarks.gspo_rows import load_results, merge_result, run_child, run_timed_child, unsloth_skip_reason

log = make_log("bench")


def run_seed_batch(args, start: float) -> int:
    """The seed's micro-step (8 completions = 2 prompts x 4 generations, 1024-token completions, one 512x512 image
    each, the seed's GRPOConfig with accumulation 4: one rollout of 32 completions per optimizer step) on the
    Qwen3-VL 8B stand-in, each path in its own process, one after another on one GPU."""
    out = Path(args.out or RESULTS_JSON)
    work_root = Path(args.work_dir or Path(tempfile.gettempdir()) / "vlmrl_seed_batch")
    work_root.mkdir(parents=True, exist_ok=True)
    vers = library_versions(VERSION_PACKAGES)

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
            e["engine"], status, cell(e.get("s_per_micro_step")), cell(e.get("s_per_micro_step_steady")),
            cell((e.get("step_s_all") or [None])[0], 1),
            cell(e.get("peak_device_gb")), cell(e.get("peak_mem_gb")), cell(e.get("capped_gb"), 0),
            cell(e.get("projected_epoch_h")),
            f"{cell(b.get('rollout_s'), 1)} ({cell(lim.get('rollout_limit_s_per_optimizer_step'), 1)})",
            cell(b.get("forward_s"), 1), cell(b.get("backward_and_rest_s"), 1), cell(b.get("optimizer_s"), 2),
            cell(gap[-1] if gap else None, 4)]) + " |")
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
