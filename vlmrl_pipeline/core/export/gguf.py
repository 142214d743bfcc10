"""GGUF export through llama.cpp's own converter and quantizer: each file written, read back and checked against the
checkpoint it came from, and run by llama.cpp's runtime for a greedy comparison."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.environment import usable_cores
from vlmrl_pipeline.core.export.settings import GGUF_QUANTIZER_TYPES, GGUF_TYPES, MMPROJ_TYPES
from vlmrl_pipeline.core.files import sha256_file

# Hugging Face architecture -> the ``general.architecture`` llama.cpp's converter writes for its language model.
GGUF_ARCHITECTURES = {"Qwen3VLForConditionalGeneration": "qwen3vl", "Qwen2_5_VLForConditionalGeneration": "qwen2vl",
                      "Gemma3ForConditionalGeneration": "gemma3"}


def llama_cpp_runtime_available() -> bool:
    """True when ``llama-cpp-python`` (llama.cpp's runtime, compiled at install) is importable."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _run_converter(converter: Path, checkpoint: Path, outfile: Path, outtype: str, mmproj: bool) -> str:
    import subprocess
    import sys

    command = [sys.executable, str(converter), str(checkpoint), "--outfile", str(outfile), "--outtype", outtype]
    if mmproj:
        command.append("--mmproj")
    done = subprocess.run(command, capture_output=True, text=True, cwd=converter.parent)
    if done.returncode != 0 or not outfile.exists():
        what = "vision projector (mmproj)" if mmproj else "language model"
        raise RuntimeError(f"llama.cpp's converter failed on the {what} ({outtype}, exit {done.returncode}):\n"
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stderr


def quantize_gguf(source: str | os.PathLike, target: str | os.PathLike, gguf_type: str,
                  threads: int | None = None) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp's own quantizer (``llama_model_quantize``), e.g. to ``q4_k_m``.

    Tensors whose rows do not split into 256-value K-quant blocks fall back to a type that fits, as
    ``llama-quantize`` does; :func:`inspect_gguf` reports the types actually written.
    """
    if gguf_type not in GGUF_QUANTIZER_TYPES:
        raise ValueError(f"quantize_gguf writes {sorted(GGUF_QUANTIZER_TYPES)}, not {gguf_type!r}")
    if not llama_cpp_runtime_available():
        raise RuntimeError(f"GGUF type {gguf_type!r} is written by llama.cpp's quantizer, which needs the llama.cpp "
                           "runtime: pip install -e '.[gguf]' (compiles llama-cpp-python), or export q8_0/f16 only")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_QUANTIZER_TYPES[gguf_type]
    params.nthread = threads or usable_cores()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0 or not Path(target).exists():
        raise RuntimeError(f"llama.cpp's quantizer failed ({status}) on {source} -> {gguf_type}")
    return Path(target)


def inspect_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """Read a GGUF file back: its architecture, tensors (count and types), tokenizer, size and checksum."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str, default=None):
        item = reader.fields.get(key)
        return item.contents() if item is not None else default

    arch = field("general.architecture")
    tokens = field("tokenizer.ggml.tokens") or []
    return {
        "file": Path(path).name,
        "architecture": arch,
        "kind": field("general.type"),
        "file_type": field("general.file_type"),
        "num_tensors": len(reader.tensors),
        "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
        "tensor_names": [t.name for t in reader.tensors],
        "block_count": field(f"{arch}.block_count") if arch != "clip" else field("clip.vision.block_count"),
        "embedding_length": field(f"{arch}.embedding_length") if arch != "clip" else
        field("clip.vision.embedding_length"),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "num_tokens": len(tokens),
        "tokens": tokens,
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "has_chat_template": field("tokenizer.chat_template") is not None,
        "projector_type": field("clip.projector_type"),
        "size_bytes": Path(path).stat().st_size,
        "sha256": sha256_file(path),
    }


def verify_gguf(model: dict[str, Any], mmproj: dict[str, Any] | None, checkpoint: str | os.PathLike) -> list[str]:
    """Problems found comparing read-back GGUF files with the checkpoint they came from (empty: consistent).

    Checks the architecture llama.cpp will load, one block per language-model layer, the hidden size, the
    tokenizer (every token string at its id, the pre-tokenizer llama.cpp recognised, end-of-turn id) and, for the
    vision projector, its block count and width.
    """
    from transformers import AutoTokenizer

    from vlmrl_pipeline.core.model.loading import GEMMA3_VISION_SPECIAL_TOKENS

    config = json.loads((Path(checkpoint) / "config.json").read_text())
    text = config.get("text_config", config)
    vision = config.get("vision_config", {})
    problems: list[str] = []
    expected_arch = GGUF_ARCHITECTURES.get((config.get("architectures") or [""])[0])
    if expected_arch and model["architecture"] != expected_arch:
        problems.append(f"architecture {model['architecture']!r}, expected {expected_arch!r}")
    layers = int(text["num_hidden_layers"])
    if model["block_count"] != layers:
        problems.append(f"block_count {model['block_count']}, the checkpoint has {layers} layers")
    missing = [i for i in range(layers) if not any(n.startswith(f"blk.{i}.") for n in model["tensor_names"])]
    if missing:
        problems.append(f"no tensors for blocks {missing}")
    if "token_embd.weight" not in model["tensor_names"]:
        problems.append("no token_embd.weight")
    if model["embedding_length"] != int(text["hidden_size"]):
        problems.append(f"embedding_length {model['embedding_length']}, hidden_size is {text['hidden_size']}")
    # A byte-level BPE (``gpt2`` in GGUF) needs its pre-tokenizer recognised; SentencePiece (Gemma's ``llama``)
    # has none.
    if model["tokenizer_model"] == "gpt2" and not model["tokenizer_pre"]:
        problems.append("no tokenizer.ggml.pre: llama.cpp did not recognise the tokenizer")
    if (Path(checkpoint) / "tokenizer.model").is_file() and model["tokenizer_model"] == "gpt2":
        problems.append(f"the checkpoint's tokenizer is SentencePiece (tokenizer.model) but the GGUF holds a BPE "
                        f"tokenizer ({model['tokenizer_pre']!r}): llama.cpp's converter took the wrong path")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}

    def same(stored: str, expected: str) -> bool:
        # llama.cpp writes SentencePiece's word-boundary mark "\u2581" as a plain space in user-defined tokens.
        # (A byte-level BPE vocabulary never holds that mark, so the rule cannot hide a real difference there.)
        # Gemma 3's <image_soft_token> lives in tokenizer.json only; llama.cpp pads that id ("[PAD262144]"): the
        # text model never sees it, the projector file handles images.
        return stored == expected or stored.replace(" ", "\u2581") == expected.replace(" ", "\u2581") or (
            expected in GEMMA3_VISION_SPECIAL_TOKENS and stored.startswith("[PAD"))

    wrong = sorted(i for i, t in by_id.items() if i >= len(model["tokens"]) or not same(model["tokens"][i], t))
    if wrong:
        shown = [(i, by_id[i], model["tokens"][i] if i < len(model["tokens"]) else None) for i in wrong[:3]]
        problems.append(f"{len(wrong)} tokens differ from the checkpoint's tokenizer (first: id, checkpoint, "
                        f"GGUF: {shown})")
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    if eos is not None and model["eos_token_id"] != eos:
        problems.append(f"eos_token_id {model['eos_token_id']}, the tokenizer's is {eos}")
    if mmproj is not None:
        if mmproj["architecture"] != "clip" or mmproj["kind"] != "mmproj":
            problems.append(f"projector file is {mmproj['architecture']!r}/{mmproj['kind']!r}, not clip/mmproj")
        depth = vision.get("depth", vision.get("num_hidden_layers"))
        if depth is not None and mmproj["block_count"] != int(depth):
            problems.append(f"projector block_count {mmproj['block_count']}, the vision tower has {depth}")
        if vision.get("hidden_size") and mmproj["embedding_length"] != int(vision["hidden_size"]):
            problems.append(f"projector width {mmproj['embedding_length']}, the vision tower's is "
                            f"{vision['hidden_size']}")
    return problems


@dataclass(frozen=True)
class GgufExport:
    """One exported GGUF type: the language model file, the vision projector, and what reading them back gave."""

    gguf_type: str
    model_file: Path
    mmproj_file: Path | None
    model_info: dict[str, Any]
    mmproj_info: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        """Everything but the token list and tensor names (for metadata and JSON)."""
        drop = ("tokens", "tensor_names")
        out = {"gguf_type": self.gguf_type,
               "model": {k: v for k, v in self.model_info.items() if k not in drop}}
        if self.mmproj_info is not None:
            out["mmproj"] = {k: v for k, v in self.mmproj_info.items() if k not in drop}
        return out


def export_gguf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, gguf_types: Sequence[str], converter: Path,
                mmproj_type: str = "f16", log: Callable[[str], None] | None = None) -> list[GgufExport]:
    """Convert a merged Hugging Face checkpoint to GGUF with llama.cpp's converter, one file per type.

    For a vision-language model llama.cpp splits the export in two: the language model (``model-<type>.gguf``)
    and the vision encoder with its projector (``mmproj-<mmproj_type>.gguf``, shared by every type; llama.cpp
    loads it beside any of them). ``q4_k_m`` is quantized from an f16 conversion by llama.cpp's quantizer. Every
    file is read back and checked against the checkpoint (:func:`verify_gguf`); any problem raises.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    unknown = [t for t in gguf_types if t not in GGUF_TYPES]
    if unknown or not gguf_types:
        raise ValueError(f"gguf_types must be a non-empty subset of {list(GGUF_TYPES)}, got {list(gguf_types)}")
    if mmproj_type not in MMPROJ_TYPES:
        raise ValueError(f"mmproj_type must be one of {list(MMPROJ_TYPES)}, got {mmproj_type!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _m: None)
    from vlmrl_pipeline.core.llama_cpp import LlamaCppTools, register_checkpoint_tokenizer

    # A small byte-level BPE with GPT-2's pre-tokenizer (the demo's) is unknown to the converter by its hash:
    # register it as gpt-2, as llama.cpp's update script registers new models.
    registered = register_checkpoint_tokenizer(checkpoint, LlamaCppTools(Path(converter).parent))
    if registered:
        say(f"registered the checkpoint's tokenizer (probe hash {registered[:12]}...) with the converter as gpt-2")
    config = json.loads((checkpoint / "config.json").read_text())
    mmproj_file: Path | None = None
    mmproj_info = None
    if "vision_config" in config:
        mmproj_file = out_dir / f"mmproj-{mmproj_type}.gguf"
        _run_converter(converter, checkpoint, mmproj_file, mmproj_type, mmproj=True)
        mmproj_info = inspect_gguf(mmproj_file)
        say(f"wrote {mmproj_file.name}: {mmproj_info['num_tensors']} tensors, {mmproj_info['size_bytes']} bytes")
    exports = []
    for gguf_type in dict.fromkeys(gguf_types):  # each type once, in the order asked
        model_file = out_dir / f"model-{gguf_type}.gguf"
        if gguf_type in GGUF_QUANTIZER_TYPES:
            f16 = out_dir / "model-f16.gguf"
            scratch = f16 if f16.exists() else out_dir / ".model-f16-for-quantize.gguf"
            if not scratch.exists():
                _run_converter(converter, checkpoint, scratch, "f16", mmproj=False)
            quantize_gguf(scratch, model_file, gguf_type)
            if scratch != f16:
                scratch.unlink()
        else:
            _run_converter(converter, checkpoint, model_file, gguf_type, mmproj=False)
        info = inspect_gguf(model_file)
        problems = verify_gguf(info, mmproj_info, checkpoint)
        if problems:
            raise RuntimeError(f"{model_file.name} does not match {checkpoint}: " + "; ".join(problems))
        say(f"wrote {model_file.name}: {info['architecture']}, {info['num_tensors']} tensors "
            f"{info['tensor_types']}, tokenizer {info['tokenizer_model']}/{info['tokenizer_pre']}, "
            f"{info['size_bytes']} bytes")
        exports.append(GgufExport(gguf_type, model_file, mmproj_file, info, mmproj_info))
    return exports


class LlamaDecoder:
    """Feeds token ids to sequence 0 of a llama.cpp ``context`` through ``batch`` and returns the logits after the
    last one. ``position`` is where the next ids go; a caller that evaluates an image chunk itself (mtmd) sets it
    to where that chunk ended."""

    def __init__(self, context, batch, n_vocab: int, model_file: str | os.PathLike):
        self.context, self.batch, self.n_vocab, self.model_file = context, batch, n_vocab, model_file
        self.position = 0

    def __call__(self, ids: Sequence[int]):
        import ctypes

        import llama_cpp as llama
        import numpy as np

        # Explicit positions and sequence ids, as llama.cpp's own examples fill a batch. Logits for every token:
        # asking for the last one only makes llama.cpp drop the other rows before the final layer, which breaks
        # its Qwen3-VL graph when that layer also takes the deepstack input (a one-layer model).
        batch = self.batch
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, self.position + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        status = llama.llama_decode(self.context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} on {self.model_file}")
        self.position += len(ids)
        pointer = llama.llama_get_logits_ith(self.context, -1)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,)).copy()


def gguf_greedy_tokens(model_file: str | os.PathLike, prompt_ids: Sequence[int], max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> tuple[list[int], list[float]]:
    """Greedy continuation of ``prompt_ids`` computed by llama.cpp itself from a GGUF file (text only).

    Returns the new token ids and the logits llama.cpp gave after the prompt (its next-token distribution), so a
    caller can compare both with ``transformers`` on the checkpoint the file came from. Uses llama.cpp's C API
    through ``llama-cpp-python``'s bindings, with the CPU's extra buffer types (weight repacking, AMX) off:
    llama.cpp's AMX kernels crash on the demo model's small q8_0 matrices (a segfault in
    ``ggml_backend_amx_mul_mat`` on a Sapphire Rapids CPU), and the plain kernels compute the same product.
    """
    if not llama_cpp_runtime_available():
        raise RuntimeError("running a GGUF needs the llama.cpp runtime: pip install -e '.[gguf]'")

    import llama_cpp as llama
    import numpy as np

    llama.llama_backend_init()
    model_params = llama.llama_model_default_params()
    model_params.use_extra_bufts = False
    model = llama.llama_model_load_from_file(str(model_file).encode(), model_params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {model_file}")
    context_params = llama.llama_context_default_params()
    context_params.n_ctx = context_params.n_batch = max(256, len(prompt_ids) + max_new_tokens + 8)
    context_params.n_threads = context_params.n_threads_batch = min(4, os.cpu_count() or 1)
    context = llama.llama_init_from_model(model, context_params)
    try:
        if not context:
            raise RuntimeError(f"llama.cpp could not create a context for {model_file}")
        n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))

        batch = llama.llama_batch_init(context_params.n_batch, 0, 1)
        decode = LlamaDecoder(context, batch, n_vocab, model_file)

        logits = decode(list(prompt_ids))
        first_logits = [float(x) for x in logits]
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            if token in stop_ids:
                break
            out.append(token)
            logits = decode([token])
        llama.llama_batch_free(batch)
        return out, first_logits
    finally:
        if context:
            llama.llama_free(context)
        llama.llama_model_free(model)
