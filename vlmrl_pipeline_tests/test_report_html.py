"""The HTML evaluation report: escaping, the flipped-sample filter markup, intervals, thumbnails, no requests."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

from vlmrl_pipeline.core.evaluation.plots import before_after_png
from vlmrl_pipeline.core.evaluation.records import diff_records, score_records
from vlmrl_pipeline.core.evaluation.report_html import render_report_html, safe_image_src, thumbnail_data_uri

GOOD = "<REASONING>r</REASONING>\n<SOLUTION>{}</SOLUTION>"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def report_inputs():
    """Five samples: one gained on every accuracy, one that lost format, one hostile completion, two unchanged."""
    rows = pd.DataFrame({
        "pid": ["p1", "p2", "p3", 'p"4', "p5"],
        "question": ["How tall is the bar?", "Angle <b>x</b>?", "Sum & difference?", "q4", "q5"],
        "answer": ["991", "3", "5", "2.5", "7"],
    })
    before = [GOOD.format("12"), GOOD.format("3"), "no tags", GOOD.format("2.5"), GOOD.format("1")]
    after = [GOOD.format("991"), "3", GOOD.format(HOSTILE), GOOD.format("2.5"), GOOD.format("1")]
    baseline, trained = score_records(rows, before), score_records(rows, after)
    return diff_records(baseline, trained, n_resamples=200), baseline, trained


class _Rows(HTMLParser):
    """Collects the sample rows' attributes and every src/href, to check the markup as a browser reads it."""

    def __init__(self):
        super().__init__()
        self.rows, self.urls, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") == "sample":
            self.rows.append(attrs)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])


def parsed(page: str) -> _Rows:
    parser = _Rows()
    parser.feed(page)
    return parser


def test_everything_from_the_records_is_escaped():
    diff, baseline, after = report_inputs()
    page = render_report_html(diff, baseline, after)
    assert HOSTILE not in page
    assert "<script>alert" not in page and "onerror=alert" not in page.replace("&lt;img src=x onerror=alert", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "Angle &lt;b&gt;x&lt;/b&gt;?" in page and "Sum &amp; difference?" in page
    rows = parsed(page)
    assert rows.scripts == 1  # only the page's own filter script
    assert [r["data-pid"] for r in rows.rows] == ["p1", "p2", "p3", 'p"4', "p5"]  # the quote stayed in its attribute


def test_flipped_rows_are_marked_for_the_filter():
    diff, baseline, after = report_inputs()
    page = render_report_html(diff, baseline, after)
    rows = {r["data-pid"]: r for r in parsed(page).rows}
    flipped = {r["pid"]: r["changed"] for r in diff["flipped_samples"]}
    assert set(flipped) == {"p1", "p2", "p3"}
    for pid, row in rows.items():
        assert row["data-flipped"] == ("true" if pid in flipped else "false")
        assert row["data-changed"].split() == flipped.get(pid, [])
    assert "correct" in rows["p1"]["data-changed"].split() and "format_ok" in rows["p2"]["data-changed"].split()
    assert 'id="only-flipped"' in page and 'id="flip-metric"' in page
    assert "show only samples that flipped (3)" in page
    assert "Showing 5 of 5 samples" in page
    # the filter's options are the metrics' record columns, which is what data-changed holds
    assert set(re.findall(r'<option value="(\w+)"', page)) == {"any", "correct", "correct_numeric",
                                                                "correct_mathvista", "format_ok", "answered"}


def test_headline_shows_intervals_and_p_values():
    diff, baseline, after = report_inputs()
    page = render_report_html(diff, baseline, after)
    assert "95% interval (paired bootstrap)" in page
    for key, c in diff["comparison"].items():
        row = re.search(rf'<tr data-metric="{key}".*?</tr>', page, re.S).group(0)
        assert f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] pts" in row
        assert f"{100 * c['difference']:+.1f} pts" in row
        assert f">{c['p_value']:.3g}<" in row
        assert f"{c['gained']} / {c['lost']}" in row
        assert html.escape(c["label"]) in row
    assert "mean total reward" in page


def test_verdicts_and_predictions_per_sample():
    diff, baseline, after = report_inputs()
    page = render_report_html(diff, baseline, after)
    p1 = re.search(r'<tr class="sample" data-pid="p1".*?</tr>', page, re.S).group(0)
    assert p1.count('class="verdict gained"') == 3  # strict, numeric, MathVista: wrong -> right
    assert "<code>12</code>" in p1 and "<code>991</code>" in p1
    p2 = re.search(r'<tr class="sample" data-pid="p2".*?</tr>', page, re.S).group(0)
    assert "(no answer)" in p2 and 'class="verdict lost" data-column="format_ok"' in p2
    assert "<details>" in p1 and 'class="completion-before"' in p1


def test_plot_is_embedded_and_optional():
    diff, baseline, after = report_inputs()
    png = before_after_png(diff["headline"], diff["comparison"])
    page = render_report_html(diff, baseline, after, plot_png=png)
    uri = re.search(r'id="before-after-plot" src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(uri) == png
    assert 'id="before-after-plot"' not in render_report_html(diff, baseline, after)


def test_thumbnail_data_uri(tmp_path):
    path = tmp_path / "chart.png"
    Image.new("RGB", (512, 256), "orange").save(path)
    uri = thumbnail_data_uri(path, size=96)
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.size == (96, 48)  # aspect ratio kept
    assert thumbnail_data_uri(tmp_path / "missing.png") == ""
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert thumbnail_data_uri(tmp_path / "broken.png") == ""
    with pytest.raises(ValueError):
        thumbnail_data_uri(path, size=0)


@pytest.mark.parametrize(
    ("uri", "kept"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", True),
        ("thumbs/p1.jpg", True),
        ("images/a%20b.png", True),
        ("https://example.com/x.png", False),
        ("http://example.com/x.png", False),
        ("//example.com/x.png", False),
        ("/etc/passwd", False),
        ("javascript:alert(1)", False),
        ("data:text/html;base64,PHNjcmlwdD4=", False),
        ('data:image/png;base64,x" onerror="alert(1)', False),
        ("", False),
        (None, False),
    ],
)
def test_only_embedded_or_relative_images_are_kept(uri, kept):
    assert (safe_image_src(uri) is not None) == kept


def test_thumbnails_are_shown_and_the_page_requests_nothing_elsewhere(tmp_path):
    diff, baseline, after = report_inputs()
    Image.new("RGB", (64, 64), "teal").save(tmp_path / "p1.png")
    thumbnails = {"p1": thumbnail_data_uri(tmp_path / "p1.png"), "p2": "thumbs/p2.png",
                  "p3": "https://tracker.example/p3.png", "p5": "javascript:alert(1)"}
    page = render_report_html(diff, baseline, after, thumbnails, before_after_png(diff["headline"]))
    urls = parsed(page).urls
    assert thumbnails["p1"] in urls and "thumbs/p2.png" in urls
    assert all(u.startswith("data:image/") or not re.match(r"^[a-z]+:|^//", u) for u in urls)
    assert "tracker.example" not in page and "javascript:" not in page
    assert "default-src 'none'" in html.unescape(page)  # the CSP blocks anything that slipped through
    assert page.count('class="thumb"') == 2


def test_records_read_back_from_parquet(tmp_path):
    diff, baseline, after = report_inputs()
    baseline.to_parquet(tmp_path / "b.parquet")
    after.to_parquet(tmp_path / "a.parquet")
    b, a = pd.read_parquet(tmp_path / "b.parquet"), pd.read_parquet(tmp_path / "a.parquet")
    assert render_report_html(diff, b, a) == render_report_html(diff, baseline, after)
