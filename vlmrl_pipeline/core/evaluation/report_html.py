"""The before/after evaluation report as one self-contained HTML page.

:func:`render_report_html` turns what :func:`vlmrl_pipeline.core.evaluation.records.diff_records` returns, plus the two
record tables, into a single file: the headline numbers with their intervals and McNemar p-values, the
before/after chart, and every sample with its thumbnail, answers, verdicts and completions, filterable to the
samples that flipped. Nothing is fetched from elsewhere (images are data: URIs or relative paths, script and
style are inline, and a Content-Security-Policy forbids anything else), so the file can be archived or mailed.
Completions are model output and questions come from data sets: every value is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from vlmrl_pipeline.core.evaluation.records import METRICS

# Thumbnails may be embedded images or files beside the report; never a remote URL (the page makes no requests).
_DATA_IMAGE_RE = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/]*={0,2}")

_CSP = ("default-src 'none'; img-src data: 'self' file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")

_VERDICT_COLUMNS = (("correct", "strict"), ("correct_numeric", "numeric"), ("correct_mathvista", "MathVista"),
                    ("format_ok", "format"), ("answered", "answered"))


def thumbnail_data_uri(image_path: str | os.PathLike, size: int = 96) -> str:
    """A small JPEG of the image as a ``data:image/jpeg;base64,...`` URI, at most ``size`` pixels per side.

    JPEG keeps a hundred thumbnails to a few hundred KB in the report. A missing or unreadable image gives
    ``""`` (the report then shows no thumbnail for that row) rather than an exception: one bad file must not
    cost the whole report. ``size`` below 1 is a programming error and raises ValueError.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be at least 1, got {size}")
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except Exception:  # noqa: BLE001 - missing, corrupt, decompression bomb, unsupported mode: no thumbnail
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def safe_image_src(uri: Any) -> str | None:
    """``uri`` when it is a base64 data: image or a relative path, else None (remote and script URLs dropped)."""
    if not isinstance(uri, str) or not uri.strip():
        return None
    uri = uri.strip()
    if uri.lower().startswith("data:"):
        return uri if _DATA_IMAGE_RE.fullmatch(uri) else None
    parts = urlsplit(uri)
    # "//host/x" and "\\host\x" are network paths in browsers, even without a scheme.
    if parts.scheme or parts.netloc or uri.startswith(("/", "\\")):
        return None
    return uri


def _e(value: Any) -> str:
    """HTML-escaped text of a value (quotes included, so it is safe in attributes too); None gives ""."""
    return "" if value is None else html.escape(str(value), quote=True)


def _missing(value: Any) -> bool:
    """None, NaN or pd.NA: how a missing prediction reads back from JSON or parquet."""
    if value is None:
        return True
    return not isinstance(value, str) and pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _headline_section(diff: Mapping[str, Any]) -> str:
    comparison = diff.get("comparison", {})
    confidence = next(iter(comparison.values()), {}).get("confidence", 0.95)
    rows = []
    for key, c in comparison.items():
        # An interval that contains 0 or p >= 0.05: this many samples cannot tell the change from noise.
        clear = (c["ci_low"] > 0 or c["ci_high"] < 0) and c["p_value"] < 0.05
        reading = "a real change" if clear else "within noise"
        rows.append(
            f'<tr data-metric="{_e(key)}" class="{"clear" if clear else "noise"}">'
            f"<th scope=\"row\">{_e(c.get('label', key))}</th>"
            f"<td>{_pct(c['before'])}</td><td>{_pct(c['after'])}</td>"
            f'<td class="change">{_pts(c["difference"])} pts</td>'
            f'<td class="interval">[{_pts(c["ci_low"])}, {_pts(c["ci_high"])}] pts</td>'
            f'<td>{int(c["gained"])} / {int(c["lost"])}</td>'
            f'<td class="p-value">{c["p_value"]:.3g}</td><td>{reading}</td></tr>'
        )
    h = diff.get("headline", {})
    if "baseline_mean_total_reward" in h and "after_mean_total_reward" in h:
        before, after = h["baseline_mean_total_reward"], h["after_mean_total_reward"]
        rows.append(
            '<tr data-metric="mean_total_reward"><th scope="row">mean total reward (0.3 format + 1.0 correctness)'
            f"</th><td>{before:.3f}</td><td>{after:.3f}</td><td>{after - before:+.3f}</td>"
            "<td></td><td></td><td></td><td></td></tr>"
        )
    return (
        '<section id="headline"><h2>Headline</h2>'
        '<table class="numbers"><thead><tr><th>metric</th><th>before</th><th>after</th><th>change</th>'
        f"<th>{100 * confidence:.0f}% interval (paired bootstrap)</th><th>gained / lost</th>"
        "<th>McNemar p (exact)</th><th>reading</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        "<p class=\"note\">An interval that contains 0, or a p-value of 0.05 or more, means this evaluation "
        "cannot tell the change from noise on this many samples. Format compliance is the seed's metric (one "
        "reasoning and one solution block, an empty one included); the answer rate counts solution blocks that "
        "hold an answer of the question's kind.</p>"
        f"{_collapse_note(diff)}</section>"
    )


def _collapse_note(diff: Mapping[str, Any]) -> str:
    """One line per evaluation: the collapse flags (empty answers, one answer for most samples), or none."""
    items = []
    for stage in ("baseline", "after"):
        flags = diff.get("collapse", {}).get(stage, [])
        text = "COLLAPSE: " + "; ".join(flags) if flags else "no collapse"
        items.append(f'<li class="{"collapse" if flags else "ok"}" data-stage="{stage}">{stage}: {_e(text)}</li>')
    return f'<ul id="collapse">{"".join(items)}</ul>'


def _plot_section(plot_png: bytes | None) -> str:
    if not plot_png:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(plot_png).decode("ascii")
    return (
        '<section id="plot"><h2>Before and after</h2>'
        f'<img id="before-after-plot" src="{uri}" alt="before/after bar chart of every metric"></section>'
    )


def _verdict_cell(column: str, before: Any, after: Any) -> str:
    b, a = bool(before), bool(after)
    kind = "same" if b == a else ("gained" if a else "lost")
    mark = {True: "✓", False: "✗"}
    return f'<td class="verdict {kind}" data-column="{column}" title="{kind}">{mark[b]} → {mark[a]}</td>'


def _pred_cell(pred: Any) -> str:
    if _missing(pred):
        return '<td class="pred"><span class="none">(no answer)</span></td>'
    return f'<td class="pred"><code>{_e(pred)}</code></td>'


def _cell(row: Mapping[str, Any] | None, key: str) -> Any:
    return None if row is None else row.get(key)


def _sample_rows(diff: Mapping[str, Any], baseline: pd.DataFrame, after: pd.DataFrame,
                 thumbnails: Mapping[str, str]) -> tuple[list[str], int]:
    changed_by_pid = {str(r["pid"]): list(r.get("changed", [])) for r in diff.get("flipped_samples", [])}
    after_by_pid = {str(r["pid"]): r for r in after.to_dict(orient="records")}
    rows = []
    for b in baseline.to_dict(orient="records"):
        pid = str(b["pid"])
        a = after_by_pid.get(pid)
        changed = changed_by_pid.get(pid, [])
        src = safe_image_src(thumbnails.get(pid))
        image = f'<img class="thumb" src="{_e(src)}" alt="image of sample {_e(pid)}">' if src else ""
        verdicts = "".join(_verdict_cell(column, b.get(column), _cell(a, column)) for column, _ in _VERDICT_COLUMNS)
        completions = (
            "<details><summary>show</summary>"
            f"<h4>before</h4><pre class=\"completion-before\">{_e(b.get('completion'))}</pre>"
            f"<h4>after</h4><pre class=\"completion-after\">{_e(_cell(a, 'completion'))}</pre></details>"
        )
        rows.append(
            f'<tr class="sample" data-pid="{_e(pid)}" data-flipped="{"true" if changed else "false"}" '
            f'data-changed="{_e(" ".join(changed))}">'
            f"<td class=\"pid\">{_e(pid)}</td><td>{image}</td>"
            f"<td class=\"question\">{_e(b.get('question'))}</td>"
            f"<td class=\"gold\"><code>{_e(b.get('answer'))}</code></td>"
            f"{_pred_cell(b.get('pred'))}{_pred_cell(_cell(a, 'pred'))}{verdicts}<td>{completions}</td></tr>"
        )
    return rows, len(changed_by_pid)


_STYLE = """
body { margin: 0 auto; max-width: 1400px; padding: 1rem 1.5rem; color: #1d232b;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; } th, td { padding: 0.3rem 0.5rem; border-bottom: 1px solid #d8dde3;
       vertical-align: top; text-align: left; }
table.numbers td { text-align: right; white-space: nowrap; }
tr.clear th { font-weight: 700; } tr.noise td:last-child { color: #5b6673; }
.note, .meta, .none { color: #5b6673; } .none { font-style: italic; }
#before-after-plot { max-width: 100%; }
#controls { display: flex; gap: 1.2rem; align-items: center; margin: 0.5rem 0; }
.thumb { width: 96px; height: auto; display: block; }
.question { max-width: 28rem; }
td.verdict { white-space: nowrap; } td.gained { color: #1a7f37; font-weight: 700; }
td.lost { color: #cf222e; font-weight: 700; }
pre { white-space: pre-wrap; word-break: break-word; max-width: 40rem; background: #f6f8fa; padding: 0.4rem; }
details summary { cursor: pointer; color: #1f6feb; }
"""

# Client-side filter: hide rows by the flags the server wrote (data-changed); no data is read from the DOM text.
_SCRIPT = """
"use strict";
(function () {
  const only = document.getElementById("only-flipped");
  const metric = document.getElementById("flip-metric");
  const count = document.getElementById("visible-count");
  const rows = Array.from(document.querySelectorAll("#samples tbody tr.sample"));
  function apply() {
    let shown = 0;
    for (const row of rows) {
      const changed = (row.dataset.changed || "").split(" ").filter(Boolean);
      const flipped = metric.value === "any" ? changed.length > 0 : changed.includes(metric.value);
      row.hidden = only.checked && !flipped;
      if (!row.hidden) shown += 1;
    }
    count.textContent = "Showing " + shown + " of " + rows.length + " samples";
  }
  only.addEventListener("change", apply);
  metric.addEventListener("change", apply);
  apply();
})();
"""


def _environment_note(diff: Mapping[str, Any]) -> str:
    """A warning when the before and after evaluations ran with other packages or another GPU (else nothing)."""
    differences = (diff.get("environment") or {}).get("differences") or []
    if not differences:
        return ""
    items = "".join(f"<li><code>{_e(d)}</code></li>" for d in differences)
    return (f'<p class="meta" id="environment-warning"><strong>The before and after evaluations ran in different '
            f"environments</strong>; part of any change may come from them:</p><ul>{items}</ul>")


def _shipped_section(diff: Mapping[str, Any]) -> str:
    """The "what you ship" table: the adapter and each exported artifact on the same samples, with intervals."""
    from vlmrl_pipeline.core.evaluation.shipped import SHIPPED_METRICS

    shipped = diff.get("shipped") or {}
    if not shipped:
        return ""
    head = "".join(f"<th>{_e(label)}</th>" for _, _, label in SHIPPED_METRICS)
    rows = []
    for name, row in shipped.items():
        if not row.get("evaluated"):
            rows.append(f'<tr data-artifact="{_e(name)}"><th scope="row">{_e(name)}</th>'
                        + "<td></td>" * len(SHIPPED_METRICS)
                        + f"<td></td><td>not evaluated: {_e(row.get('reason', 'no records'))}</td></tr>")
            continue
        cells = []
        for _, key, _ in SHIPPED_METRICS:
            rate, m = row.get("rates", {}).get(key), row.get("metrics", {}).get(key)
            if rate is None:
                cells.append("<td></td>")
            elif m is None:
                cells.append(f"<td>{_pct(rate)}</td>")
            else:
                cells.append(f'<td>{_pct(rate)} <span class="interval">{_pts(m["difference"])} '
                             f'[{_pts(m["ci_low"])}, {_pts(m["ci_high"])}]</span></td>')
        changed = "" if name == "adapter" else f"{_e(row.get('answers_changed'))} of {_e(row.get('n'))}"
        verdict = "reference" if name == "adapter" else ("ok" if row.get("accuracy_kept") else "FAILED")
        rows.append(f'<tr data-artifact="{_e(name)}" class="{_e(verdict.lower())}"><th scope="row">{_e(name)}</th>'
                    f"{''.join(cells)}<td>{changed}</td><td>{_e(verdict)}</td></tr>")
    return ('<section id="shipped"><h2>What you ship</h2><table class="numbers"><thead><tr><th>artifact</th>'
            f"{head}<th>answers changed</th><th>accuracy check</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table><p class=\"note\">Each exported artifact answered the same held-out samples with the same "
            "prompts and scorer as the adapter; in brackets its change against the adapter, points, with the paired "
            "95% interval.</p></section>")


def render_report_html(
    diff: Mapping[str, Any],
    baseline: pd.DataFrame,
    after: pd.DataFrame,
    thumbnails: Mapping[str, str] | None = None,
    plot_png: bytes | None = None,
    *,
    title: str = "Before/after evaluation",
) -> str:
    """The report page for one before/after evaluation, as a complete HTML document (a str).

    ``diff`` is :func:`~vlmrl_pipeline.core.evaluation.records.diff_records`' result; ``baseline`` and ``after`` are the
    record tables it was computed from (columns as in ``RECORD_COLUMNS``; rows are shown in ``baseline``'s order
    and matched by ``pid``). ``thumbnails`` maps a pid to an image URI: a ``data:image/...;base64`` URI (see
    :func:`thumbnail_data_uri`) or a path relative to the report; anything else (http:, javascript:, absolute
    paths) is dropped so the page never makes a request elsewhere. ``plot_png`` is the before/after chart
    (:func:`~vlmrl_pipeline.core.evaluation.plots.before_after_png`), embedded when given. Pure: no I/O.
    """
    thumbnails = thumbnails or {}
    rows, n_flipped = _sample_rows(diff, baseline, after, thumbnails)
    metric_options = "".join(
        f'<option value="{_e(column)}">{_e(label)}</option>' for column, _, label in METRICS
    )
    verdict_headers = "".join(f"<th>{_e(label)}<br>before → after</th>" for _, label in _VERDICT_COLUMNS)
    flips = "".join(
        f"<li><code>{_e(metric)}</code>: {len(moves.get('gained', []))} gained, {len(moves.get('lost', []))} lost</li>"
        for metric, moves in diff.get("flips", {}).items()
    )
    n = diff.get("num_samples", len(baseline))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_e(title)} ({_e(n)} held-out samples)</h1>
<p class="meta">Reward code version <code>{_e(diff.get("reward_version", "unknown"))}</code>.</p>
{_environment_note(diff)}
{_headline_section(diff)}
{_shipped_section(diff)}
{_plot_section(plot_png)}
<section id="flips"><h2>Samples that flipped</h2><ul>{flips}</ul></section>
<section id="samples-section"><h2>Every sample</h2>
<div id="controls">
  <label><input type="checkbox" id="only-flipped"> show only samples that flipped ({n_flipped})</label>
  <label>on <select id="flip-metric"><option value="any">any metric</option>{metric_options}</select></label>
  <span id="visible-count" aria-live="polite">Showing {len(rows)} of {len(rows)} samples</span>
</div>
<table id="samples">
<thead><tr><th>pid</th><th>image</th><th>question</th><th>gold</th><th>pred before</th><th>pred after</th>
{verdict_headers}<th>completions</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</section>
<script>{_SCRIPT}</script>
</body>
</html>
"""
