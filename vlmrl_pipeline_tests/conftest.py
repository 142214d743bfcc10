"""Shared fixtures: a tiny profile (seconds, not minutes) and a tiny Qwen3-VL checkpoint built once per session."""

from __future__ import annotations

import dataclasses

import pytest

from vlmrl_pipeline.core.demo.tiny_model import TinyModelSpec
from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.profiles import Profile, demo_profile

TINY_IMAGE = 64  # 4x4 patches of 16 px -> 4 image tokens: keeps every forward pass cheap


def tiny_profile() -> Profile:
    """The demo profile shrunk so the whole lineage materializes in well under a minute on two cores."""
    demo = demo_profile()
    return dataclasses.replace(
        demo,
        name="tiny-test",
        data=dataclasses.replace(demo.data, synthetic_rows=48, eval_size=8, image_size=TINY_IMAGE),
        model=dataclasses.replace(demo.model, tiny_model=TinyModelSpec(
            vocab_size=512, text_hidden_size=64, text_layers=1, text_heads=2, text_kv_heads=1,
            text_intermediate_size=128, vision_depth=1, vision_hidden_size=32, vision_heads=2,
            vision_intermediate_size=64, image_size=TINY_IMAGE)),
        # Enough warm start and completion room that some rollouts earn a reward: with all rewards equal every
        # advantage is 0, LoRA B stays 0 and the blocking check lora_weights_trained (rightly) stops the run.
        # A high warm-start rate: 100 steps must teach the tags well enough that sampled rollouts earn rewards; two
        # prompts a step (batch 8), since one group of four from the demo's two families was often all alike.
        warm_start=WarmStartSettings(steps=100, batch_size=4, learning_rate=6e-3),
        gspo=dataclasses.replace(demo.gspo, max_steps=3, per_device_train_batch_size=8, num_generations=4,
                                 max_completion_length=40, logging_steps=1),
        generation=GenerationSettings(max_new_tokens=12, batch_size=4),
    )


@pytest.fixture(scope="session")
def tiny_profile_fixture() -> Profile:
    return tiny_profile()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A randomly initialised tiny Qwen3-VL checkpoint folder (model + processor)."""
    from vlmrl_pipeline.core.demo.tiny_model import build_tiny_qwen3vl

    spec = tiny_profile().model.tiny_model
    corpus = ["What is the value of the bar? <REASONING>look</REASONING><SOLUTION>12</SOLUTION> The answer is 3.5"] * 20
    return str(build_tiny_qwen3vl(tmp_path_factory.mktemp("tiny") / "ckpt", corpus, spec, seed=0))


HEAVY_ENV_VAR = "VLMRL_HEAVY_TESTS"


@pytest.fixture(scope="session", autouse=True)
def llama_cpp_tools_fetched():
    """llama.cpp's tools, fetched once (cached under ``VLMRL_TOOLS_DIR`` or ``~/.cache``): ``lora_adapter`` checks
    the GGUF export's converter before training and never fetches it itself, so without this a test that trains
    passed only where an earlier test (``test_export.py``'s) happened to fetch the tools in the same run."""
    import warnings

    from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools

    try:
        return llama_cpp_tools()
    except (OSError, RuntimeError) as exc:  # offline: the tests that need the tools fail with the export check's message
        warnings.warn(f"llama.cpp tools not available: {exc}", stacklevel=1)
        return None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: they are skipped (with the reason) on CPU machines such as CI. Tests marked
    ``heavy`` (the README's whole demo job in-process with its full accuracy assertions; the default run has the
    reduced demo of ``test_demo_learns.py``) run only with ``VLMRL_HEAVY_TESTS=1``."""
    import os

    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest -m gpu)")
    skip_heavy = pytest.mark.skip(reason=f"heavy: set {HEAVY_ENV_VAR}=1 to run it")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "heavy" in item.keywords and os.environ.get(HEAVY_ENV_VAR) != "1":
            item.add_marker(skip_heavy)
