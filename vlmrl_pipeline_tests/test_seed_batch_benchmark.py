"""The seed-batch benchmark's arithmetic (``benchmarks/gspo_benchmark.py``), on the rows its H200 run committed."""

import json
from pathlib import Path

import pytest

from benchmarks.gspo_seed_batch import seed_batch_report
from benchmarks.gspo_timing import STEADY_BASIS, steady_micro_step

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_LOG = REPO_ROOT / "benchmarks" / "logs" / "fast_inference_h200" / "seed_batch_run2.json"


def test_steady_micro_step_takes_the_first_micro_steps_compile_out():
    # Step of 4 micro-steps: the first 60 s, of which 40 s rollout (_prepare_inputs) and 2 s training like the
    # others; so 18 s of compile.
    edges = [[100.0, 160.0, 162.0, 164.0, 166.0]]
    events = [(140.0, "UnslothGRPOTrainer._prepare_inputs", 40.0), (161.0, "UnslothGRPOTrainer._prepare_inputs", 0.0)]
    out = steady_micro_step(edges, events, [200.0], 0, 4, [0.5])
    assert out["micro_step_s"] == [[60.0, 2.0, 2.0, 2.0]]
    assert out["first_micro_step_excess_s"] == pytest.approx(18.0)
    assert out["s_per_micro_step_steady"] == pytest.approx((66.5 - 18.0) / 4)
    assert out["steady_basis"] == STEADY_BASIS["first-step"]
    # A warm-up step makes the timed steps the steady figure; an incomplete record gives none.
    warm = steady_micro_step(edges * 2, events, [200.0, 40.0], 1, 4, [0.5, 0.5])
    assert warm["s_per_micro_step_steady"] == pytest.approx(10.0)
    assert steady_micro_step([[0.0, 1.0]], [], [5.0], 0, 4, [])["s_per_micro_step_steady"] is None


def test_committed_seed_batch_rows_carry_the_issue_fields():
    rows = json.loads(RUN_LOG.read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["backend"] for r in ok} == {"unsloth-4bit", "unsloth-4bit-vllm", "transformers-bf16-vllm"}
    for r in ok:
        assert r["kind"] == "seed-batch" and r["model"] == "qwen3vl-8b"
        assert (r["completions_per_micro_step"], r["max_completion_length"]) == (8, 1024)
        assert r["s_per_micro_step_steady"] <= r["s_per_micro_step"]
        # The micro-step walls add up to the step (less the trainer's construction, in the first step's wall).
        assert sum(r["micro_step_s"][-1]) <= r["step_s_all"][-1]
        if r["capped_gb"]:
            assert r["fits_cap"] and r["peak_device_gb"] <= r["capped_gb"] * 2**30 / 1e9
    report = seed_batch_report(rows)
    assert "No available memory for the cache blocks" in report  # the 16-bit engine's failure is shown, not hidden
    assert "unsloth-4bit-vllm: 7.37x the bf16" in report
