"""Small PNG plots for training curves and before/after bars (matplotlib, no display needed)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and the Dagster daemon have no display
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def training_curves_png(log_history: Sequence[dict]) -> bytes:
    """Reward (with its format/correctness parts) and mean completion length per logged GSPO step; with them, when
    logged, the policy's mean token entropy and the rollout/train mismatch (vLLM rollouts: per-token logprob
    difference between vLLM and the trainer, and the correction's importance ratio); and, with evaluation during
    training (``eval_steps``), the validation accuracy, format compliance and answer rate."""
    logged = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in logged]

    def series(key: str) -> tuple[list, list]:
        pairs = [(h["step"], h[key]) for h in logged if h.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    validation = [h for h in log_history if "validation/accuracy" in h and "step" in h]
    has_entropy = bool(series("entropy")[1])
    has_mismatch = bool(series("sampling/sampling_logp_difference/mean")[1])
    has_dynamic = bool(series("dynamic_sampling/frac_reward_zero_std_sampled")[1])
    extra = int(has_entropy) + int(has_mismatch) + int(has_dynamic) + int(bool(validation))
    fig, axes = plt.subplots(1, 2 + extra, figsize=(4.5 * (2 + extra), 3.2))
    ax_r, ax_l = axes[0], axes[1]
    for key, label in (
        ("reward", "total (weighted)"),
        ("rewards/formatting_reward/mean", "format"),
        ("rewards/correctness_reward/mean", "correctness"),
        ("rewards/boxed_reward/mean", "boxed answer"),
    ):
        xs, values = series(key)
        if values:
            ax_r.plot(xs, values, label=label)
    ax_r.set_xlabel("step")
    ax_r.set_title("reward")
    ax_r.legend(fontsize=8)
    xs, lengths = series("completions/mean_length")
    if lengths:
        ax_l.plot(xs, lengths, color="tab:purple")
    ax_l.set_xlabel("step")
    ax_l.set_title("mean completion length (tokens)")
    position = 2
    if has_entropy:
        ax = axes[position]
        ax.plot(*series("entropy"), color="tab:green")
        ax.set_xlabel("step")
        ax.set_title("mean token entropy (nats)")
        position += 1
    if has_mismatch:
        ax = axes[position]
        for key, label in (("sampling/sampling_logp_difference/mean", "|logp diff| mean"),
                           ("sampling/sampling_logp_difference/max", "|logp diff| max")):
            ax.plot(*series(key), label=label)
        ax.set_xlabel("step")
        ax.set_title("rollout vs train (vLLM)")
        twin = ax.twinx()
        twin.plot(*series("sampling/importance_sampling_ratio/mean"), color="tab:red", linestyle="--",
                  label="IS ratio mean")
        twin.set_ylabel("importance ratio")
        ax.legend(fontsize=8, loc="upper left")
        twin.legend(fontsize=8, loc="upper right")
    if has_dynamic:  # dynamic sampling: the zero-spread share it dropped, and what trained
        ax = axes[position]
        ax.plot(*series("dynamic_sampling/frac_reward_zero_std_sampled"), label="sampled")
        ax.plot(*series("frac_reward_zero_std"), label="trained")
        ax.set_xlabel("step")
        ax.set_title("zero-spread share of groups (dynamic sampling)")
        ax.legend(fontsize=8)
        position += 1
    if validation:
        ax = axes[position]
        for key, label in (("validation/accuracy", "accuracy"), ("validation/format_compliance", "format"),
                           ("validation/answer_rate", "answer rate")):
            pairs = [(h["step"], 100 * h[key]) for h in validation if h.get(key) is not None]
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("%")
        ax.set_ylim(-5, 105)
        ax.set_title(f"validation ({validation[0].get('validation/num_samples', '?')} rows, greedy)")
        ax.legend(fontsize=8)
        position += 1
    del steps
    return _png(fig)


def before_after_png(headline: dict[str, float], comparison: dict[str, dict] | None = None) -> bytes:
    """Grouped bars per metric, before vs after; with ``comparison`` each label carries the change's interval."""
    metrics = [("accuracy", "accuracy\n(strict)"), ("accuracy_numeric", "accuracy\n(numeric)"),
               ("accuracy_mathvista", "accuracy\n(MathVista)"), ("format_compliance", "format\ncompliance"),
               ("answer_rate", "answer\nrate")]
    metrics = [(m, label) for m, label in metrics if f"baseline_{m}" in headline]
    if comparison:
        metrics = [
            (m, f"{label}\n[{100 * comparison[m]['ci_low']:+.0f}, {100 * comparison[m]['ci_high']:+.0f}] pts")
            if m in comparison else (m, label)
            for m, label in metrics
        ]
    before = [100 * headline[f"baseline_{m}"] for m, _ in metrics]
    after = [100 * headline[f"after_{m}"] for m, _ in metrics]
    xs = range(len(metrics))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before RL", color="tab:gray")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after RL", color="tab:blue")
    for x, (b, a) in enumerate(zip(before, after)):
        ax.text(x - 0.2, b + 1, f"{b:.0f}", ha="center", fontsize=8)
        ax.text(x + 0.2, a + 1, f"{a:.0f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [label for _, label in metrics])
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    return _png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Inline a PNG as a Markdown image (Dagster has no image metadata type; Markdown data URIs render)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def experiments_png(rows: Sequence[dict]) -> bytes:
    """Accuracy and format compliance before and after RL, one group of bars per experiment."""
    rows = [r for r in rows if r.get("status") == "ok"]
    series = [("baseline_accuracy", "accuracy before", "tab:gray"), ("after_accuracy", "accuracy after", "tab:blue"),
              ("baseline_format_compliance", "format before", "silver"),
              ("after_format_compliance", "format after", "tab:green")]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 3.4))
    width = 0.8 / len(series)
    for i, (key, label, color) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(rows))]
        ax.bar(xs, [100 * (r.get(key) or 0.0) for r in rows], width=width, label=label, color=color)
    ax.set_xticks(list(range(len(rows))), [r["experiment"] for r in rows])
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)
