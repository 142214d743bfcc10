"""gspo_benchmark.py's child processes: one GSPO configuration trained and timed (``child_gspo``), the stand-in
build, and ``child_main``, which runs the job a spec file names and writes its result file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from benchmarks.bench_common import GB, make_log
from benchmarks.gspo_configs import ENGINES, SEED_EPOCH_MICRO_STEPS
from benchmarks.gspo_eval import GenerateHook, child_decode_profile, run_eval
from benchmarks.gspo_timing import (
    DeviceMemorySampler,
    PhaseHook,
    apply_memory_cap,
    gpu_limits,
    make_optimizer_timer,
    phase_breakdown,
    steady_micro_step,
)
from benchmarks.gspo_workload import child_build, device_info, mem_snapshot, param_breakdown, train_dataset

log = make_log("bench")


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
    optimizer_timer = make_optimizer_timer()
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
