"""Training-curve and before/after plots render to PNG and inline as Markdown."""

from __future__ import annotations

import base64
import io

from PIL import Image

from vlmrl_pipeline.core.evaluation.plots import before_after_png, png_markdown, training_curves_png


def _is_png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def test_training_curves_render_from_trainer_log_history():
    history = [{"step": s, "reward": 0.1 * s, "rewards/formatting_reward/mean": 0.2 * s,
                "rewards/correctness_reward/mean": 0.0, "completions/mean_length": 10 + s} for s in range(1, 6)]
    history.append({"step": 5, "train_runtime": 3.0})  # the trainer's closing summary has no reward
    width, height = _is_png(training_curves_png(history))
    assert width > 400 and height > 150


def test_before_after_bars_and_markdown_embedding():
    headline = {f"{side}_{m}": v for side, v in (("baseline", 0.5), ("after", 0.8))
                for m in ("accuracy", "accuracy_numeric", "format_compliance")}
    png = before_after_png(headline)
    _is_png(png)
    md = png_markdown(png, "chart")
    assert md.startswith("![chart](data:image/png;base64,")
    assert base64.b64decode(md.split(",", 1)[1][:-1]) == png
