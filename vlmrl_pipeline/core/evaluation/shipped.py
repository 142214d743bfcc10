"""What is shipped is what is evaluated: each exported artifact's records (the merged checkpoint, each GGUF type)
against the adapter's ``after_records`` on the same held-out samples, with paired intervals, the samples whose
answer changed, and the verdict of the blocking accuracy checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from vlmrl_pipeline.core.evaluation.stats import paired_comparison

SHIPPED_METRICS = (
    ("correct", "accuracy", "accuracy (strict)"),
    ("correct_mathvista", "accuracy_mathvista", "accuracy (MathVista)"),
    ("format_ok", "format_compliance", "format compliance"),
    ("answered", "answer_rate", "answer rate"),
)
"""(record column, key, label) of what the "what you ship" table compares."""
CHECKED_METRICS = ("accuracy", "accuracy_mathvista")
"""The metrics an artifact's blocking check guards."""
ADAPTER = "adapter"


def _pred(value: Any) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def compare_to_adapter(adapter: pd.DataFrame, artifact: pd.DataFrame, *, n_resamples: int = 10000,
                       confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """One artifact's records against the adapter's: per metric the two rates and the paired bootstrap interval
    of artifact minus adapter, the samples whose ``pred`` changed, and per metric the pids lost and gained.

    Raises when the two tables do not hold the same unique pids: a comparison over other samples compares nothing.
    """
    a = adapter.assign(pid=adapter["pid"].astype(str)).set_index("pid")
    b = artifact.assign(pid=artifact["pid"].astype(str)).set_index("pid")
    if a.index.has_duplicates or b.index.has_duplicates or set(a.index) != set(b.index):
        missing, extra = sorted(set(a.index) - set(b.index)), sorted(set(b.index) - set(a.index))
        raise ValueError(f"the artifact's records must cover the adapter's samples exactly (missing {missing[:10]}, "
                         f"extra {extra[:10]}, or repeated pids)")
    b = b.loc[a.index]
    out: dict[str, Any] = {"n": len(a), "metrics": {}, "flips": {}}
    for column, key, label in SHIPPED_METRICS:
        if column not in a or column not in b:
            continue
        before, after = a[column].astype(bool), b[column].astype(bool)
        out["metrics"][key] = {"label": label, **paired_comparison(before.tolist(), after.tolist(),
                                                                   n_resamples=n_resamples, confidence=confidence,
                                                                   seed=seed)}
        out["flips"][key] = {"lost": [str(p) for p in a.index[before & ~after]],
                             "gained": [str(p) for p in a.index[~before & after]]}
    changed = [str(p) for p in a.index if _pred(a.at[p, "pred"]) != _pred(b.at[p, "pred"])]
    out["answers_changed"] = len(changed)
    out["changed_pids"] = changed
    out["completions_changed"] = int((a["completion"] != b["completion"]).sum()) if "completion" in b else None
    return out


def accuracy_kept(comparison: Mapping[str, Any], tolerance: float) -> list[str]:
    """Why an artifact's accuracy is worse than the adapter's (empty: kept). A metric fails when its interval lies
    wholly below 0 and the drop is more than ``tolerance`` (a rate: 0.02 = 2 points)."""
    problems = []
    for key in CHECKED_METRICS:
        m = comparison["metrics"].get(key)
        if m is None:
            continue
        if m["ci_high"] < 0 and -m["difference"] > tolerance:
            lost = comparison["flips"][key]["lost"]
            problems.append(f"{m['label']} {100 * m['after']:.1f}% vs the adapter's {100 * m['before']:.1f}% "
                            f"({100 * m['difference']:+.1f} pts, interval [{100 * m['ci_low']:+.1f}, "
                            f"{100 * m['ci_high']:+.1f}]); lost on {len(lost)} samples: {', '.join(lost[:20])}"
                            + (" ..." if len(lost) > 20 else ""))
    return problems


def shipped_rows(adapter: pd.DataFrame, artifacts: Mapping[str, pd.DataFrame | None], tolerance: float,
                 details: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The "what you ship" table: the adapter's rates, then per artifact its comparison and check verdict.
    An artifact whose records are None is a row saying it was not evaluated."""
    rows: dict[str, dict[str, Any]] = {ADAPTER: {"evaluated": True, "rates": {
        key: float(adapter[column].astype(bool).mean()) for column, key, _ in SHIPPED_METRICS if column in adapter}}}
    for name, records in artifacts.items():
        extra = dict((details or {}).get(name, {}))
        if records is None:
            rows[name] = {"evaluated": False, **extra}
            continue
        comparison = compare_to_adapter(adapter, records)
        problems = accuracy_kept(comparison, tolerance)
        rows[name] = {"evaluated": True, **extra, **comparison,
                      "rates": {k: m["after"] for k, m in comparison["metrics"].items()},
                      "accuracy_kept": not problems, "problems": problems}
    return rows


def shipped_markdown(rows: Mapping[str, Mapping[str, Any]], tolerance: float) -> str:
    """The table as Markdown: each rate, and for an artifact its change against the adapter with the interval."""
    labels = [label for _, _, label in SHIPPED_METRICS]
    lines = ["## What you ship", "",
             "Each shipped artifact evaluated on the same held-out samples, prompts and scorer as the adapter "
             "(`after_records`); change vs the adapter with its paired 95% interval.", "",
             "| artifact | " + " | ".join(labels) + " | answers changed | accuracy check |",
             "|---" * (len(labels) + 3) + "|"]
    for name, row in rows.items():
        if not row.get("evaluated"):
            lines.append(f"| {name} | " + " | ".join("" for _ in labels) + " | | not evaluated: "
                         f"{row.get('reason', 'no records')} |")
            continue
        cells = []
        for _, key, _ in SHIPPED_METRICS:
            rate = row["rates"].get(key)
            m = row.get("metrics", {}).get(key)
            if rate is None:
                cells.append("")
            elif m is None:
                cells.append(f"{100 * rate:.1f}%")
            else:
                cells.append(f"{100 * rate:.1f}% ({100 * m['difference']:+.1f} [{100 * m['ci_low']:+.1f}, "
                             f"{100 * m['ci_high']:+.1f}])")
        if name == ADAPTER:
            lines.append(f"| {name} (reference) | " + " | ".join(cells) + " | | |")
        else:
            verdict = "ok" if row["accuracy_kept"] else "**FAILED**"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['answers_changed']} of {row['n']} | "
                         f"{verdict} |")
    lines += ["", f"An artifact fails its check when its accuracy (strict or MathVista's) interval lies below 0 and "
              f"the drop exceeds {100 * tolerance:.1f} points (`export_settings.shipped_accuracy_tolerance`)."]
    for name, row in rows.items():
        for problem in row.get("problems", []):
            lines.append(f"- **{name}**: {problem}")
    return "\n".join(lines) + "\n"


def shipped_metadata(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Float metadata per artifact (``shipped_<name>_<metric>``, and the change and interval against the adapter),
    which the Dagster UI plots across materializations."""
    out: dict[str, float] = {}
    for name, row in rows.items():
        if not row.get("evaluated"):
            continue
        slug = name.replace("-", "_").replace(" ", "_")
        for key, rate in row["rates"].items():
            out[f"shipped_{slug}_{key}"] = round(float(rate), 4)
        for key, m in row.get("metrics", {}).items():
            for part in ("difference", "ci_low", "ci_high"):
                out[f"shipped_{slug}_{key}_{part}"] = round(float(m[part]), 4)
        if "answers_changed" in row:
            out[f"shipped_{slug}_answers_changed"] = float(row["answers_changed"])
    return out


def logit_agreement(reference, other, tokens_reference=None, tokens_other=None) -> dict[str, Any]:
    """Per-sample first-token logits (and greedy tokens) of a GGUF against the merged checkpoint on the same
    prompts and images: argmax agreement, the RMS difference as a share of the reference's spread, and the
    length of the agreeing greedy prefix. What a random-weight rehearsal can compare, since its answers mean
    nothing."""
    import numpy as np

    ref, got = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logits of different shapes: {ref.shape} vs {got.shape}")
    spread = ref.std(axis=-1)
    rms = np.sqrt(((ref - got) ** 2).mean(axis=-1))
    out: dict[str, Any] = {
        "samples": int(ref.shape[0]),
        "argmax_agree": int((ref.argmax(-1) == got.argmax(-1)).sum()),
        "relative_logit_diff": [round(float(r / s), 5) if s > 0 else None for r, s in zip(rms, spread, strict=True)],
        "mean_relative_logit_diff": float((rms / np.where(spread > 0, spread, np.inf)).mean()),
    }
    if tokens_reference is not None and tokens_other is not None:
        prefixes, identical = [], 0
        for a, b in zip(tokens_reference, tokens_other, strict=True):
            prefixes.append(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                                 min(len(a), len(b))))
            identical += int(list(a) == list(b))
        out.update(greedy_agreeing_prefix=prefixes, greedy_identical=identical,
                   greedy_tokens_compared=[len(a) for a in tokens_reference])
    return out
