"""Report stage: what RL changed, per metric and per sample."""

import json

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.evaluation import after_records, baseline_records, records_file
from vlmrl_pipeline.assets.export import MERGED_16BIT_DIR, merged_model
from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.assets.provenance import ADAPTER_WEIGHTS, LINEAGE_KEYS
from vlmrl_pipeline.assets.shipped import (
    GGUF_RECORDS_SUMMARY,
    MERGED_NAME,
    gguf_name,
    gguf_records,
    gguf_records_file,
    merged_records,
)
from vlmrl_pipeline.assets.training import TRAINING_CURVES, lora_adapter
from vlmrl_pipeline.core.atomic import ArtifactBusyError
from vlmrl_pipeline.core.environment import environment_differences
from vlmrl_pipeline.core.evaluation.plots import before_after_png, png_markdown
from vlmrl_pipeline.core.evaluation.records import change_text, diff_records, report_markdown
from vlmrl_pipeline.core.evaluation.report_html import render_report_html, thumbnail_data_uri
from vlmrl_pipeline.core.evaluation.shipped import shipped_markdown, shipped_metadata, shipped_rows
from vlmrl_pipeline.core.files import sha256_file, write_json_atomic
from vlmrl_pipeline.core.model.card import CARD_NAME, card_adapter_sha256, evaluation_markdown, with_evaluation
from vlmrl_pipeline.core.rewards import REWARD_VERSION
from vlmrl_pipeline.core.samples import SPLIT_EVAL, read_manifest, split_rows
from vlmrl_pipeline.execution import CPU_TAGS
from vlmrl_pipeline.resources import NO_OP_CONFIG, ArtifactStore, ExportSettingsResource, asset_folder


@asset(config_schema=NO_OP_CONFIG,
       group_name="report", deps=[baseline_records, after_records, merged_records, gguf_records],
       kinds={"markdown"}, code_version=f"report-4+rewards-{REWARD_VERSION}", tags=CPU_TAGS)
def eval_diff_report(context: AssetExecutionContext, artifacts: ArtifactStore,
                     export_settings: ExportSettingsResource) -> MaterializeResult:
    """Accuracy (strict, numeric and MathVista's rules) and format compliance before vs after RL, how sure each
    change is (paired bootstrap 95% interval, exact McNemar p-value), and every sample that flipped.

    Written as ``report.json`` (machine-readable), ``report.md``, ``before_after.png`` and ``report.html`` (a
    self-contained page with image thumbnails, filterable to the samples that flipped; linked as ``report_page``).
    A handful of headline numbers are float metadata, which the Dagster UI plots across materializations
    (``HEADLINE_FLOATS``); each change's interval and p-value is text, every number exactly is in ``numbers``, and
    the before/after bars and the adapter's training curves (copied here, ``training_curves.png``) show on the
    asset page without a click.
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
    curves, curves_note = _training_curves(artifacts, after_info.get("adapter_sha256"))
    if curves is None:
        context.log.info(f"training curves not in the report: {curves_note}")
    with artifacts.staging(context.asset_key) as tmp:
        write_json_atomic(tmp / "report.json", diff)
        (tmp / "report.md").write_text(markdown + "\n" + png_markdown(chart, "before/after") + "\n")
        (tmp / "before_after.png").write_bytes(chart)
        if curves is not None:
            (tmp / TRAINING_CURVES).write_bytes(curves)
        # The page people open: headline with intervals, plot, per-sample table with thumbnails (self-contained).
        eval_rows = split_rows(read_manifest(artifacts.asset_dir(resized_images)), SPLIT_EVAL)
        thumbnails = {str(pid): thumbnail_data_uri(path)
                      for pid, path in zip(eval_rows["pid"], eval_rows["image_path"])}
        (tmp / "report.html").write_text(render_report_html(diff, baseline, after, thumbnails, chart), encoding="utf-8")
    cards = _update_model_cards(artifacts, diff, shipped_markdown(diff["shipped"], tolerance), context.log)
    folder = artifacts.asset_dir(context.asset_key)
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            "path": MetadataValue.path(str(folder / "report.md")),
            # Over http: the UI is an http page, and browsers do not follow its file:// links.
            "report_page": MetadataValue.url(
                _served(artifacts, "report.html") or (folder / "report.html").resolve().as_uri()),
            "report_file": MetadataValue.path(str(folder / "report.html")),
            **headline_metadata(diff),
            **{k: str(v) for k, v in diff["provenance"].items()},
            "shipped": MetadataValue.md(shipped_markdown(diff["shipped"], tolerance)),
            "samples": f"{diff['num_samples']} held-out samples, {len(diff['flipped_samples'])} flipped",
            "model_cards_updated": ", ".join(cards) or "none",
            "kept_checkpoint": str(diff["kept_checkpoint"] or "unrecorded"),
            "evaluation_environments": "; ".join(diff["environment"]["differences"]) or "the same",
            "report": MetadataValue.md(markdown),
            "before_after": _image_metadata(artifacts, "before_after.png", chart, "accuracy and format, before/after"),
            "training_curves": (_image_metadata(artifacts, TRAINING_CURVES, curves, "GSPO training curves")
                                if curves is not None else MetadataValue.text(curves_note)),
        }
    )


HEADLINE_FLOATS = ("baseline_accuracy", "after_accuracy", "after_format_compliance")
"""Of the headline rates, the floats the report's metadata carries. Dagster plots every float (and int) metadata
value across materializations, in alphabetical order; these, ``accuracy_lift`` and each shipped artifact's accuracy
are the plots a person reads. Every other number is text (``*_change``) or in ``numbers`` (JSON, exact)."""


def headline_metadata(diff: dict) -> dict:
    """The report's numbers as Dagster metadata: a handful of floats to plot, each metric's change as text that
    shows its interval and McNemar p-value (a p of 8e-28 as ``8.05e-28``, not a float the UI rounds to 0), and
    every number exactly in ``numbers``."""
    shipped = shipped_metadata(diff["shipped"])
    out: dict = {key: round(float(diff["headline"][key]), 4) for key in HEADLINE_FLOATS if key in diff["headline"]}
    if "accuracy" in diff["comparison"]:
        out["accuracy_lift"] = round(float(diff["comparison"]["accuracy"]["difference"]), 4)
    # Each shipped artifact's strict accuracy (the adapter's is after_accuracy): what the user takes away.
    out.update({k: v for k, v in shipped.items() if k.endswith("_accuracy") and not k.startswith("shipped_adapter_")})
    out.update({f"{key}_change": MetadataValue.text(change_text(c)) for key, c in diff["comparison"].items()})
    out["numbers"] = MetadataValue.json({
        "headline": diff["headline"],
        "comparison": {key: {k: v for k, v in c.items() if k != "label"} for key, c in diff["comparison"].items()},
        "shipped": shipped,
        "num_samples": diff["num_samples"],
        "num_flipped": len(diff["flipped_samples"]),
    })
    return out


def _served(artifacts: ArtifactStore, name: str) -> str | None:
    """``name`` of the report's folder on the report server (``vlmrl-playground --data-dir``), or None without one."""
    if not artifacts.report_server_url:
        return None
    base = artifacts.report_page_path.rsplit("/", 1)[0]
    return f"{artifacts.report_server_url.rstrip('/')}{base}/{name}"


def _image_metadata(artifacts: ArtifactStore, name: str, png: bytes, alt: str) -> MetadataValue:
    """An image the asset page shows without a click. Dagster's UI expands a Markdown value only when it is under
    1,000 characters (longer ones open behind "[Show Markdown]"), which an inlined PNG never is, so the image is
    linked from the report server, which serves the report's folder. Without a server it is inlined as a data
    URI (shown after the click)."""
    url = _served(artifacts, name)
    if url is None:
        return MetadataValue.md(png_markdown(png, alt))
    return MetadataValue.md(f"![{alt}]({url})\n\n[{name}]({url}) (served by `vlmrl-playground --data-dir`)")


def _training_curves(artifacts: ArtifactStore, adapter_sha256: str | None) -> tuple[bytes | None, str]:
    """The training curves of the adapter ``after_records`` measured (``lora_adapter``'s ``training_curves.png``),
    or None and why not (no adapter folder, or one since trained again: its curves belong to another adapter)."""
    adapter = artifacts.asset_dir(lora_adapter)
    png = adapter / TRAINING_CURVES
    if not png.is_file() or not (adapter / ADAPTER_WEIGHTS).is_file():
        return None, f"no {TRAINING_CURVES} in {adapter}: materialize lora_adapter"
    if sha256_file(adapter / ADAPTER_WEIGHTS) != adapter_sha256:
        return None, (f"{adapter} holds another adapter than the one after_records measured ({adapter_sha256}): "
                      "its training curves are left out until after_records is materialized again")
    return png.read_bytes(), ""


def _update_model_cards(artifacts: ArtifactStore, diff: dict, shipped_table: str, log) -> list[str]:
    """Write this report's headline into the adapter's and the merged checkpoint's model cards (``README.md``),
    each only if the card describes the adapter this report measured; returns the cards updated."""
    evaluation = evaluation_markdown(diff, shipped_table)
    measured = diff["provenance"].get("adapter_sha256")
    updated = []
    for owner, relative in ((lora_adapter, CARD_NAME), (merged_model, f"{MERGED_16BIT_DIR}/{CARD_NAME}")):
        path = artifacts.asset_dir(owner) / relative
        if not path.is_file():
            continue
        card = path.read_text(encoding="utf-8")
        if card_adapter_sha256(card) != measured:
            log.info(f"{path} describes another adapter than this report measured: its evaluation is left as is")
            continue
        try:
            artifacts.amend(owner, relative, with_evaluation(card, evaluation))
        except ArtifactBusyError as exc:
            log.warning(f"{path} not updated: {exc}")
            continue
        updated.append(f"{asset_folder(owner)}/{relative}")
    return updated


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
