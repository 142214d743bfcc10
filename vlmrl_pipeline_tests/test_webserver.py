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
def webserver_data(tmp_path_factory) -> Path:
    """The webserver's ``$VLMRL_DATA_DIR``: where runs launched from the UI write their artifacts."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def webserver_home(tmp_path_factory) -> Path:
    """The webserver's throwaway DAGSTER_HOME."""
    return tmp_path_factory.mktemp("dagster_home")


@pytest.fixture(scope="module")
def webserver(webserver_home, webserver_data):
    """``dagster-webserver -w workspace.yaml`` on a free localhost port, with a throwaway DAGSTER_HOME: the
    project's instance settings, but runs launched at once (``dagster dev`` also starts the daemon that dequeues
    them; this test starts no daemon)."""
    home = webserver_home
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with open(home / "dagster.yaml", "a") as config:
        config.write("\nrun_coordinator:\n  module: dagster._core.run_coordinator.default_run_coordinator\n"
                     "  class: DefaultRunCoordinator\n")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "VLMRL_DATA_DIR": str(webserver_data)}
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
    """The lineage views of the experiments comparison and of the GGUF export, which between them hold every
    asset."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    deps = _dependencies()
    with chrome_driver(window_size=(2400, 1400)) as driver:
        seen: set[str] = set()
        for leaf in ("experiment_comparison", "gguf_model"):
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


def test_a_launchpad_run_that_changes_one_setting(webserver, webserver_data):
    """A user opens the lineage job's launchpad, picks the two data assets, replaces the config with the one field
    they change (``eval_size``) and launches: the run succeeds with every other setting at the profile's value."""
    import pandas as pd
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from vlmrl_pipeline.definitions import PROFILE

    # Each setting's help is its launchpad description, and the profile's value its default.
    fields = _graphql(webserver, """{ pipelineOrError(params: {pipelineName: "vlmrl_lineage",
        repositoryName: "__repository__", repositoryLocationName: "vlmrl_pipeline.definitions"}) {
        ... on Pipeline { modes { resources { name configField { configType {
        ... on CompositeConfigType { fields { name description defaultValueAsJson } } } } } } } } }""")
    [mode] = fields["pipelineOrError"]["modes"]
    [data_resource] = [r for r in mode["resources"] if r["name"] == "data_settings"]
    eval_size = {f["name"]: f for f in data_resource["configField"]["configType"]["fields"]}["eval_size"]
    assert eval_size["description"].startswith("Held-out evaluation rows")
    assert json.loads(eval_size["defaultValueAsJson"]) == PROFILE.data.eval_size != 7

    with chrome_driver(window_size=(1800, 1200)) as driver:
        driver.get(f"{webserver}/locations/vlmrl_pipeline.definitions/jobs/vlmrl_lineage/playground")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".CodeMirror"))
        try:
            WebDriverWait(driver, 5).until(
                lambda d: d.find_element(By.XPATH, "//button[normalize-space()='Skip']")).click()
        except Exception:  # noqa: BLE001 - no community dialog this time
            pass
        subset = driver.find_element(By.CSS_SELECTOR, "input[placeholder^='Type an op subset']")
        subset.click()
        subset.send_keys(Keys.CONTROL, "a")  # one call per chord: a modifier stays down until its call ends
        subset.send_keys(Keys.DELETE)
        subset.send_keys("mathvista_filtered,resized_images")
        subset.send_keys(Keys.ENTER)
        wait.until(lambda d: "resized_images_train_eval_disjoint" in _ops_panel(d)
                   and "base_model" not in _ops_panel(d))
        # The editor holds the profile's values; the user keeps only the field they change.
        driver.execute_script("document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])",
                              "resources:\n  data_settings:\n    config:\n      eval_size: 7\n")
        wait.until(lambda d: "No errors" in d.find_element(By.TAG_NAME, "body").text)
        save_screenshot(driver, "dagster-launchpad-one-setting")
        driver.find_element(By.XPATH, "//button[normalize-space()='Launch Run']").click()
        wait.until(lambda d: "/runs/" in d.current_url)
        run_id = driver.current_url.rstrip("/").rsplit("/", 1)[-1]

    deadline = time.monotonic() + 300
    try:
        while True:
            run = _graphql(webserver, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status '
                                      f'runConfigYaml stepKeysToExecute }} }} }}')["runOrError"]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:  # never leave a run going after the test
        _graphql(webserver, f'mutation {{ terminateRun(runId: "{run_id}") {{ __typename }} }}')
    assert run["status"] == "SUCCESS", run
    assert set(run["stepKeysToExecute"]) >= {"mathvista_filtered", "resized_images"}
    assert "base_model" not in run["stepKeysToExecute"]
    manifest = pd.read_parquet(webserver_data / "resized_images" / "manifest.parquet")
    assert (manifest["split"] == "eval").sum() == 7
    assert not (webserver_data / "base_model").exists()


def _ops_panel(driver) -> str:
    """The launchpad's list of the ops the run will execute (below the editor, under "OPS")."""
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.TAG_NAME, "body").text
    start = text.rfind("\nOPS\n")
    return text[start:text.find("Launch Run", start)] if start >= 0 else ""


def test_the_report_images_show_on_its_asset_page_without_a_click(webserver, webserver_home, tmp_path):
    """The report's before/after bars and training curves as ``eval_diff_report`` records them: Markdown under
    1,000 characters (the UI expands only those) linking the report server. Both images load on the asset page
    with no click; the same chart inlined as a data URI (what the metadata held before) waits behind
    "[Show Markdown]"."""
    from dagster import AssetMaterialization, DagsterInstance, MetadataValue
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from vlmrl_pipeline.assets.report import _image_metadata
    from vlmrl_pipeline.core.evaluation.plots import before_after_png, png_markdown
    from vlmrl_pipeline.playground import running_server
    from vlmrl_pipeline.resources import ArtifactStore
    from vlmrl_pipeline_tests.test_report_html import report_inputs

    diff, _, _ = report_inputs()
    folder = tmp_path / "eval_diff_report"
    folder.mkdir()
    (folder / "before_after.png").write_bytes(before_after_png(diff["headline"], diff["comparison"]))
    (folder / "training_curves.png").write_bytes(before_after_png(diff["headline"], diff["comparison"]))
    with running_server(data_dir=tmp_path) as served:
        artifacts = ArtifactStore(root=str(tmp_path), report_server_url=served.url)
        chart = (folder / "before_after.png").read_bytes()
        metadata = {"before_after": _image_metadata(artifacts, "before_after.png", chart, "before/after"),
                    "training_curves": _image_metadata(artifacts, "training_curves.png", chart, "training curves")}
        urls = [f"{served.url}/reports/{name}" for name in ("before_after.png", "training_curves.png")]
        assert all(len(m.value) < 1000 for m in metadata.values())
        # What the metadata carried before: the chart inlined as a data URI, far over 1,000 characters.
        metadata["inlined"] = MetadataValue.md(png_markdown(chart, "inlined"))
        assert len(metadata["inlined"].value) > 1000
        instance = DagsterInstance.from_config(str(webserver_home))
        instance.report_runless_asset_event(AssetMaterialization(asset_key="eval_diff_report", metadata=metadata))

        def loaded(driver) -> bool:
            return all(driver.execute_script(
                "const i = document.querySelector(`img[src=\"${arguments[0]}\"]`); return !!i && i.complete && "
                "i.naturalWidth > 0", url) for url in urls)

        with chrome_driver(window_size=(1600, 1400)) as driver:
            for view in ("", "?view=events"):  # the overview's latest materialization, else the events tab
                driver.get(f"{webserver}/assets/eval_diff_report{view}")
                try:
                    WebDriverWait(driver, 8).until(expected_conditions.element_to_be_clickable(
                        (By.XPATH, "//button[normalize-space()='Skip']"))).click()
                except Exception:  # noqa: BLE001 - no dialog this time
                    pass
                try:
                    WebDriverWait(driver, 45).until(loaded)
                    break
                except Exception:  # noqa: BLE001 - try the next view; the assertion below says what was missing
                    continue
            save_screenshot(driver, "dagster-report-images", full_page=True)
            assert loaded(driver), f"{urls} not shown on the asset page"
            # The inlined one waits behind a click.
            assert "[Show Markdown]" in driver.find_element(By.TAG_NAME, "body").text
            assert not driver.find_elements(By.CSS_SELECTOR, 'img[alt="inlined"]')

