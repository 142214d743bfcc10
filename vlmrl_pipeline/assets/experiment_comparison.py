"""The experiments side by side: the main location's report beside every declared experiment's."""

import json
from collections.abc import Sequence

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.assets.report import eval_diff_report
from vlmrl_pipeline.core.evaluation.plots import experiments_png, png_markdown
from vlmrl_pipeline.core.experiment_specs import comparison_markdown, comparison_rows, experiment_dir
from vlmrl_pipeline.core.files import write_json_atomic
from vlmrl_pipeline.execution import CPU_TAGS
from vlmrl_pipeline.resources import NO_OP_CONFIG, ArtifactStore, asset_folder

REPORT_NAME = "report.json"


def build_experiment_comparison(main_name: str, experiment_names: Sequence[str],
                                file_problem: str | None = None) -> AssetsDefinition:
    """The ``experiment_comparison`` asset of the main location, downstream of its own report and of each
    experiment's (``<name>/eval_diff_report``, served by the experiment's location), so it turns stale when any
    of them changes. ``file_problem``: why the experiments file is malformed (``core.experiment_specs
    .declared_experiments``); the comparison then still runs, says so in its run log and metadata."""

    @asset(config_schema=NO_OP_CONFIG, name="experiment_comparison", group_name="report", kinds={"markdown"},
           deps=[eval_diff_report, *(eval_diff_report.key.with_prefix(name) for name in experiment_names)],
           code_version="comparison-1", tags=CPU_TAGS)
    def experiment_comparison(context: AssetExecutionContext, artifacts: ArtifactStore) -> MaterializeResult:
        """Accuracy (strict and MathVista's), format compliance before and after RL, and the accuracy change's
        95% interval, for this location's lineage and every experiment declared in ``experiments.yaml``, as one
        table and one chart (``comparison.{json,md,png}``). An experiment not materialized yet is a row that
        says so."""
        if file_problem:
            context.log.warning(f"experiments file not used: {file_problem}")
        artifacts.verify(eval_diff_report, log=context.log.warning)
        own = artifacts.asset_dir(eval_diff_report) / REPORT_NAME
        if not own.is_file():
            raise FileNotFoundError(f"no report at {own}: materialize eval_diff_report first")
        reports: dict[str, dict | None] = {main_name: json.loads(own.read_text())}
        for name in experiment_names:
            path = experiment_dir(artifacts.root, name) / asset_folder(eval_diff_report) / REPORT_NAME
            reports[name] = json.loads(path.read_text()) if path.is_file() else None
        rows = comparison_rows(reports)
        table = comparison_markdown(rows)
        chart = experiments_png(rows)
        with artifacts.staging(context.asset_key) as tmp:
            write_json_atomic(tmp / "comparison.json", rows)
            (tmp / "comparison.md").write_text(table + "\n\n" + png_markdown(chart, "experiments") + "\n")
            (tmp / "comparison.png").write_bytes(chart)
        return MaterializeResult(metadata={
            **environment_metadata(),
            "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key) / "comparison.md")),
            "num_experiments": len(rows),
            "experiments_file_problem": file_problem or "none",
            "without_report": MetadataValue.json([r["experiment"] for r in rows if r["status"] != "ok"]),
            "comparison": MetadataValue.md(table),
            "chart": MetadataValue.md(png_markdown(chart, "experiments")),
        })

    return experiment_comparison
