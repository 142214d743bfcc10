"""Data-parallel scaling of GSPO training: the ``lora_adapter`` asset on 1 GPU, then on 2, same workload, one run.

    python benchmarks/multi_gpu_benchmark.py --out-dir $OUT/multi_gpu          # a machine with >= 2 GPUs
    python benchmarks/multi_gpu_benchmark.py --out-dir $OUT/multi_gpu --fsdp   # + 2 processes with FSDP2
    python benchmarks/multi_gpu_benchmark.py --smoke --out-dir /tmp/mgpu       # CPU, tiny model, 1 process

The script writes a random-weight bf16 checkpoint of Qwen3-VL-2B-Instruct's architecture (``gspo_benchmark.py``'s
builder: the published config values, the project's offline tokenizer), materializes the data, the manifest and
``base_model`` (a reference to that folder) once, then materializes ``lora_adapter`` through Dagster for each
launch: ``num_processes=1``, then ``2`` (``distributed="ddp"``), and with ``--fsdp`` once more with
``distributed="fsdp"``. The asset itself starts training the way every run does: ``accelerate launch -m
vlmrl_pipeline.training_process`` through Dagster Pipes. Transformers backend, bf16 weights, PEFT LoRA r=16 on the
language model, GSPO with the project's rewards.

Every process trains ``--batch`` completions per optimizer step (``per_device_train_batch_size``; weak scaling), so
a 2-process step covers twice as many completions. Throughput uses TRL's own per-step timer (``step_time``: the
rollout, the reward and the forward/backward of a step, on rank 0, which waits for the other rank in the gradient
all-reduce) over the steps after ``--warmup``:

* completions/s = completions per step (``--batch`` x processes) / mean ``step_time``;
* completion tokens/s = completions per step x ``completions/mean_length`` / ``step_time``, averaged over steps.

``results.json`` in ``--out-dir`` holds both runs and the 2-process / 1-process ratios; ``run-<label>/`` holds each
run's own result files (``training_log.json``, ``training_curves.png``, ``adapter_config.json`` and the asset's
materialization metadata), the same format as any ``lora_adapter`` materialization.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def log(msg: str) -> None:
    print(f"[multi-gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_child(spec_path: str) -> int:
    """``--build``: write the checkpoint (gspo_benchmark's builder) in this process and its result file."""
    from benchmarks.gspo_workload import child_build

    spec = json.loads(Path(spec_path).read_text())
    result = child_build(spec)
    Path(spec["result_path"]).write_text(json.dumps(result))
    return 0


def build_checkpoint(arch: str, image_size: int, tokenizer_vocab: int, ckpt: Path, timeout: float) -> dict:
    """The random-weight checkpoint, built in a child process (its GPU memory is freed before training)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec = {"arch": arch, "image_size": image_size, "tokenizer_vocab": tokenizer_vocab, "ckpt": str(ckpt),
                "result_path": str(Path(tmp) / "result.json")}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        subprocess.run([sys.executable, __file__, "--build", str(Path(tmp) / "spec.json")], check=True,
                       timeout=timeout)
        return json.loads(Path(spec["result_path"]).read_text())


def profile_for(args, ckpt: Path, on_gpu: bool):
    from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
    from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
    from vlmrl_pipeline.core.model.loading import LoraSettings
    from vlmrl_pipeline.core.profiles import SYNTHETIC_SOURCE, DataSettings, ModelSettings, Profile
    from vlmrl_pipeline.core.training.gspo_config import GSPOSettings

    return Profile(
        name="multi-gpu-benchmark",
        data=DataSettings(source=SYNTHETIC_SOURCE, synthetic_rows=args.rows, image_size=args.image_size,
                          eval_size=8, seed=0),
        model=ModelSettings(model_name=str(ckpt), backend="transformers", load_in_4bit=False,
                            max_seq_length=args.max_seq_length, dtype="bfloat16" if on_gpu else "float32",
                            lora=LoraSettings(r=16, lora_alpha=16)),
        warm_start=WarmStartSettings(),
        gspo=GSPOSettings(learning_rate=1e-5, optim="adamw_torch", per_device_train_batch_size=args.batch,
                          gradient_accumulation_steps=1, num_generations=args.num_generations,
                          max_completion_length=args.max_completion_length, max_steps=args.warmup + args.steps,
                          max_grad_norm=1.0, logging_steps=1, save_steps=args.save_steps),
        generation=GenerationSettings(),
    )


def throughput(log_history: list[dict], completions_per_step: int, warmup: int) -> dict:
    steps = [h for h in log_history if "step_time" in h and "step" in h]
    timed = [h for h in steps if int(h["step"]) > warmup]
    if not timed:
        return {"timed_steps": 0}
    step_times = [float(h["step_time"]) for h in timed]
    tokens = [completions_per_step * float(h["completions/mean_length"]) for h in timed]
    final = next((h for h in reversed(log_history) if "train_samples_per_second" in h), {})
    return {
        "timed_steps": len(timed),
        "step_time_s": [round(t, 3) for t in step_times],
        "step_time_s_mean": round(statistics.mean(step_times), 3),
        "warmup_step_time_s": [round(float(h["step_time"]), 3) for h in steps if int(h["step"]) <= warmup],
        "completions_per_step": completions_per_step,
        "completion_tokens_per_step_mean": round(statistics.mean(tokens), 1),
        "completions_per_s": round(completions_per_step / statistics.mean(step_times), 3),
        "completion_tokens_per_s": round(sum(tokens) / sum(step_times), 1),
        # the Trainer's own end-of-run figure: all steps, warm-up and checkpoint saves included
        "trainer_train_samples_per_second": final.get("train_samples_per_second"),
        "trainer_train_runtime_s": final.get("train_runtime"),
    }


def train_once(profile, data_dir: Path, processes: int, distributed: str, out_dir: Path, warmup: int) -> dict:
    from dagster import DagsterInstance, materialize

    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile

    label = f"{processes}proc-{distributed}" if processes > 1 else "1proc"
    gspo = dataclasses.replace(profile.gspo, num_processes=processes, distributed=distributed)
    run_profile = dataclasses.replace(profile, gspo=gspo)
    [asset] = [a for a in all_assets if a.key.to_user_string() == "lora_adapter"]
    log(f"{label}: materializing lora_adapter ({gspo.max_steps} steps, {gspo.per_device_train_batch_size} "
        f"completions per process per step)")
    start = time.perf_counter()
    result = materialize([asset], resources=resources_for_profile(run_profile, str(data_dir)),
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    wall = time.perf_counter() - start
    entry: dict = {"label": label, "num_processes": processes, "distributed": distributed if processes > 1 else "none",
                   "materialize_wall_s": round(wall, 1), "status": "ok" if result.success else "failed"}
    if not result.success:
        errors = []
        for event in result.get_step_failure_events():
            error = event.step_failure_data.error
            while error is not None:
                errors.append(error.message.strip()[:2000])
                error = error.cause
        entry["error"] = errors
        log(f"{label}: FAILED after {wall:.0f}s: {errors}")
        return entry
    [event] = result.asset_materializations_for_node("lora_adapter")
    metadata = {k: v.value for k, v in event.metadata.items() if k != "training_curves"}
    run_dir = out_dir / f"run-{label}"
    run_dir.mkdir(parents=True, exist_ok=True)
    adapter = data_dir / "lora_adapter"
    for name in ("training_log.json", "training_curves.png", "adapter_config.json"):
        shutil.copy2(adapter / name, run_dir / name)
    (run_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    training_log = json.loads((adapter / "training_log.json").read_text())
    entry.update(throughput(training_log["log_history"], gspo.per_device_train_batch_size * processes, warmup))
    entry.update(global_step=metadata["global_step"], train_runtime_s=metadata["train_runtime_s"],
                 steps_run=metadata["steps_run"], files=sorted(p.name for p in run_dir.iterdir()))
    log(f"{label}: {entry.get('completions_per_s')} completions/s, {entry.get('completion_tokens_per_s')} "
        f"completion tokens/s (mean step_time {entry.get('step_time_s_mean')}s), materialized in {wall:.0f}s")
    return entry


def resume_check(profile, data_dir: Path, out_dir: Path, processes: int) -> dict:
    """Kill the rank-0 training process (SIGKILL) of a ``processes``-process run once it has passed a checkpoint,
    then materialize again: the new launch must resume from that checkpoint with its optimizer and scheduler."""
    import os
    import signal
    import threading

    from dagster import DagsterInstance, materialize

    from vlmrl_pipeline.core.training.checkpoints import PROGRESS_FILE, latest_checkpoint
    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile

    gspo = dataclasses.replace(profile.gspo, num_processes=processes, distributed="ddp", max_steps=6, save_steps=2)
    run_profile = dataclasses.replace(profile, gspo=gspo)
    [asset] = [a for a in all_assets if a.key.to_user_string() == "lora_adapter"]
    root = data_dir / "lora_adapter_checkpoints"
    killed: dict = {}

    def killer():
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not killed:
            for progress_file in root.glob(f"*/{PROGRESS_FILE}"):
                try:
                    progress = json.loads(progress_file.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                found = latest_checkpoint(progress_file.parent)
                if found and progress["global_step"] > found[1] >= 2:
                    os.kill(progress["pid"], signal.SIGKILL)
                    killed.update(at_step=progress["global_step"], checkpoint_step=found[1])
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    log(f"resume check: {processes} processes, killing rank 0 after a checkpoint")
    first = materialize([asset], resources=resources_for_profile(run_profile, str(data_dir)),
                        instance=DagsterInstance.ephemeral(), raise_on_error=False)
    thread.join()
    entry: dict = {"label": f"resume-{processes}proc-ddp", "num_processes": processes, "killed": killed,
                   "first_run_failed": not first.success}
    second = materialize([asset], resources=resources_for_profile(run_profile, str(data_dir)),
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    if not second.success or not killed:
        entry["status"] = "failed"
        return entry
    [event] = second.asset_materializations_for_node("lora_adapter")
    metadata = {k: v.value for k, v in event.metadata.items() if k != "training_curves"}
    training_log = json.loads((data_dir / "lora_adapter" / "training_log.json").read_text())
    run_dir = out_dir / f"run-{entry['label']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(data_dir / "lora_adapter" / "training_log.json", run_dir / "training_log.json")
    (run_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    steps = [h["step"] for h in training_log["log_history"] if "loss" in h]
    entry.update(resumed_from_step=metadata["resumed_from_step"], steps_run=metadata["steps_run"],
                 global_step=metadata["global_step"], **{k: training_log["resume"][k] for k in
                                                          ("optimizer_state_step", "scheduler_last_epoch")},
                 logged_steps=steps)
    ok = (entry["resumed_from_step"] == killed["checkpoint_step"] and entry["global_step"] == gspo.max_steps
          and entry["steps_run"] == gspo.max_steps - killed["checkpoint_step"]
          and entry["optimizer_state_step"] == gspo.max_steps and steps == list(range(1, gspo.max_steps + 1)))
    entry["status"] = "ok" if ok else "failed"
    log(f"resume check: {entry}")
    return entry


def report(paths: list[str]) -> str:
    """A markdown table of results files: throughput from the mean, the median and the last three timed steps
    (per-step times are noisy while a fresh machine warms up; the later steps show the steady state)."""
    rows, by_key = [], {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        for run in results["runs"]:
            if run.get("status") != "ok":
                rows.append(f"| {Path(path).parent.name} | {run['label']} | {run['status']} | | | | | | |")
                continue
            times, per_step = run["step_time_s"], run["completions_per_step"]
            stats = {"mean": statistics.mean(times), "median": statistics.median(times),
                     "last 3": statistics.mean(times[-3:])}
            by_key[(path, run["label"])] = {k: per_step / v for k, v in stats.items()}
            rows.append(f"| {Path(path).parent.name} | {run['label']} | ok | {per_step} | "
                        f"{' / '.join(f'{t:.2f}' for t in times)} | "
                        + " | ".join(f"{stats[k]:.2f} s: {per_step / stats[k]:.2f}/s" for k in stats)
                        + f" | {run['completion_tokens_per_s']} |")
    lines = ["| results | run | status | completions/step | step_time s (timed steps) | mean | median | last 3 | "
             "completion tokens/s (mean) |", "|---|---|---|---|---|---|---|---|---|", *rows]
    for (path, label), value in by_key.items():
        one = by_key.get((path, "1proc"))
        if one and label != "1proc":
            lines.append(f"\n{Path(path).parent.name} {label} / 1proc completions/s: "
                         + ", ".join(f"{k} x{value[k] / one[k]:.2f}" for k in value))
    return "\n".join(lines)


def versions() -> dict:
    import importlib.metadata

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "dagster", "dagster-pipes"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", help="results.json and run-<label>/ folders go here (required)")
    p.add_argument("--build", help=argparse.SUPPRESS)
    p.add_argument("--report", nargs="+", metavar="RESULTS", help="print the table of results files and exit")
    p.add_argument("--work-dir", default="/tmp/vlmrl_multi_gpu", help="checkpoint and artifact store (scratch)")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, one process: checks the path")
    p.add_argument("--fsdp", action="store_true", help="also train with 2 processes and distributed='fsdp'")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--batch", type=int, default=8, help="completions per process per step")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--rows", type=int, default=72, help="synthetic rows (8 held out)")
    p.add_argument("--max-seq-length", type=int, default=4096)
    p.add_argument("--save-steps", type=int, default=4, help="checkpoint cadence (exercises DDP checkpoints)")
    p.add_argument("--resume-check", action="store_true",
                   help="also kill a 2-process run after a checkpoint and check that materializing again resumes it")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip the FSDP run and the resume check when time is short")
    args = p.parse_args(argv)
    if args.build:
        return build_child(args.build)
    if args.report:
        print(report(args.report))
        return 0
    if not args.out_dir:
        p.error("--out-dir is required")
    start = time.perf_counter()

    import torch
    from dagster import DagsterInstance, materialize

    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.resources import resources_for_profile

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.smoke:
        arch, tokenizer_vocab = "tiny", 1024
        args.image_size, args.rows, args.max_completion_length = 64, 24, 8
        args.batch, args.num_generations, args.steps, args.warmup, args.save_steps = 4, 2, 2, 1, 2
        launches = [(1, "ddp")]
    else:
        arch, tokenizer_vocab = "2b", 2048
        if gpus < 2:
            raise SystemExit(f"needs 2 GPUs, found {gpus} (use --smoke on a CPU)")
        launches = [(1, "ddp"), (2, "ddp")] + ([(2, "fsdp")] if args.fsdp else [])
    out_dir, work = Path(args.out_dir), Path(args.work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    ckpt, data_dir = work / "checkpoint", work / "data"

    log(f"building the {arch} checkpoint in {ckpt}")
    t0 = time.perf_counter()
    built = build_checkpoint(arch, args.image_size, tokenizer_vocab, ckpt, timeout=600)
    log(f"built: {built['n_params'] / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f}s")
    profile = profile_for(args, ckpt, on_gpu=gpus > 0)
    upstream = [a for a in all_assets if a.key.to_user_string() in ("mathvista_filtered", "resized_images",
                                                                      "base_model")]
    result = materialize(upstream, resources=resources_for_profile(profile, str(data_dir)),
                         instance=DagsterInstance.ephemeral())
    assert result.success

    def time_left(needed: float) -> bool:
        return not args.deadline_s or time.perf_counter() - start < args.deadline_s - needed

    runs = []
    for processes, distributed in launches:
        if distributed == "fsdp" and not time_left(150):
            runs.append({"label": f"{processes}proc-fsdp", "status": "skipped", "error": "deadline"})
            continue
        runs.append(train_once(profile, data_dir, processes, distributed, out_dir, args.warmup))
    checks = []
    if args.resume_check:
        processes = 1 if args.smoke else 2
        if time_left(170):
            checks.append(resume_check(profile, data_dir, out_dir, processes))
        else:
            checks.append({"label": f"resume-{processes}proc-ddp", "status": "skipped", "error": "deadline"})

    results = {
        "what": "lora_adapter (GSPO, transformers bf16 + PEFT LoRA r=16) materialized through Dagster; the asset "
                "launches accelerate with num_processes 1, then 2",
        "model": {"arch": arch, "n_params": built["n_params"], "tokenizer_len": built["tokenizer_len"]},
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
        "gpus_visible": gpus,
        "versions": versions(),
        "settings": {**dataclasses.asdict(profile.gspo), "image_size": args.image_size, "warmup_steps_untimed":
                     args.warmup, "timed_steps": args.steps, "image_tokens": (args.image_size // 32) ** 2},
        "runs": runs,
        "resume_checks": checks,
    }
    by_label = {r["label"]: r for r in runs if r.get("status") == "ok"}
    one = by_label.get("1proc")
    ratios = {}
    for label, run in by_label.items():
        if run is one or one is None:
            continue
        ratios[f"{label}/1proc"] = {
            "completions_per_s": round(run["completions_per_s"] / one["completions_per_s"], 3),
            "completion_tokens_per_s": round(run["completion_tokens_per_s"] / one["completion_tokens_per_s"], 3),
            "step_time": round(run["step_time_s_mean"] / one["step_time_s_mean"], 3),
        }
    results["ratios"] = ratios
    results["total_wall_s"] = round(time.perf_counter() - start, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))

    print("\n| run | status | completions/step | mean step_time s | completions/s | completion tokens/s | "
          "materialize wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['label']} | {r['status']} | {r.get('completions_per_step', '')} | {r.get('step_time_s_mean', '')} "
              f"| {r.get('completions_per_s', '')} | {r.get('completion_tokens_per_s', '')} | "
              f"{r.get('materialize_wall_s', '')} |")
    for label, ratio in ratios.items():
        print(f"ratio {label}: completions/s x{ratio['completions_per_s']}, completion tokens/s "
              f"x{ratio['completion_tokens_per_s']}, step_time x{ratio['step_time']}")
    log(f"done in {results['total_wall_s']}s; results in {out_dir / 'results.json'}")
    for check in checks:
        print(f"resume check {check['label']}: {check['status']} (killed {check.get('killed')}, resumed from step "
              f"{check.get('resumed_from_step')}, ran {check.get('steps_run')} steps, optimizer state step "
              f"{check.get('optimizer_state_step')})")
    return 0 if all(r.get("status") in ("ok", "skipped") for r in runs + checks) else 1


if __name__ == "__main__":
    sys.exit(main())
