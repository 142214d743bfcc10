"""Batched generation from a vision-language policy, for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from vlmrl_pipeline.core.model.loading import vision_token_ids

GENERATION_ENGINES = ("transformers", "vllm")


@dataclass(frozen=True)
class GenerationSettings:
    """How evaluation samples completions.

    Greedy decoding (``do_sample=False``) is the default: a benchmark number should not depend on a sampling seed.
    """

    max_new_tokens: int = field(default=1024, metadata={"help": (
        "Most tokens generated per completion.")})
    batch_size: int = field(default=8, metadata={"help": (
        "Prompts per ``model.generate`` call; with ``engine=\"vllm\"`` the most sequences vLLM decodes at once.")})
    do_sample: bool = field(default=False, metadata={"help": (
        "Sample instead of greedy decoding (then temperature, top_p and seed apply).")})
    temperature: float = field(default=1.0, metadata={"help": (
        "Sampling temperature (with do_sample).")})
    top_p: float = field(default=1.0, metadata={"help": (
        "Nucleus sampling threshold (with do_sample).")})
    seed: int = field(default=0, metadata={"help": (
        "Seed of sampling (with do_sample).")})
    engine: str = field(default="transformers", metadata={"help": (
        "``transformers`` (``model.generate``, any device) or ``vllm`` (CUDA and the ``vllm`` extra; several "
        "times faster). vLLM serves a 16-bit checkpoint: the base as stored, or dequantized from a 4-bit one, "
        "with the adapter merged in for ``after_completions``, so both evaluations run the same engine on the "
        "same weights.")})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": (
        "With ``engine=\"vllm\"``: the share of GPU memory vLLM takes (weights, activations and KV cache).")})
    vllm_enforce_eager: bool = field(default=False, metadata={"help": (
        "With ``engine=\"vllm\"``: skip torch.compile and CUDA graphs (starts in about 30 s instead of about 2 min, "
        "decodes about 3x slower).")})

    def __post_init__(self) -> None:
        if self.engine not in GENERATION_ENGINES:
            raise ValueError(f"engine must be one of {GENERATION_ENGINES}, got {self.engine!r}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens} and "
                             f"{self.batch_size}")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")


def generate_completions(
    model,
    processor,
    prompts: Sequence[list[dict]],
    images: Sequence[Image.Image],
    settings: GenerationSettings = GenerationSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Generate one completion per (chat prompt, image) pair, ``settings.batch_size`` at a time.

    Prompts are rendered with the processor's chat template (generation prompt appended), padded on the left so
    every row's continuation starts at the same position, and only the new tokens are decoded. Vision special
    tokens are suppressed: a sampled ``<|image_pad|>`` would break the model's next forward pass.
    """
    import torch

    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    gen_kwargs = dict(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        suppress_tokens=vision_token_ids(processor) or None,
        pad_token_id=tokenizer.pad_token_id,
    )
    if settings.do_sample:
        gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        # Explicitly neutral so a checkpoint's sampling defaults don't leak into greedy decoding (and warn).
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), settings.batch_size):
            batch_prompts = prompts[start : start + settings.batch_size]
            batch_images = [img.convert("RGB") for img in images[start : start + settings.batch_size]]
            texts = [
                processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch_prompts
            ]
            # One image list per prompt: Gemma-3's processor reads a flat list as one prompt's images.
            inputs = processor(text=texts, images=[[image] for image in batch_images], return_tensors="pt",
                               padding=True).to(device)
            with torch.inference_mode():
                generated = model.generate(**inputs, **gen_kwargs)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            if progress is not None:
                progress(len(outputs), len(prompts))
    finally:
        model.train(was_training)
    return outputs


def text_only(prompt: list[dict]) -> list[dict]:
    """A chat prompt with its image parts removed (for runtimes compared on the language model alone)."""
    out = []
    for message in prompt:
        content = message["content"]
        if not isinstance(content, str):
            content = [part for part in content if part.get("type") != "image"]
        out.append({**message, "content": content})
    return out


def greedy_token_ids(model, processor, prompt: list[dict], max_new_tokens: int) -> tuple[list[int], list[int]]:
    """``(prompt ids, greedy new ids)`` for a chat prompt without its image, stopping at ``<|im_end|>``.

    Ids rather than text so that another runtime (llama.cpp on a GGUF export) can be fed the same prompt and its
    tokens compared one by one. No tokens are suppressed: both runtimes take the plain argmax.
    """
    import torch

    tokenizer = processor.tokenizer
    text = processor.apply_chat_template(text_only(prompt), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = end_of_turn_id(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompt_ids], device=device), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id)
    new = [int(t) for t in out[0, len(prompt_ids):]]
    if end in new:
        new = new[: new.index(end)]
    return prompt_ids, new


END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>")
"""How Qwen-VL and Gemma-3 chat templates close a turn."""


def end_of_turn_id(tokenizer) -> int:
    """The id that ends an assistant turn in this tokenizer's chat format (else its EOS token)."""
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            return vocab[token]
    return tokenizer.eos_token_id


def next_token_logits(model, processor, prompts: Sequence[list[dict]], images: Sequence[Image.Image]):
    """Float32 logits of the first generated position for each (chat prompt, image), one prompt at a time (no
    padding, so two models are compared on identical inputs). Returns a CPU tensor ``[len(prompts), vocab]``."""
    import torch

    device = next(model.parameters()).device
    rows = []
    model.eval()
    for prompt, image in zip(prompts, images, strict=True):
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(device)
        with torch.inference_mode():
            rows.append(model(**inputs).logits[0, -1].float().cpu())
    return torch.stack(rows)


def greedy_new_ids(model, processor, prompts: Sequence[list[dict]], images: Sequence[Image.Image],
                   max_new_tokens: int) -> list[list[int]]:
    """Greedy new token ids for each (chat prompt, image), one prompt at a time (no padding), vision tokens
    suppressed as :func:`generate_completions` suppresses them, cut before the checkpoint's stop token: what
    another runtime given the same prompt and image is compared with token by token."""
    import torch

    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos])
    model.eval()
    out = []
    for prompt, image in zip(prompts, images, strict=True):
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(device)
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                       top_p=None, top_k=None, suppress_tokens=vision_token_ids(processor) or None,
                                       pad_token_id=processor.tokenizer.pad_token_id)
        new = [int(t) for t in generated[0, inputs["input_ids"].shape[1]:]]
        cut = next((i for i, t in enumerate(new) if t in stops), len(new))
        out.append(new[:cut])
    return out
