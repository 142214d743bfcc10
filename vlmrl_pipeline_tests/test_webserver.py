"""The Dagster UI, for real: start dagster-webserver on this project and look at the asset graph in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlmrl_pipeline.definitions import defs
from vlmrl_pipeline_tests.browser import chrome_driver, save_screenshot

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """``dagster-webserver -w workspace.yaml`` on a free localhost port, with a throwaway DAGSTER_HOME."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "VLMRL_DATA_DIR": str(tmp_path_factory.mktemp("data"))}
    log = open(home / "webserver.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"dagster-webserver did not start:\n{(home / 'webserver.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_the_webserver_serves_this_projects_lineage(webserver):
    data = _graphql(webserver, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")
    served = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
              for n in data["assetNodes"]}
    graph = defs.resolve_asset_graph()
    expected = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
                for k in graph.get_all_asset_keys()}
    assert served == expected


def _upstream(name: str, deps: dict[str, set[str]]) -> set[str]:
    seen, todo = {name}, [name]
    while todo:
        for parent in deps[todo.pop()]:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_the_asset_graph_renders_in_chromium(webserver):
    """The lineage views of the report and of the GGUF export, which between them hold every asset."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    deps = _dependencies()
    with chrome_driver(window_size=(2400, 1400)) as driver:
        seen: set[str] = set()
        for leaf in ("eval_diff_report", "gguf_model"):
            driver.get(f"{webserver}/assets/{leaf}?view=lineage&lineageScope=upstream&lineageDepth=10")
            if not seen:
                # A fresh browser profile first gets the "Join the Dagster community" dialog: dismiss it.
                try:
                    WebDriverWait(driver, 8).until(expected_conditions.element_to_be_clickable(
                        (By.XPATH, "//button[normalize-space()='Skip']"))).click()
                except Exception:  # noqa: BLE001 - no dialog this time
                    pass
            names = _upstream(leaf, deps)
            edges = sum(len(deps[name]) for name in names)
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d, names=names: names <= _shown_names(d.find_element(By.TAG_NAME, "body").text, names))
            # Lineage: one edge (an SVG path) per dependency between the shown assets.
            wait.until(lambda d, edges=edges: len(d.find_elements(By.CSS_SELECTOR, "svg path")) >= edges)
            save_screenshot(driver, f"dagster-lineage-{leaf}")
            seen |= names
    assert seen == set(deps)


def _shown_names(page_text: str, names: set[str]) -> set[str]:
    """Asset names on the page; a zoomed-out graph shortens long ones in the middle ("basel…_completions")."""
    shown = set()
    for line in page_text.splitlines():
        line = line.strip()
        for name in names:
            head, sep, tail = line.partition("…")
            if line == name or (sep and head and tail and name.startswith(head) and name.endswith(tail)):
                shown.add(name)
    return shown


def _dependencies() -> dict[str, set[str]]:
    graph = defs.resolve_asset_graph()
    return {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
            for k in graph.get_all_asset_keys()}
