"""Rehearse a real profile's whole lineage on a stand-in checkpoint, stage by stage, before paying for a real run.

    vlmrl-standin qwen3vl-8b /scratch/standins/qwen3vl-8b
    vlmrl-rehearse qwen3vl-8b --model /scratch/standins/qwen3vl-8b --work /scratch/rehearsal/qwen3vl-8b

The profile keeps everything (model class and packaging, backend, LoRA, optimiser, loss, export settings) but
loads the stand-in and a local data copy and shortens lengths and counts (``core.standin.rehearsal.RehearsalLengths``).
Each stage is a Dagster materialization of the real assets, with their checks, in a persistent instance under
``--work``, so the stages can run in separate processes (or machines' sessions) and each records its wall time
and peak host and GPU memory in ``rehearsal.json``. A stage already done is skipped unless ``--redo`` names it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

STAGES = {
    "data": ["mathvista_filtered", "resized_images", "base_model"],
    "baseline": ["baseline_completions", "baseline_records"],
    "train": ["lora_adapter"],
    "after": ["after_completions", "after_records"],
    "merge": ["merged_model"],
    "gguf": ["gguf_model"],
    # The shipped artifacts on the held-out rows (each GGUF through mtmd with the image, compared token by token
    # with the merged checkpoint: random weights make the answers meaningless), then the report with them all.
    "shipped": ["merged_records", "gguf_records", "eval_diff_report"],
}
RESULTS = "rehearsal.json"


def _prepare_data(profile, work: Path, mathvista_json: str | None, num_rows: int) -> Path:
    from vlmrl_pipeline.core.standin.rehearsal import write_geo3k_layout, write_mathvista_layout

    folder = work / "source"
    if not folder.exists():
        tmp = work / ".source-tmp"
        if profile.data.dataset_format == "rlinf":
            write_geo3k_layout(tmp, num_rows=num_rows, split=profile.data.split)
        else:
            write_mathvista_layout(tmp, testmini_json=mathvista_json, num_rows=num_rows)
        os.replace(tmp, folder)
    return folder


def run_stages(profile_name: str, model_dir: str, work: str | os.PathLike, stages: list[str],
               mathvista_json: str | None = None, num_rows: int = 48, redo: tuple[str, ...] = (),
               log=print, *, lengths=None, export_overrides: dict | None = None,
               model_overrides: dict | None = None) -> dict:
    """Materialize ``stages`` of ``profile_name``'s lineage on the stand-in at ``model_dir``; returns the
    accumulated results (also written to ``<work>/rehearsal.json``). Raises if a stage or a check fails.
    ``export_overrides`` / ``model_overrides`` replace export or model settings (e.g. ``merged_4bit=False`` on a
    machine without Unsloth)."""
    from dataclasses import replace

    from dagster import AssetKey, DagsterInstance, materialize

    from vlmrl_pipeline.core.memory import peak_memory
    from vlmrl_pipeline.core.profiles import get_profile
    from vlmrl_pipeline.core.standin.rehearsal import RehearsalLengths, rehearsal_profile
    from vlmrl_pipeline.definitions import all_assets, all_checks
    from vlmrl_pipeline.resources import resources_for_profile

    work = Path(work)
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    lengths = lengths or RehearsalLengths()
    base = get_profile(profile_name)
    if export_overrides:
        base = replace(base, export=replace(base.export, **export_overrides))
    if model_overrides:
        base = replace(base, model=replace(base.model, **model_overrides))
    source = _prepare_data(base, work, mathvista_json, num_rows)
    profile = rehearsal_profile(base, model_dir, source, lengths)
    results_file = work / RESULTS
    results = json.loads(results_file.read_text()) if results_file.exists() else {
        "profile": profile_name, "model_dir": str(model_dir), "source": str(source),
        "shortened": {k: getattr(lengths, k) for k in lengths.__dataclass_fields__}, "stages": {}}
    instance = DagsterInstance.local_temp(str(work / "dagster_home")) if not os.environ.get("DAGSTER_HOME") \
        else DagsterInstance.get()
    resources = resources_for_profile(profile, str(work / "data"))
    for stage in stages:
        if stage in results["stages"] and results["stages"][stage].get("success") and stage not in redo:
            log(f"[rehearse] {stage}: done before, skipped")
            continue
        selection = [AssetKey(name) for name in STAGES[stage]]
        log(f"[rehearse] {stage}: materializing {STAGES[stage]}")
        start = time.perf_counter()
        with peak_memory(interval_s=0.5) as usage:
            result = materialize([*all_assets, *all_checks], selection=selection, resources=resources,
                                 instance=instance, raise_on_error=False)
        entry = {"success": result.success, "wall_s": round(time.perf_counter() - start, 1), **usage,
                 "assets": {}, "checks": {}}
        for name in STAGES[stage]:
            for materialization in result.asset_materializations_for_node(name):
                entry["assets"][name] = {k: _plain(v.value) for k, v in materialization.metadata.items()
                                         if not k.endswith(("_curves", "_plot", "sample_table"))}
        for evaluation in result.get_asset_check_evaluations():
            entry["checks"][evaluation.check_name] = evaluation.passed
        results["stages"][stage] = entry
        tmp = results_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str))
        os.replace(tmp, results_file)
        log(f"[rehearse] {stage}: {'ok' if result.success else 'FAILED'} in {entry['wall_s']} s, host peak "
            f"{usage.get('host_peak_gb')} GB, GPU peak {usage.get('gpu_peak_used_gb', 'n/a')} GB; checks "
            f"{entry['checks']}")
        if not result.success or not all(entry["checks"].values()):
            failures = [e for e in result.all_events if e.is_failure]
            detail = failures[0].event_specific_data.error.to_string() if failures else "a blocking check failed"
            raise RuntimeError(f"rehearsal stage {stage} of {profile_name} failed: {detail[-3000:]}")
    return results


def _export_overrides(args) -> dict | None:
    overrides: dict = {}
    if args.no_merged_4bit:
        overrides["merged_4bit"] = False
    if args.gguf_types:
        overrides["gguf_types"] = tuple(t for t in args.gguf_types.split(",") if t)
    return overrides or None


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)[:500]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="a real profile: qwen3vl-8b, qwen3vl-8b-paper, qwen3vl-8b-dapo, qwen25vl-7b, "
                                        "gemma3-4b, geo3k")
    parser.add_argument("--model", required=True, help="the stand-in checkpoint folder (vlmrl-standin)")
    parser.add_argument("--work", required=True, help="folder for the data copy, artifacts and Dagster instance")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {list(STAGES)}")
    parser.add_argument("--mathvista-json", default=None,
                        help="MathVista's own testmini.json (query.json beside it) for real prompt texts")
    parser.add_argument("--rows", type=int, default=48, help="rows of the local data copy")
    parser.add_argument("--redo", default="", help="stages to run again even if done")
    parser.add_argument("--no-merged-4bit", action="store_true",
                        help="skip Unsloth's merged 4-bit export (it needs Unsloth and a CUDA GPU)")
    parser.add_argument("--gguf-types", default=None,
                        help="comma-separated GGUF types instead of the profile's (fewer files: less time and disk)")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {list(STAGES)}")
    try:
        run_stages(args.profile, args.model, args.work, stages, args.mathvista_json, args.rows,
                   tuple(s for s in args.redo.split(",") if s),
                   export_overrides=_export_overrides(args))
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
