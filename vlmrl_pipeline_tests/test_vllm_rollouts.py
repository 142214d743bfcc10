"""vLLM rollouts with images: the prompt vLLM generates from must be the trainer's (TRL issue #6294)."""

from __future__ import annotations

import doctest

import pytest
from PIL import Image

from vlmrl_pipeline.core.standin import standin_processor
from vlmrl_pipeline.core.training import vllm_rollouts
from vlmrl_pipeline.core.training.vllm_rollouts import (
    RolloutPromptMismatchError,
    collapse_image_runs,
    feed_unexpanded_image_prompts,
    image_token_id,
)


class FakeVLLMGeneration:
    """TRL's colocated ``VLLMGeneration.generate`` as vLLM 0.25 behaves on token-id prompts with an image: the
    first image token of each prompt becomes ``expand_to`` image tokens; the others stay (the double expansion)."""

    def __init__(self, token_id: int, expand_to: int, mode: str = "colocate"):
        self.token_id, self.expand_to, self.mode = token_id, expand_to, mode
        self.received: list[list[int]] = []

    def generate(self, prompts, images, num_generations, profiler=None):
        served = []
        for ids, imgs in zip(prompts, images or [None] * len(prompts)):
            self.received.append(list(ids))
            if imgs and self.token_id in ids:
                at = ids.index(self.token_id)
                ids = [*ids[:at], *[self.token_id] * self.expand_to, *ids[at + 1:]]
            served.append(list(ids))
        completions = [[5, 6]] * len(prompts)
        return served, completions, [[[-1.0]] * 2] * len(prompts), None


class FakeTrainer:
    def __init__(self, generation):
        self.vllm_generation = generation


@pytest.fixture(scope="module")
def qwen_processor():
    processor, _ = standin_processor("qwen3vl-2b")
    return processor


def test_doctests():
    assert doctest.testmod(vllm_rollouts).failed == 0


def test_collapse_undoes_the_processors_expansion(qwen_processor):
    """The real Qwen3-VL processor expands one ``<|image_pad|>`` into a run; collapsing gives the tokenizer's
    unexpanded prompt, the one vLLM expects."""
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many dots?"}]}]
    text = qwen_processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    expanded = qwen_processor(text=[text], images=[[Image.new("RGB", (256, 256))]])["input_ids"][0]
    unexpanded = qwen_processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    pad = image_token_id(qwen_processor)
    assert pad == qwen_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert expanded.count(pad) > 1 and unexpanded.count(pad) == 1
    assert collapse_image_runs(expanded, pad) == unexpanded


def test_prompts_with_images_reach_vllm_unexpanded_and_come_back_equal():
    pad, run = 9, 4
    generation = FakeVLLMGeneration(pad, run)
    assert feed_unexpanded_image_prompts(FakeTrainer(generation), _FakeProcessor(pad))
    with_image = [1, 8, *[pad] * run, 7, 2]
    text_only = [1, 3, 2]
    served, completions, _, _ = generation.generate(prompts=[with_image, text_only], images=[["img"], None],
                                                    num_generations=1)
    assert generation.received == [[1, 8, pad, 7, 2], text_only]
    assert served == [with_image, text_only]
    assert completions == [[5, 6], [5, 6]]


def test_a_served_prompt_that_differs_stops_training_naming_the_setting():
    """Without the collapse (here: the trainer's prompt holds a run the fake engine expands once more) the served
    prompt is longer than the trainer's: refused, not trained on."""
    pad = 9
    generation = FakeVLLMGeneration(pad, expand_to=4)
    feed_unexpanded_image_prompts(FakeTrainer(generation), _FakeProcessor(pad))
    # Two separate placeholders: collapsing keeps both, the fake vLLM expands only the first (an image count that
    # disagrees with the placeholders), so the prompts differ.
    prompt = [1, pad, 7, pad, 2]
    with pytest.raises(RolloutPromptMismatchError, match=r"gspo_settings.use_vllm: .*trainer has 5 tokens, vLLM "
                                                         r"generated from 8"):
        generation.generate(prompts=[prompt], images=[["img"]], num_generations=1)


@pytest.mark.parametrize("case", ["server mode", "no vLLM", "no image token"])
def test_left_alone_where_it_does_not_apply(case):
    generation = FakeVLLMGeneration(9, 4, mode="server" if case == "server mode" else "colocate")
    trainer = FakeTrainer(None if case == "no vLLM" else generation)
    processor = _FakeProcessor(None if case == "no image token" else 9)
    original = generation.generate
    assert not feed_unexpanded_image_prompts(trainer, processor)
    assert generation.generate == original


class _FakeProcessor:
    def __init__(self, token_id):
        self.image_token_id = token_id
