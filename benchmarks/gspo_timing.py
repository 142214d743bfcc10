"""gspo_benchmark.py's clocks inside a training child: device memory sampled over the run, the memory cap, the
profiled phases of each step, the optimizer timer, and the arithmetic that turns them into per-step figures."""

from __future__ import annotations

import time

from benchmarks.bench_common import GB
from benchmarks.gspo_configs import GPU_LIMITS


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


def make_optimizer_timer():
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
