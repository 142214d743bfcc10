"""GSPO rollouts through TRL's colocated vLLM with images: hand vLLM the prompt it expects, and check it got it.

TRL (1.15-1.16) tokenizes each prompt with the processor, which already expands every image placeholder into its
run of image tokens (256 ``<|image_pad|>`` for a 512x512 image on Qwen3-VL), and hands those ids plus the image to
vLLM. vLLM runs its own multimodal processing on token-id prompts and expands the first placeholder again: the
prompt it generates from has 511 image tokens and 545 tokens instead of 290 (measured with vLLM 0.25.1; TRL issue
huggingface/trl#6294). The trainer then scores the completions under its own 290-token prompt, so rollouts come
from another context. On random weights that costs 0.85 nats per token; on a trained model it hides in the noise.

The fix: before vLLM sees a prompt with images, shorten every run of the image token to one placeholder, which
vLLM expands exactly once (its returned prompt then equals the trainer's, token for token). Every call checks that
equality and stops at the first prompt that still differs, naming the setting, instead of training on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class RolloutPromptMismatchError(RuntimeError):
    """vLLM generated from a prompt other than the one the trainer scores."""


def image_token_id(processor) -> int | None:
    """The token an image expands into (``<|image_pad|>`` on the Qwen VL models), or None without one."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token = getattr(processor, "image_token", None)
        tokenizer = getattr(processor, "tokenizer", processor)
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
    return int(token_id) if token_id is not None else None


def collapse_image_runs(ids: Sequence[int], token_id: int) -> list[int]:
    """``ids`` with every run of ``token_id`` shortened to one token: the unexpanded prompt.

    >>> collapse_image_runs([1, 9, 9, 9, 2, 9, 9, 3], 9)
    [1, 9, 2, 9, 3]
    """
    out: list[int] = []
    for t in ids:
        if t == token_id and out and out[-1] == token_id:
            continue
        out.append(int(t))
    return out


def first_prompt_mismatch(sent: Sequence[Sequence[int]], served: Sequence[Sequence[int]]) -> str | None:
    """Why the prompts vLLM served differ from the trainer's (None when every one is equal).

    >>> first_prompt_mismatch([[1, 2]], [[1, 2]]) is None
    True
    >>> first_prompt_mismatch([[1, 9, 9, 2]], [[1, 9, 9, 9, 2]])
    'prompt 0: the trainer has 4 tokens, vLLM generated from 5'
    """
    for i, (a, b) in enumerate(zip(sent, served)):
        if list(a) != list(b):
            return f"prompt {i}: the trainer has {len(a)} tokens, vLLM generated from {len(b)}"
    return None


def feed_unexpanded_image_prompts(trainer, processor, log: Callable[[str], None] | None = None) -> bool:
    """Wrap ``trainer.vllm_generation.generate`` (TRL's colocated engine) so prompts with images reach vLLM with one
    placeholder per image, and check each served prompt against the trainer's. Returns whether it wrapped."""
    generation = getattr(trainer, "vllm_generation", None)
    token_id = image_token_id(processor)
    if generation is None or getattr(generation, "mode", None) != "colocate" or token_id is None:
        return False
    original = generation.generate

    def generate(prompts: Sequence[Sequence[int]], images: Sequence[Any] | None = None, *args, **kwargs):
        sent = prompts
        if images is not None:
            sent = [collapse_image_runs(p, token_id) if imgs else list(p) for p, imgs in zip(prompts, images)]
        outputs = original(sent, images, *args, **kwargs)
        served = outputs[0]
        if served is not None and len(served) == len(prompts):
            problem = first_prompt_mismatch(prompts, served)
            if problem is not None:
                raise RolloutPromptMismatchError(
                    f"gspo_settings.use_vllm: vLLM's rollout prompt differs from the trainer's ({problem}), so its "
                    "completions would come from another context. Train with use_vllm=False for this model.")
        return outputs

    generation.generate = generate
    if log is not None:
        log("vLLM rollouts: image placeholders collapsed before vLLM (TRL issue #6294); served prompts checked")
    return True
