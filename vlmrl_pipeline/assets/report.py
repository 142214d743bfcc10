"""Report stage: what RL changed, per metric and per sample."""

import pandas as pd
from dagster import MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.evaluation import after_records, baseline_records
from vlmrl_pipeline.core.evaluation import diff_records, report_markdown, write_json_atomic
from vlmrl_pipeline.core.plots import before_after_png, png_markdown
from vlmrl_pipeline.resources import ArtifactStore


@asset(group_name="report", deps=[baseline_records, after_records], kinds={"markdown"}, code_version="2")
def eval_diff_report(artifacts: ArtifactStore) -> MaterializeResult:
    """Accuracy (strict, numeric and MathVista's rules) and format compliance before vs after RL, how sure each
    change is (paired bootstrap 95% interval, exact McNemar p-value), and every sample that flipped.

    Written as ``report.json`` (machine-readable), ``report.md`` and ``before_after.png``. The headline numbers
    are float metadata, so the Dagster UI plots them across materializations.
    """
    baseline = pd.read_parquet(artifacts.asset_dir("baseline_records") / "baseline_records.parquet")
    after = pd.read_parquet(artifacts.asset_dir("after_records") / "after_records.parquet")
    diff = diff_records(baseline, after)
    markdown = report_markdown(diff)
    chart = before_after_png(diff["headline"], diff["comparison"])
    with artifacts.staging("eval_diff_report") as tmp:
        write_json_atomic(tmp / "report.json", diff)
        (tmp / "report.md").write_text(markdown + "\n" + png_markdown(chart, "before/after") + "\n")
        (tmp / "before_after.png").write_bytes(chart)
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(artifacts.asset_dir("eval_diff_report") / "report.md")),
            **{k: round(float(v), 4) for k, v in diff["headline"].items()},
            **{f"{key}_{field}": round(float(c[field]), 4)
               for key, c in diff["comparison"].items() for field in ("difference", "ci_low", "ci_high", "p_value")},
            "num_samples": diff["num_samples"],
            "num_flipped": len(diff["flipped_samples"]),
            "report": MetadataValue.md(markdown),
            "before_after": MetadataValue.md(png_markdown(chart, "before/after")),
        }
    )
