"""Batched evaluation generation."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions
from vlmrl_pipeline.core.model.loading import load_model


def _inputs(n):
    colours = ["red", "green", "blue", "white", "black", "yellow"]
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q" + "x" * i}]}]
               for i in range(n)]
    return prompts, [Image.new("RGB", (64, 64), colours[i % len(colours)]) for i in range(n)]


def test_batched_greedy_generation_matches_one_by_one(tiny_checkpoint):
    """Left padding must not change what each row generates: batching is a speed-up, not a different eval."""
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    prompts, images = _inputs(5)  # different prompt lengths, so the batch really is padded
    batched = generate_completions(model, processor, prompts, images, GenerationSettings(max_new_tokens=8, batch_size=5))
    single = generate_completions(model, processor, prompts, images, GenerationSettings(max_new_tokens=8, batch_size=1))
    assert len(batched) == 5
    assert batched == single


def test_progress_is_reported_per_batch(tiny_checkpoint):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    prompts, images = _inputs(5)
    seen = []
    generate_completions(model, processor, prompts, images, GenerationSettings(max_new_tokens=2, batch_size=2),
                         progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_mismatched_prompts_and_images_are_rejected(tiny_checkpoint):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    prompts, images = _inputs(3)
    with pytest.raises(ValueError, match="3 prompts but 2 images"):
        generate_completions(model, processor, prompts, images[:2])
