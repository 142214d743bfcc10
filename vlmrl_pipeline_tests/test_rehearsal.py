"""Rehearsals: a real profile's whole lineage against a stand-in checkpoint (real architecture, packaging and
vocabulary; random weights), with lengths and counts shortened.

The GPU tests (``-m gpu``) run each real profile at full size; the stand-ins are built into
``$VLMRL_STANDIN_DIR`` (default: a temporary folder) unless already there, and ``$VLMRL_REHEARSAL_MATHVISTA`` may
name MathVista's own ``testmini.json`` for real prompt texts. The CPU test runs the same machinery on a tiny-width
stand-in of Qwen3-VL with the real vocabulary and 4-bit packaging.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from vlmrl_pipeline.core.export.merge import checkpoint_has_4bit_layers
from vlmrl_pipeline.core.profiles import get_profile
from vlmrl_pipeline.core.standin.rehearsal import (
    REHEARSAL_STANDINS,
    RehearsalLengths,
    ascii_share_reward,
    rehearsal_profile,
    write_geo3k_layout,
    write_mathvista_layout,
)
from vlmrl_pipeline.rehearse import STAGES, run_stages


def test_ascii_share_reward_varies_across_random_text():
    completions = [[{"role": "assistant", "content": text}] for text in ("abc", "ab\u4e2d", "\u4e2d\u6587", "")]
    assert ascii_share_reward(completions) == [1.0, 2 / 3, 0.0, 0.0]


def test_rehearsal_profile_shortens_lengths_only(tmp_path):
    for name in REHEARSAL_STANDINS:
        real = get_profile(name)
        rehearsal = rehearsal_profile(real, tmp_path / "model", tmp_path / "data")
        assert rehearsal.model.model_name == str(tmp_path / "model")
        assert rehearsal.data.source == str(tmp_path / "data")
        # What the rehearsal must not change: the model's loading, LoRA, the algorithm, the export.
        assert dataclasses.replace(rehearsal.model, model_name=real.model.model_name) == real.model
        for field in ("importance_sampling_level", "loss_type", "beta", "epsilon", "epsilon_high", "optim",
                      "adam_beta1", "adam_beta2", "weight_decay", "temperature", "scale_rewards"):
            assert getattr(rehearsal.gspo, field) == getattr(real.gspo, field), field
        assert rehearsal.export == real.export
        assert rehearsal.gspo.rehearsal_reward_weight > 0 and real.gspo.rehearsal_reward_weight == 0
        assert rehearsal.gspo.reuses_generations == real.gspo.reuses_generations


def test_local_data_copies_load_as_their_profiles_expect(tmp_path):
    from vlmrl_pipeline.core.data.mathvista import load_mathvista
    from vlmrl_pipeline.core.data.rlinf import load_rlinf

    mathvista = load_mathvista(str(write_mathvista_layout(tmp_path / "mv", num_rows=6)), "testmini")
    assert len(mathvista) == 6 and mathvista["query"].str.len().min() > 0
    geo = get_profile("geo3k").data
    rows = load_rlinf(str(write_geo3k_layout(tmp_path / "geo", num_rows=5, split=geo.split)), geo.split,
                      prompt_key=geo.prompt_key, answer_key=geo.answer_key, image_keys=geo.image_keys)
    assert len(rows) == 5 and "\\boxed" not in rows["answer"][0]


def _standin(name: str, root: Path, tiny: bool = False) -> Path:
    from vlmrl_pipeline.core.standin import build_standin

    folder = root / (name + ("-tiny" if tiny else ""))
    if not (folder / "config.json").exists():
        build_standin(name, folder, tiny=tiny, device="cuda" if not tiny else "cpu")
    return folder


@pytest.mark.slow
def test_cpu_rehearsal_of_the_qwen3vl_8b_profile_on_a_tiny_4bit_standin(tmp_path):
    """Every stage and check of the seed profile, on CPU (transformers backend), against a tiny-width Qwen3-VL saved
    as the hub's 4-bit checkpoint with Qwen's real vocabulary: the 16-bit merge dequantizes it, GGUF export
    recognises the tokenizer, and the data are a MathVista GitHub-layout copy."""
    pytest.importorskip("bitsandbytes")
    model = _standin("qwen3vl-8b", tmp_path / "standins", tiny=True)
    assert get_profile("qwen3vl-8b").export.merged_4bit  # the seed's export; Unsloth-only, so left out on a CPU
    results = run_stages("qwen3vl-8b", str(model), tmp_path / "work", list(STAGES), num_rows=24,
                         export_overrides={"merged_4bit": False}, lengths=RehearsalLengths(eval_size=4, max_steps=1))
    _assert_rehearsal_complete(results, tmp_path / "work")


def _assert_rehearsal_complete(results: dict, work: Path) -> None:
    assert all(stage["success"] for stage in results["stages"].values()), results
    assert set(results["stages"]) == set(STAGES)
    checks = {name: passed for stage in results["stages"].values() for name, passed in stage["checks"].items()}
    assert checks and all(checks.values()), checks
    assert {"lora_weights_trained", "merged_matches_adapter", "gguf_files_intact"} <= set(checks)
    merged = work / "data" / "merged_model" / "checkpoint"
    assert not checkpoint_has_4bit_layers(merged)
    gguf = json.loads((work / "data" / "gguf_model" / "gguf.json").read_text())
    assert all(export["mmproj"]["file"].startswith("mmproj-") for export in gguf["exports"])
    assert all(export["model"]["tokenizer_pre"] for export in gguf["exports"])
    _assert_gguf_compared_with_the_image(work)


def _assert_gguf_compared_with_the_image(work: Path) -> None:
    """Random weights make answers meaningless: what a rehearsal records is each GGUF, run through mtmd with the
    image, against the merged checkpoint token by token on the same prompts."""
    shipped = json.loads((work / "data" / "gguf_records" / "gguf_records.json").read_text())
    gguf = json.loads((work / "data" / "gguf_model" / "gguf.json").read_text())
    assert set(shipped["types"]) == {e["gguf_type"] for e in gguf["exports"]}
    for gguf_type, entry in shipped["types"].items():
        assert entry["prompt_tokens_identical"] == shipped["rows"], (gguf_type, entry["first_prompt_difference"])
        assert entry["image_tokens_identical"] == shipped["rows"], gguf_type
        vs = entry["vs_merged"]
        assert vs["samples"] == shipped["logit_samples"] > 0
        assert vs["argmax_agree"] >= 1 and len(vs["greedy_agreeing_prefix"]) == vs["samples"], (gguf_type, vs)


@pytest.mark.gpu
@pytest.mark.parametrize("profile", list(REHEARSAL_STANDINS))
def test_gpu_rehearsal_of_each_real_profile(profile, tmp_path):
    pytest.importorskip("unsloth")
    root = Path(os.environ.get("VLMRL_STANDIN_DIR") or tmp_path / "standins")
    model = _standin(REHEARSAL_STANDINS[profile], root)
    work = Path(os.environ.get("VLMRL_REHEARSAL_WORK") or tmp_path / "work") / profile
    results = run_stages(profile, str(model), work, list(STAGES),
                         mathvista_json=os.environ.get("VLMRL_REHEARSAL_MATHVISTA"))
    print(json.dumps({stage: {k: v for k, v in entry.items() if k not in ("assets",)}
                      for stage, entry in results["stages"].items()}, indent=1))
    _assert_rehearsal_complete(results, work)
    if get_profile(profile).export.merged_4bit:
        assert (work / "data" / "merged_model" / "checkpoint-4bit" / "config.json").exists()
