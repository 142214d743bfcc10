"""The demo's model: Qwen3-VL's architecture at a size that trains on two CPU cores.

:func:`build_tiny_qwen3vl` writes a complete Qwen3-VL checkpoint folder (config, random weights, a byte-level BPE
tokenizer (GPT-2's, from llama.cpp's files, or one trained here), chat template, vision special tokens, image
processor), which is then loaded exactly like a hub checkpoint (``core.model.loading.load_model``). No model is
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmrl_pipeline.core.model.loading import CHAT_SPECIAL_TOKENS, VISION_SPECIAL_TOKENS, save_checkpoint

# Qwen-VL's chat template, reduced to what a single-image, single-turn math prompt needs. Images become
# ``<|vision_start|><|image_pad|><|vision_end|>``; the processor expands the pad token to the patch count.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the demo model: Qwen3-VL's architecture at a size that trains on two CPU cores."""

    tokenizer: str = field(default="trained", metadata={"help": (
        "``\"trained\"``: a ``vocab_size``-token byte-level BPE with GPT-2's pre-tokenizer, trained on the training "
        "prompts: small and fast, and exported to GGUF by registering its hash with llama.cpp's converter as "
        "``gpt-2`` (what llama.cpp's ``convert_hf_to_gguf_update.py`` does for new models). ``\"gpt-2\"``: GPT-2's "
        "own byte-level BPE from llama.cpp's vocabulary files (50 257 tokens plus the chat and vision tokens), "
        "which the converter knows already; its embedding is most of the model and made the demo 2.5x slower.")})
    vocab_size: int = field(default=1024, metadata={"help": (
        "Vocabulary size of the ``\"trained\"`` tokenizer (unused for ``\"gpt-2\"``).")})
    text_hidden_size: int = field(default=128, metadata={"help": (
        "Hidden size of the demo model's language model.")})
    text_layers: int = field(default=2, metadata={"help": (
        "Decoder layers of the demo model's language model.")})
    text_heads: int = field(default=4, metadata={"help": (
        "Attention heads of the demo model's language model.")})
    text_kv_heads: int = field(default=2, metadata={"help": (
        "Key/value heads (grouped-query attention) of the demo model's language model.")})
    text_intermediate_size: int = field(default=384, metadata={"help": (
        "MLP width of the demo model's language model.")})
    vision_depth: int = field(default=2, metadata={"help": (
        "Blocks of the demo model's vision tower.")})
    vision_hidden_size: int = field(default=64, metadata={"help": (
        "Hidden size of the demo model's vision tower.")})
    vision_heads: int = field(default=4, metadata={"help": (
        "Attention heads of the demo model's vision tower.")})
    vision_intermediate_size: int = field(default=128, metadata={"help": (
        "MLP width of the demo model's vision tower.")})
    image_size: int = field(default=128, metadata={"help": (
        "The image processor resizes to at most this many pixels per side: 128 px gives 8x8 patches of 16 px, 16 "
        "image tokens after the 2x2 merge.")})


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer (GPT-2's pre-tokenizer) with the chat and vision special tokens.

    Returns a ``tokenizers.Tokenizer``. Byte-level means any text round-trips, including text the corpus never saw.
    GPT-2's pre-tokenizer (``ByteLevel`` with its split regex) is one llama.cpp implements, so the GGUF export can
    register this tokenizer with the converter as ``gpt-2`` (``core.llama_cpp.register_checkpoint_tokenizer``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    special = list(CHAT_SPECIAL_TOKENS + VISION_SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return tokenizer


def _tiny_config(spec: TinyModelSpec, vocab_size: int, token_ids: dict[str, int]):
    from transformers import Qwen3VLConfig

    head_dim = spec.text_hidden_size // spec.text_heads
    # Qwen3-VL's multimodal RoPE splits head_dim/2 frequencies over (time, height, width).
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=spec.text_hidden_size,
            intermediate_size=spec.text_intermediate_size,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads,
            head_dim=head_dim,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope,
                             "mrope_interleaved": True},
            # Like Qwen's tokenizers, this one adds no BOS token; EOS ends an assistant turn.
            pad_token_id=token_ids["<|endoftext|>"],
            bos_token_id=None,
            eos_token_id=token_ids["<|im_end|>"],
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden_size,
            num_heads=spec.vision_heads,
            intermediate_size=spec.vision_intermediate_size,
            out_hidden_size=spec.text_hidden_size,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=256,
            deepstack_visual_indexes=[spec.vision_depth - 1],
        ),
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def tiny_tokenizer(corpus: Iterable[str], spec: TinyModelSpec):
    """The raw ``tokenizers.Tokenizer`` named by ``spec.tokenizer``, with the chat and vision special tokens."""
    if spec.tokenizer == "gpt-2":
        from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools, vocab_tokenizer

        return vocab_tokenizer(llama_cpp_tools().vocab("gpt-2"), CHAT_SPECIAL_TOKENS + VISION_SPECIAL_TOKENS)
    if spec.tokenizer == "trained":
        return train_tokenizer(corpus, spec.vocab_size)
    raise ValueError(f"tiny model tokenizer must be 'gpt-2' or 'trained', got {spec.tokenizer!r}")


def build_tiny_processor(corpus: Iterable[str], spec: TinyModelSpec = TinyModelSpec()):
    """A Qwen3-VL processor around the demo tokenizer: chat template, special tokens, 16 px patches."""
    from transformers import PreTrainedTokenizerFast, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    raw = tiny_tokenizer(corpus, spec)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(VISION_SPECIAL_TOKENS) + ["<|im_start|>"],
        chat_template=QWEN_VL_CHAT_TEMPLATE,
        padding_side="left",  # decoder-only batched generation pads on the left
        model_max_length=4096,
    )
    side = spec.image_size
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2,
        min_pixels=32 * 32, max_pixels=side * side,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def build_tiny_qwen3vl(
    out_dir: str | os.PathLike, corpus: Iterable[str], spec: TinyModelSpec = TinyModelSpec(), seed: int = 0
) -> Path:
    """Write a randomly initialised Qwen3-VL checkpoint (model + processor) to ``out_dir`` and return it.

    The folder loads with ``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained`` like
    any hub checkpoint. It is written to a temporary sibling folder and moved into place, so a crash never leaves
    a half-written checkpoint behind.
    """
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    processor = build_tiny_processor(corpus, spec)
    tok = processor.tokenizer
    token_ids = {t: tok.convert_tokens_to_ids(t) for t in CHAT_SPECIAL_TOKENS + VISION_SPECIAL_TOKENS}
    config = _tiny_config(spec, len(tok), token_ids)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = token_ids["<|endoftext|>"]
    model.generation_config.eos_token_id = token_ids["<|im_end|>"]
    model.generation_config.bos_token_id = None
    return save_checkpoint(model, processor, out_dir, extra={"tiny_model_spec": asdict(spec), "seed": seed})
