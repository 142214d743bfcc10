"""Per-sample evaluation records, their summary, and the before/after diff."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vlmrl_pipeline.core.answers.matching import choice_list
from vlmrl_pipeline.core.answers.verdicts import score_completion
from vlmrl_pipeline.core.atomic import atomic_file
from vlmrl_pipeline.core.evaluation.stats import paired_comparison
from vlmrl_pipeline.core.files import write_json_atomic
from vlmrl_pipeline.core.prompts import PromptStyle, chat_prompts
from vlmrl_pipeline.core.rewards import REWARD_VERSION, reward_breakdown
from vlmrl_pipeline.core.samples import open_images

RECORD_COLUMNS = (
    "pid", "question", "answer", "question_type", "answer_type", "choices", "precision", "completion", "pred",
    "correct", "correct_numeric", "correct_mathvista", "format_ok", "answered", "family", "format_reward",
    "correctness_reward", "total_reward",
)

# The per-sample booleans compared before/after: (record column, summary key, label in the report).
METRICS = (
    ("correct", "accuracy", "accuracy (strict string, the seed's metric)"),
    ("correct_numeric", "accuracy_numeric", "accuracy (numeric match)"),
    ("correct_mathvista", "accuracy_mathvista", "accuracy (MathVista's normalisation)"),
    ("format_ok", "format_compliance", "format compliance (the seed's: one reasoning and one solution block, "
     "empty or not)"),
    ("answered", "answer_rate", "answer rate (a non-empty answer of the question's kind in the solution block)"),
)
# The accuracies reported per task family.
FAMILY_METRICS = (("correct", "accuracy"), ("correct_mathvista", "accuracy_mathvista"), ("answered", "answer_rate"))


@dataclass(frozen=True)
class CollapseSettings:
    """When the report calls a policy collapsed: it answers with nothing, or with one answer for everything."""

    max_unanswered_share: float = 0.2
    """Flag when more than this share of all samples is format-compliant yet has no answer (an empty or
    unparseable solution block): the tags were learned, not the task."""
    max_top_answer_share: float = 0.5
    """Flag when one answer is given for more than this share of all samples, and for more than
    ``top_answer_gold_factor`` times as many as the commonest gold answer accounts for."""
    top_answer_gold_factor: float = 1.5
    """How much more often than the commonest gold answer the commonest prediction must occur to count."""


def _cell(row: pd.Series, key: str) -> Any:
    return row[key] if key in row.index else None


def _family(row: pd.Series) -> str:
    """The task family a row belongs to: MathVista's ``metadata.context`` ("bar chart", ...), else "all"."""
    metadata = _cell(row, "metadata")
    context = metadata.get("context") if isinstance(metadata, dict) else None
    return str(context) if context else "all"


def _precision(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def score_records(eval_rows: pd.DataFrame, completions: Sequence[str], answer_format: str = "tags",
                  rewards: Any = None, style: PromptStyle | None = None) -> pd.DataFrame:
    """One record per evaluation row: the completion, the extracted prediction and every score.

    ``rewards`` (a ``core.rewards.RewardSet``: the one training used, ``gspo_reward_set``) makes the reward columns
    exactly training's: each function is called as TRL calls it (chat prompts from ``style``, the dataset's
    columns, conversational completions), ``rewards`` holds ``{function name: value}``, ``total_reward`` their
    weighted sum, and ``format_reward`` / ``correctness_reward`` the values of the set's ``formatting_reward`` and
    ``correctness_reward`` / ``boxed_reward`` where it has them. Without it, the answer format's default rewards.

    Three accuracies, because they disagree and the report shows all of them: ``correct`` is the seed's strict
    string match ("991.0" is wrong against "991"); ``correct_numeric`` also accepts a numerically equal answer
    (what the correctness reward pays 1.5 for); ``correct_mathvista`` is MathVista's own rule (integers
    truncated, floats rounded to ``precision``, a choice letter or the nearest choice by edit distance).
    """
    if len(eval_rows) != len(completions):
        raise ValueError(f"{len(eval_rows)} evaluation rows but {len(completions)} completions")
    records = []
    for (_, row), completion in zip(eval_rows.iterrows(), completions):
        choices = choice_list(_cell(row, "choices")) or None
        precision = _precision(_cell(row, "precision"))
        question_type, answer_type = _cell(row, "question_type"), _cell(row, "answer_type")
        scores = score_completion(
            completion, row["answer"], choices=choices, question_type=question_type, answer_type=answer_type,
            precision=precision, answer_format=answer_format,
        )
        records.append(
            {
                "pid": str(row["pid"]),
                "question": str(row["question"]),
                "answer": str(row["answer"]),
                "question_type": None if question_type is None else str(question_type),
                "answer_type": None if answer_type is None else str(answer_type),
                "choices": choices,
                "precision": precision,
                "completion": completion,
                "pred": scores["pred"],
                "correct": bool(scores["correct"]),
                "correct_numeric": bool(scores["correct_numeric"]),
                "correct_mathvista": bool(scores["correct_mathvista"]),
                "format_ok": bool(scores["format_ok"]),
                "answered": bool(scores["answered"]),
                "family": _family(row),
                **reward_breakdown(completion, row["answer"], answer_format=answer_format, choices=choices,
                                   question_type=question_type),
            }
        )
    if rewards is not None:
        _apply_reward_set(records, eval_rows, rewards, style or PromptStyle(answer_format=answer_format))
    table = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS) + (["rewards"] if rewards else []))
    # "no answer block", "no choices", "no precision" stay None (null in JSON/parquet), not pandas' NaN.
    for column in ("pred", "choices", "precision"):
        table[column] = pd.Series([r[column] for r in records], dtype=object)
    return table


FORMAT_REWARDS = ("formatting_reward",)
CORRECTNESS_REWARDS = ("correctness_reward", "boxed_reward")
"""The reward functions whose values fill the records' ``format_reward`` / ``correctness_reward`` columns."""


def _apply_reward_set(records: list[dict[str, Any]], rows: pd.DataFrame, rewards: Any, style: PromptStyle) -> None:
    from vlmrl_pipeline.core.reward_plugins import reward_kwargs_for_rows, score_with_reward_set

    values, totals = score_with_reward_set(rewards, [r["completion"] for r in records],
                                           **reward_kwargs_for_rows(rows, style))
    for i, record in enumerate(records):
        record["rewards"] = {name: scores[i] for name, scores in values.items()}
        record["total_reward"] = totals[i]
        for column, names in (("format_reward", FORMAT_REWARDS), ("correctness_reward", CORRECTNESS_REWARDS)):
            found = [values[n][i] for n in names if n in values and values[n][i] is not None]
            if found:
                record[column] = float(found[0])


def summarize_records(records: pd.DataFrame, collapse: CollapseSettings = CollapseSettings()) -> dict[str, Any]:
    """Accuracy (strict, numeric, MathVista), format compliance, answer rate, mean rewards, the commonest answer
    and the collapse flags (:func:`collapse_flags`) over a record table."""
    n = len(records)
    if n == 0:
        raise ValueError("no evaluation records to summarize")
    top_answer, top_count = _commonest(records.loc[records["answered"], "pred"]) if "answered" in records else (
        None, 0)
    return {
        "num_samples": n,
        **{key: float(records[column].mean()) for column, key, _ in METRICS if column in records},
        "mean_total_reward": float(records["total_reward"].mean()),
        "mean_format_reward": float(records["format_reward"].mean()),
        "mean_correctness_reward": float(records["correctness_reward"].mean()),
        "top_answer": top_answer,
        "top_answer_share": top_count / n,
        "unanswered_compliant_share": float((records["format_ok"] & ~records["answered"]).mean())
        if "answered" in records else 0.0,
        "collapse": collapse_flags(records, collapse),
    }


def _commonest(values: pd.Series) -> tuple[str | None, int]:
    counts = Counter(str(v).strip() for v in values)
    if not counts:
        return None, 0
    # Ties broken by the text, so the same records always name the same answer.
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def collapse_flags(records: pd.DataFrame, settings: CollapseSettings = CollapseSettings()) -> list[str]:
    """Why these records look like a collapsed policy (empty list: they do not).

    Two signs: many format-compliant completions with no answer in their solution block (format compliance, which
    counts an empty block, then overstates what was learned), and one answer given for most samples while the gold
    answers are spread out (the policy found a constant that is sometimes right).
    """
    n = len(records)
    if n == 0 or "answered" not in records:
        return []
    flags = []
    empty = int((records["format_ok"] & ~records["answered"]).sum())
    if empty / n > settings.max_unanswered_share:
        flags.append(f"empty answers: {empty} of {n} completions are format-compliant but their solution block "
                     "holds no answer")
    top, count = _commonest(records.loc[records["answered"], "pred"])
    _, gold_count = _commonest(records["answer"])
    if top is not None and count / n > settings.max_top_answer_share and count > settings.top_answer_gold_factor * \
            gold_count:
        flags.append(f"one answer for most samples: {top!r} for {count} of {n} (the commonest gold answer covers "
                     f"{gold_count})")
    return flags


def family_table(baseline: pd.DataFrame, after: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per task family (``family`` column): sample count and each :data:`FAMILY_METRICS` rate before and after."""
    table: dict[str, dict[str, Any]] = {}
    b = baseline.set_index("pid")
    a = after.set_index("pid").loc[b.index]
    families = b["family"] if "family" in b else pd.Series("all", index=b.index)
    for family in sorted(set(families)):
        mask = (families == family).to_numpy()
        entry: dict[str, Any] = {"n": int(mask.sum())}
        for column, key in FAMILY_METRICS:
            if column in b and column in a:
                entry[f"baseline_{key}"] = float(b[column].to_numpy()[mask].mean())
                entry[f"after_{key}"] = float(a[column].to_numpy()[mask].mean())
        table[str(family)] = entry
    return table


def diff_records(
    baseline: pd.DataFrame, after: pd.DataFrame, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Compare two record tables on the same samples: headline numbers, how sure each change is, what flipped.

    For every metric the ``comparison`` entry gives the paired bootstrap interval of the after-minus-before
    difference and the exact McNemar p-value on the samples that changed, so one point on 100 samples reads as
    the noise it is. Raises if the two tables do not cover exactly the same ``pid`` set: a diff over different
    samples would compare nothing.
    """
    b = baseline.set_index("pid")
    a = after.set_index("pid")
    if set(b.index) != set(a.index) or b.index.has_duplicates or a.index.has_duplicates:
        raise ValueError("baseline and after records must cover the same, unique pids")
    a = a.loc[b.index]
    before_summary, after_summary = summarize_records(baseline), summarize_records(after)
    flips: dict[str, dict[str, list[str]]] = {}
    comparison: dict[str, dict[str, Any]] = {}
    metrics = [m for m in METRICS if m[0] in b and m[0] in a]  # records written before a metric existed lack it
    columns = [column for column, _, _ in metrics]
    for column, key, label in metrics:
        gained = [str(p) for p in b.index[(~b[column]) & a[column]]]
        lost = [str(p) for p in b.index[b[column] & (~a[column])]]
        flips[column] = {"gained": gained, "lost": lost}
        comparison[key] = {
            "label": label,
            **paired_comparison(b[column].astype(bool).tolist(), a[column].astype(bool).tolist(),
                                n_resamples=n_resamples, confidence=confidence, seed=seed),
        }
    flipped_rows = []
    for pid in b.index:
        changed = [m for m in columns if bool(b.at[pid, m]) != bool(a.at[pid, m])]
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
    headline = {}
    for _, key, _ in metrics:
        headline[f"baseline_{key}"] = before_summary[key]
        headline[f"after_{key}"] = after_summary[key]
    headline["baseline_mean_total_reward"] = before_summary["mean_total_reward"]
    headline["after_mean_total_reward"] = after_summary["mean_total_reward"]
    return {
        "num_samples": len(b),
        "reward_version": REWARD_VERSION,
        "headline": headline,
        "comparison": comparison,
        "flips": flips,
        "flipped_samples": flipped_rows,
        "per_family": family_table(baseline, after),
        "collapse": {"baseline": before_summary["collapse"], "after": after_summary["collapse"]},
        "top_answer": {"baseline": [before_summary["top_answer"], before_summary["top_answer_share"]],
                       "after": [after_summary["top_answer"], after_summary["top_answer_share"]]},
        "collapse_settings": asdict(CollapseSettings()),
    }


def report_markdown(diff: dict[str, Any], max_rows: int = 20) -> str:
    """A readable Markdown version of :func:`diff_records`' result (for Dagster metadata and the report file)."""
    h = diff["headline"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    confidence = next(iter(diff["comparison"].values()))["confidence"]
    lines = [
        f"# Before/after evaluation ({diff['num_samples']} held-out samples)",
        "",
        f"| metric | before | after | change | {100 * confidence:.0f}% interval (paired bootstrap) "
        "| gained / lost | McNemar p (exact) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in diff["comparison"].values():
        lines.append(
            f"| {c['label']} | {pct(c['before'])} | {pct(c['after'])} | {100 * c['difference']:+.1f} pts | "
            f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] pts | {c['gained']} / {c['lost']} | "
            f"{c['p_value']:.3g} |"
        )
    lines.append(
        f"| mean total reward (the training's weighted rewards) | {h['baseline_mean_total_reward']:.3f} | "
        f"{h['after_mean_total_reward']:.3f} | {h['after_mean_total_reward'] - h['baseline_mean_total_reward']:+.3f} "
        "| | | |"
    )
    lines += [
        "",
        "An interval that contains 0, or a p-value above 0.05, means this evaluation cannot tell the change from "
        "noise on this many samples.",
        "",
        "Format compliance is the seed's metric: exactly one reasoning block and one solution block, whatever they "
        "hold (an empty solution block counts). The answer rate counts a solution block that holds an answer of "
        "the question's kind (a number; for multiple choice also an option letter or text).",
    ]
    env = diff.get("environment")
    if env is not None:
        if env["differences"]:
            lines += ["", "**The before and after evaluations ran in different environments**, so part of any "
                      "change may come from them: " + "; ".join(env["differences"]) + "."]
        else:
            after_env = env.get("after") or {}
            lines += ["", "Both evaluations ran in one environment (" + ", ".join(
                f"{k} {after_env[k]}" for k in ("torch", "transformers", "vllm", "gpu") if k in after_env) + ")."]
    lines += ["", "Collapse check (empty answers, or one answer for most samples):", ""]
    for stage in ("baseline", "after"):
        flags = diff.get("collapse", {}).get(stage, [])
        top = diff.get("top_answer", {}).get(stage)
        commonest = f"; commonest answer `{top[0]}` ({pct(top[1])} of samples)" if top and top[0] is not None else ""
        lines.append(f"- {stage}: " + ("**COLLAPSE: " + "; ".join(flags) + "**" if flags else "no collapse")
                     + commonest)
    if diff.get("per_family"):
        lines += ["", "Per task family (accuracy strict / MathVista, answer rate; before -> after):", "",
                  "| family | n | accuracy (strict) | accuracy (MathVista) | answer rate |", "|---|---|---|---|---|"]
        for family, e in diff["per_family"].items():
            cells = [f"{pct(e[f'baseline_{k}'])} -> {pct(e[f'after_{k}'])}" if f"baseline_{k}" in e else ""
                     for _, k in FAMILY_METRICS]
            lines.append(f"| {family} | {e['n']} | " + " | ".join(cells) + " |")
    lines += ["", "Samples that flipped:", ""]
    for metric, moves in diff["flips"].items():
        lines.append(f"- `{metric}`: {len(moves['gained'])} gained, {len(moves['lost'])} lost")
    rows = diff["flipped_samples"][:max_rows]
    if rows:
        lines += ["", "| pid | gold | pred before | pred after | format before -> after | changed |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['pid']} | {r['answer']} | {_shown(r['pred_before'])} | {_shown(r['pred_after'])} | "
                f"{r['format_ok_before']} -> {r['format_ok_after']} | {', '.join(r['changed'])} |"
            )
        if len(diff["flipped_samples"]) > max_rows:
            lines.append(f"\n({len(diff['flipped_samples']) - max_rows} more in the report file)")
    return "\n".join(lines) + "\n"


def p_value_text(p: float) -> str:
    """A p-value as a person reads it: three significant digits, in scientific notation when tiny, never rounded
    away to ``0`` (Dagster shows float metadata rounded: an exact McNemar p of 8e-28 read as ``0``).

    >>> p_value_text(8.05e-28), p_value_text(0.04321), p_value_text(1.0)
    ('8.05e-28', '0.0432', '1')
    """
    return f"{p:.3g}" if p > 0 else "below 1e-308"


def change_text(c: dict[str, Any]) -> str:
    """One ``comparison`` entry of :func:`diff_records` as a line: rates, change, interval, McNemar p, flips.

    >>> line = change_text({"before": 0.4, "after": 0.52, "difference": 0.12, "ci_low": 0.05, "ci_high": 0.19,
    ...                     "confidence": 0.95, "p_value": 8.05e-28, "gained": 30, "lost": 2})
    >>> print(line.replace("; ", "\\n"))
    40.0% -> 52.0%: +12.0 pts
    95% interval [+5.0, +19.0] pts (paired bootstrap)
    McNemar p = 8.05e-28
    30 gained, 2 lost
    """
    return (f"{100 * c['before']:.1f}% -> {100 * c['after']:.1f}%: {100 * c['difference']:+.1f} pts; "
            f"{100 * c['confidence']:.0f}% interval [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] pts "
            f"(paired bootstrap); McNemar p = {p_value_text(c['p_value'])}; {c['gained']} gained, {c['lost']} lost")


def _shown(pred: Any) -> str:
    return "(no answer)" if pred is None else f"`{pred}`"


def _optional(value: Any) -> Any:
    """None for a missing value, whatever pandas read it back as (None, NaN, pd.NA)."""
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def save_records(records: pd.DataFrame, folder: str | os.PathLike, stem: str, extra: dict[str, Any]) -> dict[str, Path]:
    """Save records as ``{stem}.json`` (the seed's auditable format, with provenance) and ``{stem}.parquet``."""
    folder = Path(folder)
    payload = {**extra, "records": records.to_dict(orient="records")}
    json_path = write_json_atomic(folder / f"{stem}.json", payload)
    parquet_path = folder / f"{stem}.parquet"
    with atomic_file(parquet_path) as tmp:
        records.to_parquet(tmp, index=False)
    return {"json": json_path, "parquet": parquet_path}


COMPLETIONS_NAME = "completions.parquet"
GENERATION_INFO_NAME = "generation.json"


def generate_for_rows(model, processor, rows: pd.DataFrame, settings, style: PromptStyle | None = None,
                      progress=None) -> tuple[list[str], float]:
    """One completion per row (batched, vision tokens suppressed). Returns ``(completions, seconds)``."""
    import time

    from vlmrl_pipeline.core.evaluation.generation import generate_completions

    style = style or PromptStyle()
    start = time.perf_counter()
    completions = generate_completions(
        model, processor, chat_prompts(rows, style), open_images(rows), settings, progress=progress
    )
    return completions, time.perf_counter() - start


def generate_for_rows_vllm(model_path: str, processor, rows: pd.DataFrame, settings, style: PromptStyle | None,
                           max_model_len: int, *, adapter_dir: str | os.PathLike | None, scratch_dir: str | os.PathLike,
                           dtype: str = "bfloat16", revision: str | None = None,
                           progress=None) -> tuple[list[str], float, dict[str, Any]]:
    """:func:`generate_for_rows` through vLLM (``settings.engine == "vllm"``, in a child process): the same prompts
    and images, greedy. Returns ``(completions, seconds, engine info)``; seconds include preparing the 16-bit copy
    and starting vLLM. ``processor`` is unused (the child loads its own) but kept for the same call shape."""
    import time

    from vlmrl_pipeline.core.evaluation.vllm_engine import generate_in_subprocess

    style = style or PromptStyle()
    start = time.perf_counter()
    completions, info = generate_in_subprocess(
        model_path, chat_prompts(rows, style), rows["image_path"].astype(str).tolist(), settings, max_model_len,
        adapter_dir=adapter_dir, scratch_dir=scratch_dir, dtype=dtype, revision=revision,
    )
    if progress is not None:
        progress(len(completions), len(rows))
    return completions, time.perf_counter() - start, info


def evaluate_policy(model, processor, rows: pd.DataFrame, settings, style: PromptStyle | None = None, progress=None):
    """Generate a completion for every row (batched) and score it. Returns ``(records, seconds)``.

    ``style`` is a ``prompts.PromptStyle`` (default: MathVista's ``query`` with the seeds' tags); its answer
    format also picks how completions are scored.
    """
    style = style or PromptStyle()
    completions, seconds = generate_for_rows(model, processor, rows, settings, style, progress)
    return score_records(rows, completions, style.answer_format), seconds


def save_completions(folder: str | os.PathLike, pids: Sequence[str], completions: Sequence[str],
                     info: dict[str, Any]) -> Path:
    """Store generated completions (``completions.parquet``: pid, completion) and how they were made
    (``generation.json``), so scoring can be redone without generating again."""
    if len(pids) != len(completions):
        raise ValueError(f"{len(pids)} pids but {len(completions)} completions")
    folder = Path(folder)
    with atomic_file(folder / COMPLETIONS_NAME) as tmp:
        pd.DataFrame({"pid": [str(p) for p in pids], "completion": list(completions)}).to_parquet(tmp, index=False)
    write_json_atomic(folder / GENERATION_INFO_NAME, info)
    return folder / COMPLETIONS_NAME


def load_completions(folder: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The completions and generation info that :func:`save_completions` wrote."""
    folder = Path(folder)
    path = folder / COMPLETIONS_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {COMPLETIONS_NAME} in {folder}: materialize the completions asset first")
    return pd.read_parquet(path), json.loads((folder / GENERATION_INFO_NAME).read_text())


def score_stored_completions(eval_rows: pd.DataFrame, completions: pd.DataFrame,
                             answer_format: str = "tags", rewards: Any = None,
                             style: PromptStyle | None = None) -> pd.DataFrame:
    """Score stored completions against their rows, matched by ``pid`` (the records follow the completions' order).

    Raises if a completion's pid is not an evaluation row or repeats: scores must never be attached to the wrong
    sample.
    """
    rows = eval_rows.assign(pid=eval_rows["pid"].astype(str)).set_index("pid", drop=False)
    pids = completions["pid"].astype(str)
    if pids.duplicated().any():
        raise ValueError(f"repeated pids in the completions: {sorted(set(pids[pids.duplicated()]))[:10]}")
    unknown = sorted(set(pids) - set(rows.index))
    if unknown:
        raise ValueError(f"completions for pids that are not evaluation rows: {unknown[:10]}")
    return score_records(rows.loc[pids.tolist()].reset_index(drop=True), completions["completion"].tolist(),
                         answer_format, rewards=rewards, style=style)
