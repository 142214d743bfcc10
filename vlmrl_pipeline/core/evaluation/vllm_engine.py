"""Evaluation through vLLM (``GenerationSettings.engine == "vllm"``): greedy, batched by vLLM's scheduler.

vLLM serves 16-bit weights here. A base stored in 4-bit (Unsloth's ``-bnb-4bit`` ids) is dequantized into a
16-bit folder first, and the trained adapter is merged in (``core.export.merge.merge_adapter_to_checkpoint``), so the
baseline and the after evaluation run the same engine on weights that equal what transformers computes with
(bitsandbytes also dequantizes to 16-bit before every matmul). vLLM is imported only when generating.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vlmrl_pipeline.core.evaluation.generation import GenerationSettings
from vlmrl_pipeline.core.model.loading import vllm_available


def vllm_problems(setting: str) -> list[str]:
    """Why vLLM cannot run here (empty when it can), naming ``setting``: no CUDA GPU, or vLLM not installed."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(f"{setting} needs a CUDA GPU (vLLM does not run on CPU here)")
    if not vllm_available():
        problems.append(f"{setting} needs vLLM, which is not installed: pip install -e '.[gpu,vllm]'")
    return problems


def needs_serving_copy(base_model_path: str, adapter_dir: str | os.PathLike | None,
                       revision: str | None = None) -> bool:
    """True when vLLM cannot load ``base_model_path`` as it is: an adapter to merge, or a 4-bit base."""
    from vlmrl_pipeline.core.export.merge import bnb_quantization, read_checkpoint_config

    return adapter_dir is not None or bnb_quantization(read_checkpoint_config(base_model_path, revision)) is not None


def serving_checkpoint(base_model_path: str, adapter_dir: str | os.PathLike | None, scratch_dir: str | os.PathLike,
                       dtype: str = "bfloat16", revision: str | None = None) -> str:
    """A folder (or hub id) vLLM can load for base (+ adapter): the base itself when it is 16-bit and there is no
    adapter, else a 16-bit merge written under ``scratch_dir`` (the caller deletes it after generating)."""
    from vlmrl_pipeline.core.export.merge import merge_adapter_to_checkpoint

    if not needs_serving_copy(base_model_path, adapter_dir, revision):
        return base_model_path
    out = Path(scratch_dir) / "vllm-checkpoint"
    return str(merge_adapter_to_checkpoint(base_model_path, adapter_dir, out, dtype=dtype, revision=revision))


def greedy_sampling_params(settings: GenerationSettings, suppressed: dict[int, float]) -> dict[str, Any]:
    """``SamplingParams`` arguments matching :func:`core.evaluation.generation.generate_completions`: greedy unless
    ``do_sample``, ``max_new_tokens`` new tokens, the vision special tokens suppressed.

    >>> greedy_sampling_params(GenerationSettings(max_new_tokens=5), {7: -100.0})["temperature"]
    0.0
    """
    params: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "skip_special_tokens": True,
                              "logit_bias": dict(suppressed) or None}
    if settings.do_sample:
        params.update(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
    else:
        params.update(temperature=0.0)
    return params


def vllm_prompts(processor, prompts: Sequence[list[dict]], images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """vLLM inputs: the chat template's text (the same string ``model.generate`` is given) and its image."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    return [{"prompt": processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
             "multi_modal_data": {"image": image.convert("RGB")}} for p, image in zip(prompts, images)]


def start_engine(model: str, settings: GenerationSettings, max_model_len: int, dtype: str = "bfloat16",
                 enable_lora: bool = False, max_lora_rank: int = 16):
    """A vLLM ``LLM`` for ``model`` with one image per prompt, sized by ``settings``."""
    from vllm import LLM

    kwargs: dict[str, Any] = {}
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
    return LLM(
        model=model, dtype=dtype, seed=settings.seed, max_model_len=max_model_len,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization, enforce_eager=settings.vllm_enforce_eager,
        max_num_seqs=settings.batch_size, limit_mm_per_prompt={"image": 1}, **kwargs,
    )


def stop_engine(llm) -> None:
    """Free the engine's GPU memory, so a following step (or the next engine) has the GPU."""
    import torch

    engine = getattr(llm, "llm_engine", None)
    shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
    if callable(shutdown):
        shutdown()
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_with_vllm(
    llm,
    processor,
    prompts: Sequence[list[dict]],
    images: Sequence[Image.Image],
    settings: GenerationSettings,
    progress: Callable[[int, int], None] | None = None,
    lora_request=None,
) -> tuple[list[str], list[int]]:
    """One completion per (chat prompt, image), in order, from a running engine. Returns ``(texts, new token
    counts)``."""
    from vllm import SamplingParams

    from vlmrl_pipeline.core.model.loading import suppressed_token_kwargs

    suppressed = suppressed_token_kwargs(processor, "vllm").get("logit_bias", {})
    params = SamplingParams(**greedy_sampling_params(settings, suppressed))
    outputs = llm.generate(vllm_prompts(processor, prompts, images), params, use_tqdm=False,
                           lora_request=lora_request)
    if progress is not None:
        progress(len(outputs), len(prompts))
    return [o.outputs[0].text for o in outputs], [len(o.outputs[0].token_ids) for o in outputs]


def generate_completions_vllm(
    model_path: str,
    processor,
    prompts: Sequence[list[dict]],
    images: Sequence[Image.Image],
    settings: GenerationSettings,
    max_model_len: int,
    *,
    adapter_dir: str | os.PathLike | None = None,
    scratch_dir: str | os.PathLike,
    dtype: str = "bfloat16",
    revision: str | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Greedy completions of base (+ adapter) through vLLM: make the 16-bit serving copy if needed, start the
    engine, generate, stop it. Returns ``(completions, info)`` where ``info`` says what vLLM served."""
    import shutil
    import time

    problems = vllm_problems("eval_settings.engine='vllm'")
    if problems:
        raise RuntimeError("; ".join(problems))
    start = time.perf_counter()
    served = serving_checkpoint(model_path, adapter_dir, scratch_dir, dtype=dtype, revision=revision)
    prepared = time.perf_counter()
    try:
        llm = start_engine(served, settings, max_model_len, dtype=dtype)
        started = time.perf_counter()
        try:
            texts, counts = generate_with_vllm(llm, processor, prompts, images, settings)
            done = time.perf_counter()
        finally:
            stop_engine(llm)
    finally:
        if served != model_path:
            shutil.rmtree(Path(served), ignore_errors=True)
    import vllm

    return texts, {
        "engine": "vllm", "vllm_version": vllm.__version__, "served": "merged 16-bit copy" if served != model_path
        else "base as stored", "dtype": dtype, "prepare_seconds": round(prepared - start, 2),
        "engine_start_seconds": round(started - prepared, 2), "decode_seconds": round(done - started, 2),
        "new_tokens": int(sum(counts)),
    }


def generate_in_subprocess(
    model_path: str,
    prompts: Sequence[list[dict]],
    image_paths: Sequence[str],
    settings: GenerationSettings,
    max_model_len: int,
    *,
    adapter_dir: str | os.PathLike | None = None,
    scratch_dir: str | os.PathLike,
    dtype: str = "bfloat16",
    revision: str | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """:func:`generate_completions_vllm` in a child process, which exits when done.

    A vLLM engine does not give all of its GPU memory back inside a process, and its engine-core shutdown can
    signal the process that started it (a Dagster step then reads as interrupted); a child that exits returns every
    byte and keeps the step's process clean, as training does. Refuses at once where vLLM cannot run."""
    import json
    import subprocess
    import sys
    from dataclasses import asdict

    problems = vllm_problems("eval_settings.engine='vllm'")
    if problems:
        raise RuntimeError("; ".join(problems))
    scratch = Path(scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    job, out = scratch / "vllm_job.json", scratch / "vllm_result.json"
    job.write_text(json.dumps({
        "model_path": model_path, "prompts": list(prompts), "image_paths": [str(p) for p in image_paths],
        "settings": asdict(settings), "max_model_len": max_model_len, "adapter_dir": str(adapter_dir) if adapter_dir
        else None, "scratch_dir": str(scratch), "dtype": dtype, "revision": revision,
    }))
    out.unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": package_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.run([sys.executable, "-m", "vlmrl_pipeline.core.evaluation.vllm_engine", str(job), str(out)],
                           env=env, capture_output=True, text=True)
    if child.returncode != 0 or not out.exists():
        tail = (child.stderr or child.stdout or "")[-3000:]
        raise RuntimeError(f"vLLM generation failed (exit {child.returncode}): {tail}")
    result = json.loads(out.read_text())
    return result["completions"], result["info"]


def main(argv: Sequence[str] | None = None) -> None:
    """Child-process entry of :func:`generate_in_subprocess`:
    ``python -m vlmrl_pipeline.core.evaluation.vllm_engine JOB OUT``."""
    import json
    import sys

    from vlmrl_pipeline.core.atomic import atomic_file
    from vlmrl_pipeline.core.model.loading import load_processor

    job_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    job = json.loads(Path(job_path).read_text())
    processor = load_processor(job["model_path"], revision=job["revision"])
    images = []
    for path in job["image_paths"]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    completions, info = generate_completions_vllm(
        job["model_path"], processor, job["prompts"], images, GenerationSettings(**job["settings"]),
        job["max_model_len"], adapter_dir=job["adapter_dir"], scratch_dir=job["scratch_dir"], dtype=job["dtype"],
        revision=job["revision"])
    with atomic_file(out_path) as tmp:
        tmp.write_text(json.dumps({"completions": completions, "info": info}))
    # vLLM's engine threads can keep the interpreter alive after the work is done; the result is written.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
