"""Checks a step runs before its expensive work, so that a setting that cannot work fails at once."""

from vlmrl_pipeline.core.export.merge import count_parameters, read_checkpoint_config
from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools
from vlmrl_pipeline.core.model.loading import unsloth_available
from vlmrl_pipeline.resources import ArtifactStore, ExportSettingsResource


def export_preflight(artifacts: ArtifactStore, export_settings: ExportSettingsResource, load_path: str,
                     revision: str | None) -> dict:
    """Refuse, before training, a lineage whose export cannot succeed (see ``core.export.preflight.export_problems``):
    an unknown architecture for llama.cpp's converter, too little disk, too little host memory to merge.
    Returns the estimate, for the training step's metadata."""
    import torch

    from vlmrl_pipeline.core.export.preflight import export_problems, export_requirements

    settings = export_settings.to_core()
    config = read_checkpoint_config(load_path, revision)
    parameters = count_parameters(config)
    try:
        converter = llama_cpp_tools(fetch=False).converter
    except Exception as exc:  # not fetched yet: gguf_model would need the network at the end of the run
        raise RuntimeError(f"llama.cpp's converter is not available offline ({exc}): run vlmrl-fetch-tools "
                           "before training, so that gguf_model cannot fail after it") from exc
    gpu_free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    problems = export_problems(config, settings, artifacts.root, converter, parameters, gpu_free_bytes=gpu_free)
    if settings.merged_4bit and not unsloth_available():
        problems.append("merged_4bit writes Unsloth's merged 4-bit checkpoint, which needs Unsloth and a CUDA GPU "
                        "(pip install -e '.[gpu]'); set merged_4bit=False on this machine")
    if problems:
        raise RuntimeError("the export after training would fail, so training was not started: "
                           + "; ".join(problems))
    return export_requirements(config, settings, parameters)
