"""Per-sample evaluation records, their summary, and the before/after diff."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vlmrl_pipeline.core.answers import score_completion
from vlmrl_pipeline.core.atomic import atomic_file
from vlmrl_pipeline.core.rewards import REWARD_VERSION, reward_breakdown

RECORD_COLUMNS = (
    "pid", "question", "answer", "completion", "pred", "correct", "correct_numeric", "format_ok",
    "format_reward", "correctness_reward", "total_reward",
)


def score_records(eval_rows: pd.DataFrame, completions: Sequence[str]) -> pd.DataFrame:
    """One record per evaluation row: the completion, the extracted prediction and every score.

    ``correct`` is the seed's strict string match ("991.0" is wrong against "991"); ``correct_numeric`` also
    accepts a numerically equal answer, which is what the correctness reward pays 1.5 for. Both are kept so the
    report can show the gap.
    """
    if len(eval_rows) != len(completions):
        raise ValueError(f"{len(eval_rows)} evaluation rows but {len(completions)} completions")
    records = []
    for (_, row), completion in zip(eval_rows.iterrows(), completions):
        scores = score_completion(completion, row["answer"])
        records.append(
            {
                "pid": str(row["pid"]),
                "question": str(row["question"]),
                "answer": str(row["answer"]),
                "completion": completion,
                "pred": scores["pred"],
                "correct": bool(scores["correct"]),
                "correct_numeric": bool(scores["correct_numeric"]),
                "format_ok": bool(scores["format_ok"]),
                **reward_breakdown(completion, row["answer"]),
            }
        )
    table = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS))
    # "no <SOLUTION> block" stays None (null in JSON/parquet), not pandas' NaN.
    table["pred"] = pd.Series([r["pred"] for r in records], dtype=object)
    return table


def summarize_records(records: pd.DataFrame) -> dict[str, float | int]:
    """Accuracy (strict and numeric), format compliance and mean rewards over a record table."""
    n = len(records)
    if n == 0:
        raise ValueError("no evaluation records to summarize")
    return {
        "num_samples": n,
        "accuracy": float(records["correct"].mean()),
        "accuracy_numeric": float(records["correct_numeric"].mean()),
        "format_compliance": float(records["format_ok"].mean()),
        "mean_total_reward": float(records["total_reward"].mean()),
        "mean_format_reward": float(records["format_reward"].mean()),
        "mean_correctness_reward": float(records["correctness_reward"].mean()),
    }


def diff_records(baseline: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Compare two record tables on the same samples: headline numbers and the samples that flipped.

    Raises if the two tables do not cover exactly the same ``pid`` set: a diff over different samples would
    compare nothing.
    """
    b = baseline.set_index("pid")
    a = after.set_index("pid")
    if set(b.index) != set(a.index) or b.index.has_duplicates or a.index.has_duplicates:
        raise ValueError("baseline and after records must cover the same, unique pids")
    a = a.loc[b.index]
    before_summary, after_summary = summarize_records(baseline), summarize_records(after)
    flips: dict[str, dict[str, list[str]]] = {}
    for metric in ("correct", "correct_numeric", "format_ok"):
        gained = [str(p) for p in b.index[(~b[metric]) & a[metric]]]
        lost = [str(p) for p in b.index[b[metric] & (~a[metric])]]
        flips[metric] = {"gained": gained, "lost": lost}
    flipped_rows = []
    for pid in b.index:
        changed = [m for m in ("correct", "correct_numeric", "format_ok") if bool(b.at[pid, m]) != bool(a.at[pid, m])]
        if changed:
            flipped_rows.append(
                {
                    "pid": str(pid),
                    "answer": str(b.at[pid, "answer"]),
                    "changed": changed,
                    "pred_before": _optional(b.at[pid, "pred"]),
                    "pred_after": _optional(a.at[pid, "pred"]),
                    "format_ok_before": bool(b.at[pid, "format_ok"]),
                    "format_ok_after": bool(a.at[pid, "format_ok"]),
                    "completion_before": b.at[pid, "completion"],
                    "completion_after": a.at[pid, "completion"],
                }
            )
    headline = {
        "baseline_accuracy": before_summary["accuracy"],
        "after_accuracy": after_summary["accuracy"],
        "baseline_accuracy_numeric": before_summary["accuracy_numeric"],
        "after_accuracy_numeric": after_summary["accuracy_numeric"],
        "baseline_format_compliance": before_summary["format_compliance"],
        "after_format_compliance": after_summary["format_compliance"],
        "baseline_mean_total_reward": before_summary["mean_total_reward"],
        "after_mean_total_reward": after_summary["mean_total_reward"],
    }
    return {
        "num_samples": len(b),
        "reward_version": REWARD_VERSION,
        "headline": headline,
        "flips": flips,
        "flipped_samples": flipped_rows,
    }


def report_markdown(diff: dict[str, Any], max_rows: int = 20) -> str:
    """A readable Markdown version of :func:`diff_records`' result (for Dagster metadata and the report file)."""
    h = diff["headline"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    lines = [
        f"# Before/after evaluation ({diff['num_samples']} held-out samples)",
        "",
        "| metric | before | after | change |",
        "|---|---|---|---|",
    ]
    for label, key in (
        ("accuracy (strict string, the seed's metric)", "accuracy"),
        ("accuracy (numeric match)", "accuracy_numeric"),
        ("format compliance", "format_compliance"),
    ):
        before, after = h[f"baseline_{key}"], h[f"after_{key}"]
        lines.append(f"| {label} | {pct(before)} | {pct(after)} | {100 * (after - before):+.1f} pts |")
    lines.append(
        f"| mean total reward (0.3 format + 1.0 correctness) | {h['baseline_mean_total_reward']:.3f} | "
        f"{h['after_mean_total_reward']:.3f} | {h['after_mean_total_reward'] - h['baseline_mean_total_reward']:+.3f} |"
    )
    lines += ["", "Samples that flipped:", ""]
    for metric, moves in diff["flips"].items():
        lines.append(f"- `{metric}`: {len(moves['gained'])} gained, {len(moves['lost'])} lost")
    rows = diff["flipped_samples"][:max_rows]
    if rows:
        lines += ["", "| pid | gold | pred before | pred after | format before -> after | changed |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['pid']} | {r['answer']} | {_shown(r['pred_before'])} | {_shown(r['pred_after'])} | "
                f"{r['format_ok_before']} -> {r['format_ok_after']} | {', '.join(r['changed'])} |"
            )
        if len(diff["flipped_samples"]) > max_rows:
            lines.append(f"\n({len(diff['flipped_samples']) - max_rows} more in the report file)")
    return "\n".join(lines) + "\n"


def _shown(pred: Any) -> str:
    return "(no SOLUTION)" if pred is None else f"`{pred}`"


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON to a temp file in the same folder, then rename it into place."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=_json_default))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to a temp file in the same folder, then rename it into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _optional(value: Any) -> Any:
    """None for a missing value, whatever pandas read it back as (None, NaN, pd.NA)."""
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _json_default(value: Any):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_records(records: pd.DataFrame, folder: str | os.PathLike, stem: str, extra: dict[str, Any]) -> dict[str, Path]:
    """Save records as ``{stem}.json`` (the seed's auditable format, with provenance) and ``{stem}.parquet``."""
    folder = Path(folder)
    payload = {**extra, "records": records.to_dict(orient="records")}
    json_path = write_json_atomic(folder / f"{stem}.json", payload)
    parquet_path = folder / f"{stem}.parquet"
    with atomic_file(parquet_path) as tmp:
        records.to_parquet(tmp, index=False)
    return {"json": json_path, "parquet": parquet_path}


def evaluate_policy(model, processor, rows: pd.DataFrame, settings, prompt_field: str = "query", progress=None):
    """Generate a completion for every row (batched) and score it. Returns ``(records, seconds)``."""
    import time

    from vlmrl_pipeline.core.generation import generate_completions
    from vlmrl_pipeline.core.samples import chat_prompts, open_images

    start = time.perf_counter()
    completions = generate_completions(
        model, processor, chat_prompts(rows, prompt_field), open_images(rows), settings, progress=progress
    )
    return score_records(rows, completions), time.perf_counter() - start
