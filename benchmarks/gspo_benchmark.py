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
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_common import RESULTS_JSON, library_versions, make_log  # noqa: E402
from benchmarks.gspo_configs import ARCHS, BACKENDS, ESTIMATE_S, SEED_BATCH_CONFIGS, VERSION_PACKAGES  # noqa: E402
from benchmarks.gspo_report import report  # noqa: E402
from benchmarks.gspo_rows import load_results, merge_result, run_child, run_timed_child, unsloth_skip_reason  # noqa: E402
from benchmarks.gspo_seed_batch import run_seed_batch, seed_batch_report  # noqa: E402
from benchmarks.gspo_training import child_main  # noqa: E402

log = make_log("bench")


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
        target = Path(args.out or RESULTS_JSON)
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
        else RESULTS_JSON)
    default_work = Path(tempfile.gettempdir()) / ("vlmrl_bench_smoke" if args.smoke else "vlmrl_bench")
    work_root = Path(args.work_dir or default_work)
    work_root.mkdir(parents=True, exist_ok=True)
    skip_unsloth = unsloth_skip_reason()
    vers = library_versions(VERSION_PACKAGES)
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


if __name__ == "__main__":
    sys.exit(main())
