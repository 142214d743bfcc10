"""Gemma 3's SentencePiece vocabulary and tokenizer: read from a Gemma 3 GGUF or ``tokenizer.model`` when one is
given, else a placeholder of the same size with the special tokens and byte pieces at their real ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.files import sha256_file

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
GEMMA3_NEWLINE_PIECES = {107 + k: "\n" * (k + 1) for k in range(4)}
"""Runs of one to four newlines, single pieces in Gemma 3 ("\n" right after ``<end_of_turn>``): vLLM's Gemma 3
processor looks all four up (it merges "\n" + "\n\n" into "\n\n\n" around the image tokens) and fails with
``KeyError: '\n'`` on a vocabulary without them."""
GEMMA_VOCAB_ENV_VAR = "VLMRL_GEMMA_VOCAB"
"""Default for ``gemma_vocab``: a Gemma 3 GGUF, a ``tokenizer.model``, or a folder holding one."""

# SentencePiece piece types (sentencepiece_model.proto), the same numbers as llama.cpp's tokenizer.ggml.token_type.
SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_USER_DEFINED, SP_UNUSED, SP_BYTE = 1, 2, 3, 4, 5, 6

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

    Text still round-trips (every character but runs of newlines falls back to bytes), but token counts are not
    Gemma's.
    """
    pieces: list[Piece] = [(f"<standin_unused_{i}>", 0.0, SP_UNUSED) for i in range(GEMMA3_VOCAB_SIZE)]
    for index in range(256):
        pieces[GEMMA3_BYTE_PIECES_START + index] = (f"<0x{index:02X}>", 0.0, SP_BYTE)
    for index, token in GEMMA3_FIXED_TOKENS.items():
        pieces[index] = (token, 0.0, SP_UNKNOWN if token == "<unk>" else SP_CONTROL)
    for index, newlines in GEMMA3_NEWLINE_PIECES.items():
        pieces[index] = (newlines, 0.0, SP_USER_DEFINED)
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
    return pieces, {"real": True, "source": kind, "path": str(path.resolve()), "sha256": sha256_file(path)}


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
