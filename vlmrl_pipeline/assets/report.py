"""Report stage: what RL changed, per metric and per sample."""

import json

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.evaluation import after_records, baseline_records, records_file
from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.assets.provenance import LINEAGE_KEYS
from vlmrl_pipeline.assets.shipped import (
    GGUF_RECORDS_SUMMARY,
    MERGED_NAME,
    gguf_name,
    gguf_records,
    gguf_records_file,
    merged_records,
)
from vlmrl_pipeline.core.environment import environment_differences
from vlmrl_pipeline.core.evaluation import diff_records, report_markdown
from vlmrl_pipeline.core.files import write_json_atomic
from vlmrl_pipeline.core.plots import before_after_png, png_markdown
from vlmrl_pipeline.core.report_html import render_report_html, thumbnail_data_uri
from vlmrl_pipeline.core.rewards import REWARD_VERSION
from vlmrl_pipeline.core.samples import SPLIT_EVAL, read_manifest, split_rows
from vlmrl_pipeline.core.shipped import shipped_markdown, shipped_metadata, shipped_rows
from vlmrl_pipeline.execution import CPU_TAGS
from vlmrl_pipeline.resources import NO_OP_CONFIG, ArtifactStore, ExportSettingsResource


@asset(config_schema=NO_OP_CONFIG,
       group_name="report", deps=[baseline_records, after_records, merged_records, gguf_records],
       kinds={"markdown"}, code_version=f"report-3+rewards-{REWARD_VERSION}", tags=CPU_TAGS)
def eval_diff_report(context: AssetExecutionContext, artifacts: ArtifactStore,
                     export_settings: ExportSettingsResource) -> MaterializeResult:
    """Accuracy (strict, numeric and MathVista's rules) and format compliance before vs after RL, how sure each
    change is (paired bootstrap 95% interval, exact McNemar p-value), and every sample that flipped.

    Written as ``report.json`` (machine-readable), ``report.md``, ``before_after.png`` and ``report.html`` (a
    self-contained page with image thumbnails, filterable to the samples that flipped; linked as ``report_page``).
    The headline numbers are float metadata, so the Dagster UI plots them across materializations.
    """
    artifacts.verify(baseline_records, after_records, resized_images, log=context.log.warning)
    baseline = pd.read_parquet(records_file(artifacts, baseline_records, ".parquet"))
    after = pd.read_parquet(records_file(artifacts, after_records, ".parquet"))
    diff = diff_records(baseline, after)
    # Lineage of the "after" numbers (the baseline's differs only by having no adapter).
    after_info = json.loads(records_file(artifacts, after_records, ".json").read_text())
    baseline_info = json.loads(records_file(artifacts, baseline_records, ".json").read_text())
    diff["provenance"] = {k: after_info.get(k) for k in LINEAGE_KEYS}
    # Generated where? A package or GPU change between the two evaluations moves the numbers too.
    diff["environment"] = {"before": baseline_info.get("environment"), "after": after_info.get("environment"),
                           "differences": environment_differences(baseline_info.get("environment"),
                                                                  after_info.get("environment"))}
    tolerance = export_settings.to_core().shipped_accuracy_tolerance
    shipped, reasons = _shipped_records(artifacts, after_info.get("adapter_sha256"), context.log)
    diff["shipped"] = shipped_rows(after, shipped, tolerance, {k: {"reason": v} for k, v in reasons.items()})
    # Which training step the evaluated adapter is (keep_checkpoint), chosen without the held-out rows.
    diff["kept_checkpoint"] = after_info.get("kept_checkpoint")
    kept_line = (f"\nAdapter evaluated: {diff['kept_checkpoint']}. The held-out rows played no part in "
                 "training or in this choice.\n" if diff["kept_checkpoint"] else "")
    markdown = report_markdown(diff) + kept_line + "\n" + shipped_markdown(diff["shipped"], tolerance)
    chart = before_after_png(diff["headline"], diff["comparison"])
    with artifacts.staging(context.asset_key) as tmp:
        write_json_atomic(tmp / "report.json", diff)
        (tmp / "report.md").write_text(markdown + "\n" + png_markdown(chart, "before/after") + "\n")
        (tmp / "before_after.png").write_bytes(chart)
        # The page people open: headline with intervals, plot, per-sample table with thumbnails (self-contained).
        eval_rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL)
        thumbnails = {str(pid): thumbnail_data_uri(path)
                      for pid, path in zip(eval_rows["pid"], eval_rows["image_path"])}
        (tmp / "report.html").write_text(render_report_html(diff, baseline, after, thumbnails, chart), encoding="utf-8")
    folder = artifacts.asset_dir(context.asset_key)
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            "path": MetadataValue.path(str(folder / "report.md")),
            # Over http: the UI is an http page, and browsers do not follow its file:// links.
            "report_page": MetadataValue.url(
                f"{artifacts.report_server_url.rstrip('/')}{artifacts.report_page_path}" if artifacts.report_server_url
                else (folder / "report.html").resolve().as_uri()),
            "report_file": MetadataValue.path(str(folder / "report.html")),
            **{k: round(float(v), 4) for k, v in diff["headline"].items()},
            **{f"{key}_{field}": round(float(c[field]), 4)
               for key, c in diff["comparison"].items() for field in ("difference", "ci_low", "ci_high", "p_value")},
            **{k: str(v) for k, v in diff["provenance"].items()},
            # Each shipped artifact's rates and change against the adapter, as floats the UI plots across runs.
            **shipped_metadata(diff["shipped"]),
            "shipped": MetadataValue.md(shipped_markdown(diff["shipped"], tolerance)),
            "kept_checkpoint": str(diff["kept_checkpoint"] or "unrecorded"),
            "num_samples": diff["num_samples"],
            "num_flipped": len(diff["flipped_samples"]),
            "evaluation_environments": "; ".join(diff["environment"]["differences"]) or "the same",
            "report": MetadataValue.md(markdown),
            "before_after": MetadataValue.md(png_markdown(chart, "before/after")),
        }
    )


def _shipped_records(artifacts: ArtifactStore, adapter_sha256: str | None,
                     log) -> tuple[dict[str, pd.DataFrame | None], dict[str, str]]:
    """The merged checkpoint's and each GGUF type's records, None (and why, in the second dict) for one not
    evaluated yet or evaluated against another adapter than the one ``after_records`` measured (a row comparing
    two adapters would mislead)."""
    found: dict[str, pd.DataFrame | None] = {}
    reasons: dict[str, str] = {}

    def read(name: str, parquet, info_file) -> None:
        if not parquet.exists() or not info_file.exists():
            found[name], reasons[name] = None, "not materialized yet"
            return
        info = json.loads(info_file.read_text())
        if info.get("adapter_sha256") != adapter_sha256:
            log.warning(f"{name}'s records come from adapter {info.get('adapter_sha256')}, not {adapter_sha256}: "
                        "left out of the report until they are materialized again")
            found[name], reasons[name] = None, "evaluated another adapter: materialize it again"
            return
        found[name] = pd.read_parquet(parquet)

    read(MERGED_NAME, records_file(artifacts, merged_records, ".parquet"),
         records_file(artifacts, merged_records, ".json"))
    summary_file = artifacts.asset_dir(gguf_records) / GGUF_RECORDS_SUMMARY
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"types": {}}
    for gguf_type in summary["types"]:
        parquet = gguf_records_file(artifacts, gguf_type)
        read(gguf_name(gguf_type), parquet, parquet.with_suffix(".json"))
    if not summary["types"]:
        found["gguf"], reasons["gguf"] = None, summary.get("not_evaluated", "not materialized yet")
    return found, reasons
