"""A GGUF export run the way it is shipped: llama.cpp's multimodal runtime (``libmtmd``, in ``llama-cpp-python``)
on the language-model file with its ``mmproj``, an image and the evaluation's own prompt string, greedy.

The prompt is rendered by the checkpoint's chat template in ``transformers`` (exactly the string the other
evaluations tokenize); only its image placeholder is replaced by mtmd's media marker, around which mtmd puts the
same begin/end tokens the template wrote. Each GGUF runs in a child process (:func:`run_gguf_multimodal`): a crash
inside llama.cpp then fails the asset with a message naming the file instead of killing the Dagster step, and
the child imports only llama.cpp's bindings, numpy, PIL and ``core.export.gguf``'s decoder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.environment import usable_cores

MEDIA_MARKER = "<__media__>"
"""mtmd's default media marker (``mtmd_default_marker()``)."""

# What a Hugging Face chat template writes for one image, per family; mtmd writes the same begin/end tokens
# around the image embeddings itself (tools/mtmd/mtmd.cpp: Qwen2/2.5/3-VL <|vision_start|>...<|vision_end|>,
# Gemma 3 <start_of_image>...<end_of_image>), so only the placeholder in between is replaced.
# Gemma 3's processor also puts a blank line on each side of the image ("\n\n<start_of_image>...<end_of_image>\n\n"),
# so the marker gets them too.
IMAGE_SPANS = (
    (re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>)+<\|vision_end\|>"), MEDIA_MARKER),
    (re.compile(r"<start_of_image>"), f"\n\n{MEDIA_MARKER}\n\n"),
)


def media_prompt(rendered: str) -> str:
    """The chat-template-rendered prompt with its one image placeholder replaced by mtmd's media marker.

    >>> media_prompt("<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\\n")
    '<|im_start|>user\\n<__media__>How many?<|im_end|>\\n'
    """
    for pattern, replacement in IMAGE_SPANS:
        found = pattern.findall(rendered)
        if found:
            if len(found) != 1:
                raise ValueError(f"the prompt holds {len(found)} images; one image per sample is evaluated")
            return pattern.sub(replacement.replace("\\", "\\\\"), rendered)
    raise ValueError("no image placeholder (<|vision_start|><|image_pad|><|vision_end|> or <start_of_image>) in the "
                     "rendered prompt: not a chat template this evaluation knows")


@dataclass(frozen=True)
class MtmdJob:
    """What one child process computes: greedy completions of ``prompts`` (media-marker strings) with ``images``."""

    model_file: str
    mmproj_file: str
    prompts: list[str]
    image_paths: list[str]
    max_new_tokens: int
    stop_ids: list[int]
    suppress_ids: list[int] = field(default_factory=list)
    logits_samples: int = 0
    """For the first N samples also return the first generated position's logits (the comparison on random
    weights, where answers mean nothing)."""
    extra_buffer_types: bool = False
    threads: int = 0
    context_tokens: int = 4096
    add_special: bool = False
    """Let llama.cpp add the vocabulary's BOS as transformers' processor does (Gemma: the rendered template's
    ``<bos>`` plus the tokenizer's own); :func:`evaluate_gguf` sets it from the checkpoint's tokenizer."""
    image_min_tokens: int = 0
    image_max_tokens: int = 0
    """Bounds on an image's tokens (0: mtmd's own, 8..4096 for Qwen-VL), set from the checkpoint's processor by
    :func:`image_token_limits` so mtmd resizes an image to the grid transformers uses."""


def _load(job: MtmdJob):
    import llama_cpp as llama
    from llama_cpp import mtmd_cpp

    llama.llama_backend_init()
    model_params = llama.llama_model_default_params()
    # The CPU backend's extra buffer types repack q8_0/q4 weights for its own matmul kernels (AMX, or the AVX2
    # repack); see ExportSettings.llama_cpp_extra_buffer_types for why they are off by default.
    model_params.use_extra_bufts = job.extra_buffer_types
    model = llama.llama_model_load_from_file(job.model_file.encode(), model_params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {job.model_file}")
    threads = job.threads or usable_cores()
    params = llama.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = job.context_tokens
    params.n_threads = params.n_threads_batch = threads
    context = llama.llama_init_from_model(model, params)
    if not context:
        raise RuntimeError(f"llama.cpp could not create a context for {job.model_file}")
    mparams = mtmd_cpp.mtmd_context_params_default()
    mparams.use_gpu = False
    mparams.print_timings = False
    mparams.warmup = False
    mparams.n_threads = threads
    mparams.image_min_tokens, mparams.image_max_tokens = job.image_min_tokens, job.image_max_tokens
    mtmd = mtmd_cpp.mtmd_init_from_file(job.mmproj_file.encode(), model, mparams)
    if not mtmd:
        raise RuntimeError(f"llama.cpp's mtmd could not load {job.mmproj_file} beside {job.model_file}")
    if not mtmd_cpp.mtmd_support_vision(mtmd):
        raise RuntimeError(f"{job.mmproj_file} has no vision encoder")
    return llama, mtmd_cpp, model, context, mtmd


def _run_job(job: MtmdJob) -> dict[str, Any]:
    """In the child: every sample, greedy. Returns prompt tokens (text parts), new tokens and optional logits."""
    import ctypes

    import numpy as np
    from PIL import Image

    from vlmrl_pipeline.core.export.gguf import LlamaDecoder  # plain Python over the bindings (no torch)

    llama, mtmd_cpp, model, context, mtmd = _load(job)
    n_vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
    batch = llama.llama_batch_init(job.context_tokens, 0, 1)
    suppress = np.asarray([i for i in job.suppress_ids if 0 <= i < n_vocab], dtype=np.int64)
    stops = set(job.stop_ids)
    out: dict[str, Any] = {"new_tokens": [], "prompt_text_tokens": [], "image_tokens": [], "first_logits": []}
    try:
        for index, (prompt, image_path) in enumerate(zip(job.prompts, job.image_paths, strict=True)):
            llama.llama_memory_clear(llama.llama_get_memory(context), True)
            image = Image.open(image_path).convert("RGB")
            pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
            bitmap = mtmd_cpp.mtmd_bitmap_init(image.width, image.height,
                                               pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
            text = mtmd_cpp.mtmd_input_text()
            encoded = prompt.encode("utf-8")
            text.text, text.text_len, text.parse_special = encoded, len(encoded), True
            text.add_special = job.add_special
            chunks = mtmd_cpp.mtmd_input_chunks_init()
            decode = LlamaDecoder(context, batch, n_vocab, job.model_file)
            logits = None
            text_tokens: list[int] = []
            image_tokens = 0

            try:
                bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
                status = mtmd_cpp.mtmd_tokenize(mtmd, chunks, ctypes.byref(text), bitmaps, 1)
                if status != 0:
                    raise RuntimeError(f"mtmd_tokenize returned {status} on sample {index} (its prompt must hold "
                                       f"exactly one {MEDIA_MARKER})")
                for c in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                    chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, c)
                    if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                        n = ctypes.c_size_t()
                        pointer = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                        ids = [int(pointer[j]) for j in range(n.value)]
                        text_tokens += ids
                        if ids:
                            logits = decode(ids)
                    else:
                        image_tokens += int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk))
                        new_position = llama.llama_pos(0)
                        status = mtmd_cpp.mtmd_helper_eval_chunk_single(
                            mtmd, context, chunk, llama.llama_pos(decode.position), llama.llama_seq_id(0),
                            job.context_tokens, False, ctypes.byref(new_position))
                        if status != 0:
                            raise RuntimeError(f"mtmd could not evaluate the image of sample {index} ({status})")
                        decode.position = int(new_position.value)
            finally:
                mtmd_cpp.mtmd_input_chunks_free(chunks)
                mtmd_cpp.mtmd_bitmap_free(bitmap)
            if logits is None:
                raise RuntimeError(f"sample {index}'s prompt ends with its image: nothing to continue from")
            if index < job.logits_samples:
                out["first_logits"].append(logits.astype(np.float32))
            new: list[int] = []
            for _ in range(job.max_new_tokens):
                if suppress.size:  # what evaluation's generate suppresses (vision tokens)
                    logits[suppress] = -np.inf
                token = int(np.argmax(logits))
                if token in stops:
                    break
                new.append(token)
                if len(new) == job.max_new_tokens:
                    break
                logits = decode([token])
            out["new_tokens"].append(new)
            out["prompt_text_tokens"].append(text_tokens)
            out["image_tokens"].append(image_tokens)
    finally:
        llama.llama_batch_free(batch)
        from llama_cpp import mtmd_cpp as _m

        _m.mtmd_free(mtmd)
        llama.llama_free(context)
        llama.llama_model_free(model)
    return out


def runtime_version() -> str:
    """The llama.cpp runtime's version: ``llama-cpp-python <version>``."""
    from importlib.metadata import version

    return f"llama-cpp-python {version('llama_cpp_python')}"


@dataclass(frozen=True)
class MtmdResult:
    """What the child computed, per sample."""

    new_tokens: list[list[int]]
    prompt_text_tokens: list[list[int]]
    image_tokens: list[int]
    first_logits: Any  # numpy [logits_samples, vocab] float32, or None
    seconds: float
    weight_buffers: list[str] = field(default_factory=list)
    """The buffer types llama.cpp loaded the weights into (``CPU_Mapped``; ``AMX`` or ``CPU_REPACK`` when the
    extra buffer types took them), read from its load log."""
    preferred_buffers: list[str] = field(default_factory=list)
    """Extra buffer types llama.cpp tried for some weights and could not use for them."""


def buffer_types(log: str) -> tuple[list[str], list[str]]:
    """(weight buffer types, preferred-but-refused buffer types) from llama.cpp's model load log."""
    loaded = re.findall(r"load_tensors:\s+(\S+) model buffer size", log)
    preferred = re.findall(r"preferred buffer type (\w+)", log)
    return sorted(set(loaded)), sorted(set(preferred))


def run_gguf_multimodal(job: MtmdJob, timeout_s: float | None = None) -> MtmdResult:
    """Run ``job`` in a child process; raises a RuntimeError naming the GGUF file (and the signal, for a crash)."""
    import time

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="vlmrl-mtmd-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(asdict(job)))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "vlmrl_pipeline.core.export.mtmd", str(job_file), str(out_file)],
                              capture_output=True, text=True, timeout=timeout_s)
        seconds = time.perf_counter() - start
        if done.returncode != 0 or not out_file.exists():
            tail = (done.stderr or done.stdout).strip()[-1500:]
            if done.returncode < 0:
                name = signal.Signals(-done.returncode).name
                raise RuntimeError(f"llama.cpp crashed ({name}) running {Path(job.model_file).name} with "
                                   f"{Path(job.mmproj_file).name} (extra_buffer_types={job.extra_buffer_types}):\n"
                                   f"{tail}")
            raise RuntimeError(f"llama.cpp's multimodal run of {Path(job.model_file).name} failed "
                               f"(exit {done.returncode}):\n{tail}")
        payload = json.loads(out_file.read_text())
        logits_file = Path(tmp) / "first_logits.npy"
        first = np.load(logits_file) if logits_file.exists() else None
    loaded, preferred = buffer_types(done.stderr)
    return MtmdResult(payload["new_tokens"], payload["prompt_text_tokens"], payload["image_tokens"], first, seconds,
                      loaded, preferred)


def stop_token_ids(checkpoint: str | os.PathLike) -> list[int]:
    """The ids ``model.generate`` stops at for this checkpoint (its generation config's ``eos_token_id``), so
    llama.cpp's greedy loop ends where the other evaluations' does."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(str(checkpoint)).eos_token_id
    except OSError:  # no generation_config.json: transformers falls back to the model config's
        eos = json.loads((Path(checkpoint) / "config.json").read_text()).get("eos_token_id")
    return [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]


def image_token_limits(processor) -> tuple[int, int]:
    """(min, max) image tokens of a Qwen-VL image processor (its ``size`` bounds the pixels; one token per
    ``(patch_size * merge_size)^2`` of them), or ``(0, 0)`` for a processor without them (Gemma 3's fixed 896 px).

    mtmd's own Qwen-VL bounds (8..4096 tokens) differ from the checkpoint's: a 64 px demo image becomes 9 tokens
    in mtmd and 4 in transformers unless mtmd is given these."""
    image = getattr(processor, "image_processor", None)
    size, patch, merge = getattr(image, "size", None), getattr(image, "patch_size", None), \
        getattr(image, "merge_size", None)
    low = getattr(size, "shortest_edge", None) if size is not None else None
    high = getattr(size, "longest_edge", None) if size is not None else None
    if isinstance(size, dict):
        low, high = size.get("shortest_edge"), size.get("longest_edge")
    if not (low and high and patch and merge):
        return 0, 0
    area = (patch * merge) ** 2
    return max(1, low // area), max(1, high // area)


def expected_text_tokens(processor, rendered: str, image) -> tuple[list[int], int]:
    """The ids ``transformers`` feeds the model for a rendered prompt and its image with the image's expanded
    placeholder tokens removed (what mtmd's text chunks must hold for the two runtimes to see one prompt), and
    how many placeholder tokens the image took."""
    ids = processor(text=[rendered], images=[[image.convert("RGB")]], return_tensors="pt")["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    placeholders = {tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<image_soft_token>")
                    if t in tokenizer.get_vocab()}
    return [i for i in ids if i not in placeholders], sum(i in placeholders for i in ids)


@dataclass(frozen=True)
class GgufEvaluation:
    """A GGUF's completions on the evaluation rows, and how faithfully it saw the evaluation's prompts."""

    completions: list[str]
    new_tokens: list[list[int]]
    first_logits: Any
    prompt_tokens_identical: int
    """Samples whose mtmd text tokens equal ``transformers``' ids (image placeholders removed)."""
    image_tokens_identical: int
    """Samples whose image took as many tokens in mtmd as in ``transformers`` (the same resize)."""
    first_prompt_difference: dict[str, Any] | None
    image_tokens: list[int]
    seconds: float
    weight_buffers: list[str]


def evaluate_gguf(model_file: str | os.PathLike, mmproj_file: str | os.PathLike, processor,
                  prompts: Sequence[list[dict]], image_paths: Sequence[str], *, max_new_tokens: int,
                  stop_ids: Sequence[int], suppress_ids: Sequence[int] = (), logits_samples: int = 0,
                  extra_buffer_types: bool = False, timeout_s: float | None = None) -> GgufEvaluation:
    """Greedy completions of one GGUF with its mmproj on chat ``prompts`` (rendered by ``processor``'s chat
    template, as the other evaluations render them) and their images, decoded by ``processor``'s tokenizer as
    ``generate_completions`` decodes (special tokens skipped)."""
    from PIL import Image

    rendered = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    job = MtmdJob(model_file=str(model_file), mmproj_file=str(mmproj_file), prompts=[media_prompt(r) for r in rendered],
                  image_paths=[str(p) for p in image_paths], max_new_tokens=max_new_tokens,
                  stop_ids=list(stop_ids), suppress_ids=list(suppress_ids), logits_samples=logits_samples,
                  extra_buffer_types=extra_buffer_types)
    low, high = image_token_limits(processor)
    # transformers' processor tokenizes the rendered template with the tokenizer's special tokens added (a BOS
    # for Gemma, nothing for Qwen): llama.cpp adds its vocabulary's the same way when asked to.
    adds = bool(processor.tokenizer("", add_special_tokens=True)["input_ids"])
    job = MtmdJob(**{**asdict(job), "image_min_tokens": low, "image_max_tokens": high, "add_special": adds})
    result = run_gguf_multimodal(job, timeout_s=timeout_s)
    identical, same_image, first_difference = 0, 0, None
    for index, (text, path, got) in enumerate(zip(rendered, image_paths, result.prompt_text_tokens, strict=True)):
        with Image.open(path) as image:
            expected, image_tokens = expected_text_tokens(processor, text, image)
        same_image += int(image_tokens == result.image_tokens[index])
        if got == expected:
            identical += 1
        elif first_difference is None:
            at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                      min(len(got), len(expected)))
            first_difference = {"sample": index, "position": at, "llama_cpp": got[at:at + 8],
                                "transformers": expected[at:at + 8]}
    completions = [processor.tokenizer.decode(ids, skip_special_tokens=True) for ids in result.new_tokens]
    return GgufEvaluation(completions, result.new_tokens, result.first_logits, identical, same_image,
                          first_difference, result.image_tokens, result.seconds, result.weight_buffers)


def _child(job_file: str, out_file: str) -> None:
    import numpy as np

    job = MtmdJob(**json.loads(Path(job_file).read_text()))
    out = _run_job(job)
    first = out.pop("first_logits")
    if first:
        np.save(Path(out_file).parent / "first_logits.npy", np.stack(first))
    tmp = Path(out_file).with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, out_file)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
