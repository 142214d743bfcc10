"""Before training: will the export fit? The disk, host memory and converter support the export stages will need,
estimated from the base model's config, so a lineage that cannot be exported is refused before it trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.export.merge import bnb_quantization, merge_peak_bytes
from vlmrl_pipeline.core.export.settings import ExportSettings

_BYTES_PER_PARAMETER = {"float32": 4.0, "f32": 4.0, "bfloat16": 2.0, "float16": 2.0, "f16": 2.0, "bf16": 2.0,
                        "q8_0": 34 / 32, "q4_k_m": 0.6}
"""Stored size per parameter: q8_0 keeps 32 int8 values + one f16 scale per block; q4_k_m averages ~4.8 bits."""


def _vision_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("vision_config") or {}


def converter_architectures(converter: str | os.PathLike) -> dict[str, set[str]]:
    """Hugging Face architecture names llama.cpp's converter registers, each with the kinds it writes: ``text``
    (the language model) and/or ``mmproj`` (vision encoder + projector). Read from the converter's own sources, so
    the answer is that converter version's."""
    import re

    root = Path(converter).parent
    sources = [Path(converter), *sorted((root / "conversion").rglob("*.py"))]
    # A registration, then any further decorators or comments, then the class and its base.
    pattern = re.compile(r"@ModelBase\.register\(([^)]*)\)(?:\s*(?:@[^\n]*|#[^\n]*))*\s*class\s+\w+\(([^)]*)\)")
    found: dict[str, set[str]] = {}
    for source in sources:
        if not source.is_file():
            continue
        for names, bases in pattern.findall(source.read_text(errors="replace")):
            kind = "mmproj" if "Mmproj" in bases or "Vision" in bases else "text"
            for name in re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", names):
                found.setdefault(name, set()).add(kind)
    return found


def export_requirements(config: dict[str, Any], settings: ExportSettings, num_parameters: int) -> dict[str, Any]:
    """Disk and host memory the export stages will need for a model of this config, estimated before training.

    Disk: the merged checkpoint, Unsloth's 4-bit one (with ``merged_4bit``), every GGUF type (q4_k_m also needs
    its f16 source while quantizing) and the vision projector. Host memory: the merge on the CPU
    (:func:`merge_peak_bytes`); on a GPU with room the merge runs there and needs about one saved shard of host
    memory instead, so both figures are given.
    """
    vision = _vision_config(config)
    vision_share = 0.0
    if vision:
        width = int(vision.get("hidden_size", 0))
        depth = int(vision.get("depth", vision.get("num_hidden_layers", 0)))
        inner = int(vision.get("intermediate_size", 4 * width))
        vision_share = min(0.5, depth * (4 * width * width + 2 * width * inner) / max(num_parameters, 1))
    vision_parameters = int(num_parameters * vision_share)
    merged = int(num_parameters * _BYTES_PER_PARAMETER[settings.merged_dtype])
    gguf = {t: int((num_parameters - vision_parameters) * _BYTES_PER_PARAMETER[t]) for t in settings.gguf_types}
    if "q4_k_m" in gguf and "f16" not in gguf:
        gguf["f16 (scratch for q4_k_m)"] = int((num_parameters - vision_parameters) * 2)
    mmproj = int(vision_parameters * _BYTES_PER_PARAMETER[settings.mmproj_type]) if vision else 0
    merged_4bit = int(num_parameters * 0.6) if settings.merged_4bit else 0
    prequantized = bnb_quantization(config) is not None
    return {
        "num_parameters": num_parameters,
        "disk_bytes": merged + merged_4bit + sum(gguf.values()) + mmproj,
        "merged_bytes": merged,
        "gguf_bytes": gguf,
        "mmproj_bytes": mmproj,
        "merge_host_bytes_on_cpu": merge_peak_bytes(num_parameters, settings.merged_dtype, prequantized),
        "prequantized_4bit": prequantized,
    }


def export_problems(config: dict[str, Any], settings: ExportSettings, data_dir: str | os.PathLike,
                    converter: str | os.PathLike | None, num_parameters: int, *, free_disk_bytes: int | None = None,
                    host_memory_bytes: int | None = None, gpu_free_bytes: int | None = None,
                    gguf_reader_installed: bool | None = None) -> list[str]:
    """What would make the export stages fail after training, found before it: an architecture llama.cpp's
    converter does not know, the ``gguf`` package missing, too little disk for the files, too little host memory
    for the merge. Each problem names the setting or package to change. Empty: the export should fit."""
    import importlib.util
    import shutil

    from vlmrl_pipeline.core.memory import host_memory_total_bytes

    problems: list[str] = []
    need = export_requirements(config, settings, num_parameters)
    architecture = (config.get("architectures") or ["?"])[0]
    if converter is not None:
        known = converter_architectures(converter)
        kinds = known.get(architecture, set())
        if "text" not in kinds:
            problems.append(f"llama.cpp's converter ({converter}) has no language-model conversion for "
                            f"{architecture}: gguf_model would fail; materialize the lineage without gguf_model")
        if _vision_config(config) and "mmproj" not in kinds:
            problems.append(f"llama.cpp's converter has no vision-projector (mmproj) conversion for {architecture}")
        # gguf_model reads every file it wrote back (header, tensors, tokenizer) with the gguf package; an
        # environment assembled by hand can lack it (a GPU-machine rehearsal lost its lineage to that at the end).
        if gguf_reader_installed is None:
            gguf_reader_installed = importlib.util.find_spec("gguf") is not None
        if not gguf_reader_installed:
            problems.append("gguf_model reads each GGUF back with the gguf package (gguf==0.19.0, a dependency of "
                            "this project), which is not installed: pip install -e . (or the gguf wheel)")
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    free = free_disk_bytes if free_disk_bytes is not None else shutil.disk_usage(folder).free
    if need["disk_bytes"] * 1.1 > free:
        problems.append(f"the export writes about {need['disk_bytes'] / 1e9:.1f} GB (merged {settings.merged_dtype} "
                        f"{need['merged_bytes'] / 1e9:.1f} GB, GGUF {list(settings.gguf_types)}, mmproj) but "
                        f"{folder} has {free / 1e9:.1f} GB free: free space, or drop gguf_types / merged_4bit")
    memory = host_memory_bytes if host_memory_bytes is not None else host_memory_total_bytes()
    merge_bytes = need["merge_host_bytes_on_cpu"]
    fits_gpu = gpu_free_bytes is not None and merge_bytes * 1.15 < gpu_free_bytes
    if memory and not fits_gpu and merge_bytes > 0.9 * memory:
        problems.append(f"merging in {settings.merged_dtype} on the CPU needs about {merge_bytes / 1e9:.1f} GB of "
                        f"host memory and this machine has {memory / 1e9:.1f} GB: set merged_dtype to bfloat16, or "
                        "run merged_model on a machine with more memory or a GPU with room for the model")
    return problems
