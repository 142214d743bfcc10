"""The playground and the HTML report in headless Chromium: what a person sees is what the rewards compute.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``apt-get install -y chromium chromium-driver``) and
selenium; when one is missing the tests fail and say so (see ``chromium.py``). Screenshots go to
``$VLMRL_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import pytest

from vlmrl_pipeline.core.rewards import reward_breakdown
from vlmrl_pipeline.playground import PRESETS, running_server
from vlmrl_pipeline.playground.i18n import STRINGS
from vlmrl_pipeline_tests.browser import chrome_driver, save_screenshot

pytestmark = pytest.mark.browser

TIMEOUT = 5  # seconds; every wait polls every 50 ms, so a passing test never waits longer than it must


def shown(x: float) -> str:
    """A reward as the page writes it: three decimals at most, and "2.0" rather than "2"."""
    r = round(x, 3) + 0.0  # + 0.0 turns -0.0 into 0.0, as JavaScript's toFixed does
    return f"{r:.1f}" if r == int(r) else repr(r)


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(lambda d: condition(d), message)


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def wait_for_total(driver, expected: float) -> None:
    """Wait until the page shows ``expected`` as the weighted total (its number and its text)."""
    from selenium.webdriver.common.by import By

    def done(d):
        total = d.find_element(By.ID, "total")
        value = total.get_attribute("data-value")
        return bool(value) and abs(float(value) - expected) < 1e-9 and total.text == shown(expected)

    wait_for(driver, done, f"the page never showed total {shown(expected)} (shows {text_of(driver, 'total')!r})")


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for this module's tests (starting one costs about a second)."""
    with chrome_driver() as driver:
        yield driver


@pytest.fixture(scope="module")
def playground():
    with running_server() as server:
        yield server


def open_playground(driver, server, language: str = "en") -> None:
    """Load the page in ``language`` (the choice persists in localStorage) and wait for its first score."""
    from selenium.webdriver.common.by import By

    driver.get(server.url + "/")
    driver.find_element(By.ID, f"lang-{language}").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "title").text == STRINGS[language]["title"], "title")
    first = PRESETS[0]["request"]
    wait_for_total(driver, reward_breakdown(first["completion"], first["answer"])["total_reward"])


def test_typing_recomputes_the_total(chromium, playground):
    from selenium.webdriver.common.by import By

    open_playground(chromium, playground)
    completion = chromium.find_element(By.ID, "completion")
    answer = chromium.find_element(By.ID, "answer")
    completion.clear()
    answer.clear()
    answer.send_keys("991")
    text = "<REASONING>bar</REASONING><SOLUTION>991.0</SOLUTION>"
    completion.send_keys(text)
    expected = reward_breakdown(text, "991")
    assert expected["total_reward"] == pytest.approx(2.1)
    wait_for_total(chromium, expected["total_reward"])
    assert text_of(chromium, "format-reward") == shown(expected["format_reward"])
    assert text_of(chromium, "correctness-reward") == shown(expected["correctness_reward"])
    assert text_of(chromium, "pred") == "991.0"

    # keep typing: a second SOLUTION block costs the format point and the last block is now the answer
    completion.send_keys("<SOLUTION>991</SOLUTION>")
    expected = reward_breakdown(text + "<SOLUTION>991</SOLUTION>", "991")
    wait_for_total(chromium, expected["total_reward"])
    assert text_of(chromium, "pred") == "991"
    assert "2 <SOLUTION> blocks" in text_of(chromium, "details")


def test_each_preset_shows_the_reward_functions_numbers(chromium, playground):
    from selenium.webdriver.common.by import By

    open_playground(chromium, playground)
    for preset in PRESETS:
        request = preset["request"]
        chromium.find_element(By.ID, f"preset-{preset['id']}").click()
        expected = reward_breakdown(request["completion"], request["answer"],
                                    answer_format=request.get("answer_format", "tags"),
                                    choices=request.get("choices"), question_type=request.get("question_type"))
        wait_for_total(chromium, expected["total_reward"])
        assert text_of(chromium, "correctness-reward") == shown(expected["correctness_reward"]), preset["id"]
        if request.get("answer_format") == "boxed":
            assert text_of(chromium, "format-reward") == "—"
            assert text_of(chromium, "correctness-weight") == "× 1.0"
        else:
            assert text_of(chromium, "format-reward") == shown(expected["format_reward"]), preset["id"]
            assert text_of(chromium, "format-weight") == "× 0.3"
            assert text_of(chromium, "correctness-weight") == "× 1.0"
        assert text_of(chromium, "preset-explanation") == preset["explanation"]["en"]
        assert chromium.find_element(By.ID, "completion").get_attribute("value") == request["completion"]
        if preset["id"] == "numeric":
            assert "1.5 (not 2.0)" in text_of(chromium, "details")
        if preset["id"] == "spam":
            assert "−2" in text_of(chromium, "details")
    chromium.find_element(By.ID, "preset-numeric").click()
    wait_for_total(chromium, 2.1)
    save_screenshot(chromium, "playground-en")


def test_language_switch_to_chinese_and_back(chromium, playground):
    from selenium.webdriver.common.by import By

    open_playground(chromium, playground)
    chromium.find_element(By.ID, "preset-numeric").click()
    wait_for_total(chromium, 2.1)
    chromium.find_element(By.ID, "lang-zh").click()
    zh = STRINGS["zh"]
    wait_for(chromium, lambda d: d.find_element(By.ID, "title").text == zh["title"], "title in Chinese")
    assert chromium.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"
    assert text_of(chromium, "total-label") == zh["total"]
    assert chromium.find_element(By.CSS_SELECTOR, "label[for=completion]").text == zh["completion"]
    assert text_of(chromium, "preset-numeric") == "数值匹配"
    assert text_of(chromium, "preset-explanation") == next(p for p in PRESETS if p["id"] == "numeric")[
        "explanation"]["zh"]
    assert zh["r_tags_numeric"].split("“")[0] in text_of(chromium, "details")
    assert text_of(chromium, "total") == "2.1"  # the numbers do not change with the language
    save_screenshot(chromium, "playground-zh")

    chromium.refresh()  # the choice is remembered
    wait_for(chromium, lambda d: d.find_element(By.ID, "title").text == zh["title"], "Chinese after reload")

    chromium.find_element(By.ID, "lang-en").click()
    wait_for(chromium, lambda d: d.find_element(By.ID, "title").text == STRINGS["en"]["title"], "title in English")
    assert text_of(chromium, "total-label") == STRINGS["en"]["total"]
    assert chromium.find_element(By.ID, "preset-exact").text == "Exact match"


def test_report_filters_to_flipped_samples_and_shows_intervals(chromium, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from vlmrl_pipeline.core.evaluation.plots import before_after_png
    from vlmrl_pipeline.core.evaluation.report_html import render_report_html, thumbnail_data_uri
    from vlmrl_pipeline_tests.test_report_html import report_inputs

    diff, baseline, after = report_inputs()
    Image.new("RGB", (200, 120), "steelblue").save(tmp_path / "p1.png")
    (tmp_path / "thumbs").mkdir()
    Image.new("RGB", (40, 40), "purple").save(tmp_path / "thumbs" / "p2.png")
    thumbnails = {"p1": thumbnail_data_uri(tmp_path / "p1.png"), "p2": "thumbs/p2.png"}
    page = render_report_html(diff, baseline, after, thumbnails, before_after_png(diff["headline"], diff["comparison"]))
    (tmp_path / "report.html").write_text(page, encoding="utf-8")
    chromium.get((tmp_path / "report.html").as_uri())

    def visible_pids(d):
        return [r.get_attribute("data-pid") for r in d.find_elements(By.CSS_SELECTOR, "tr.sample") if r.is_displayed()]

    assert visible_pids(chromium) == baseline["pid"].tolist()
    flipped = [r["pid"] for r in diff["flipped_samples"]]
    chromium.find_element(By.ID, "only-flipped").click()
    wait_for(chromium, lambda d: visible_pids(d) == flipped, "only the flipped samples")
    assert text_of(chromium, "visible-count") == f"Showing {len(flipped)} of {len(baseline)} samples"

    Select(chromium.find_element(By.ID, "flip-metric")).select_by_value("format_ok")
    format_flips = [r["pid"] for r in diff["flipped_samples"] if "format_ok" in r["changed"]]
    wait_for(chromium, lambda d: visible_pids(d) == format_flips, "only the format flips")
    Select(chromium.find_element(By.ID, "flip-metric")).select_by_value("any")

    # the hostile completion is text, not markup: it shows up verbatim once expanded, and nothing ran
    row = chromium.find_element(By.CSS_SELECTOR, "tr.sample[data-pid=p3]")
    row.find_element(By.TAG_NAME, "summary").click()
    assert '<script>alert("x")</script>' in row.find_element(By.CLASS_NAME, "completion-after").text
    assert chromium.execute_script("return document.querySelectorAll('tr.sample script').length") == 0

    for key, c in diff["comparison"].items():
        cell = chromium.find_element(By.CSS_SELECTOR, f'tr[data-metric="{key}"] td.interval')
        assert cell.text == f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] pts"
    # the embedded chart and both kinds of thumbnail (data: URI, relative file) actually render
    for selector in ("#before-after-plot", "tr[data-pid=p1] img.thumb", "tr[data-pid=p2] img.thumb"):
        assert chromium.execute_script(f"return document.querySelector('{selector}').naturalWidth") > 0, selector
    save_screenshot(chromium, "report", full_page=True)

    chromium.find_element(By.ID, "only-flipped").click()
    wait_for(chromium, lambda d: len(visible_pids(d)) == len(baseline), "every sample again")


def test_the_report_page_opens_over_http_as_the_ui_links_it(chromium, tmp_path):
    """``eval_diff_report``'s ``report_page`` is an http link to the playground server (an http page's file://
    links do not open); the page works there as it does from disk."""
    from selenium.webdriver.common.by import By

    from vlmrl_pipeline.core.evaluation.plots import before_after_png
    from vlmrl_pipeline.core.evaluation.report_html import render_report_html
    from vlmrl_pipeline_tests.test_report_html import report_inputs

    diff, baseline, after = report_inputs()
    (tmp_path / "eval_diff_report").mkdir()
    page = render_report_html(diff, baseline, after, {}, before_after_png(diff["headline"], diff["comparison"]))
    (tmp_path / "eval_diff_report" / "report.html").write_text(page, encoding="utf-8")
    with running_server(data_dir=tmp_path) as served:
        chromium.get(f"{served.url}/reports/report.html")
        wait_for(chromium, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.sample"), "the samples table")
        assert chromium.execute_script("return document.querySelector('#before-after-plot').naturalWidth") > 0
        flipped = [r["pid"] for r in diff["flipped_samples"]]
        chromium.find_element(By.ID, "only-flipped").click()
        wait_for(chromium, lambda d: text_of(d, "visible-count") == f"Showing {len(flipped)} of {len(baseline)} "
                 "samples", "only the flipped samples")
