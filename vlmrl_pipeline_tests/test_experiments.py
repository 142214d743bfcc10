"""Experiments: a profile plus overrides, each its own code location with its own asset keys and folder."""

from __future__ import annotations

import doctest
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from vlmrl_pipeline import experiments as experiments_module
from vlmrl_pipeline.core import experiment_specs as core_experiments
from vlmrl_pipeline.core.experiment_specs import declared_experiment_names, experiment_profile, parse_experiments
from vlmrl_pipeline.core.profiles import demo_profile

# Small enough to render and resize in seconds; the two differ in their held-out split.
EXPERIMENTS_YAML = """
experiments:
  small_eval:
    profile: demo
    data: {synthetic_rows: 40, eval_size: 5}
  larger_eval:
    profile: demo
    data: {synthetic_rows: 40, eval_size: 9}
    model: {lora: {r: 4}}
"""


def test_doctests():
    assert doctest.testmod(core_experiments).failed == 0


def test_an_experiment_is_its_profile_with_the_overrides():
    experiments = parse_experiments({"experiments": {"boxed": {"profile": "demo", "data": {"answer_format": "boxed"},
                                                               "model": {"lora": {"r": 4}}}}})
    profile = experiment_profile(experiments["boxed"])
    demo = demo_profile()
    assert profile.name == "boxed" and profile.data.answer_format == "boxed" and profile.model.lora.r == 4
    assert profile.model.lora.lora_alpha == demo.model.lora.lora_alpha and profile.gspo == demo.gspo


@pytest.mark.parametrize("body, message", [
    ({"bad-name": {}}, "must start with a letter and hold only letters, digits and underscores"),
    ({"e": {"profile": "nope"}}, "unknown profile 'nope'"),
    ({"e": {"trainer": {"learning_rate": 1.0}}}, "unknown settings group 'trainer'"),
    ({"e": {"data": {"eval_sise": 3}}}, r"experiment e: data.eval_sise: no such setting"),
    ({"e": {"model": {"lora": {"rank": 3}}}}, r"model.lora.rank: no such setting"),
    ({"e": {"gspo": {"num_generations": 1}}}, "num_generations must be >= 2"),
])
def test_an_experiment_that_cannot_work_is_refused_when_the_file_is_read(body, message):
    with pytest.raises(ValueError, match=message):
        parse_experiments({"experiments": body})


def test_an_undeclared_experiment_is_named(tmp_path, monkeypatch):
    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS_YAML)
    monkeypatch.setenv("VLMRL_EXPERIMENTS", str(tmp_path / "experiments.yaml"))
    experiments_module.experiment_definitions.cache_clear()
    with pytest.raises(ValueError, match=r"no experiment 'typo' in .*declared: \['larger_eval', 'small_eval'\]"):
        experiments_module.typo  # noqa: B018 - the attribute access is what Dagster's loader does


def test_two_experiments_materialized_one_after_the_other_keep_their_own_artifacts(tmp_path, monkeypatch):
    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS_YAML)
    monkeypatch.setenv("VLMRL_EXPERIMENTS", str(tmp_path / "experiments.yaml"))
    monkeypatch.setenv("VLMRL_DATA_DIR", str(tmp_path / "data"))
    experiments_module.experiment_definitions.cache_clear()
    instance = DagsterInstance.ephemeral()
    for name in ("small_eval", "larger_eval"):
        defs = getattr(experiments_module, name)
        job = defs.resolve_implicit_global_asset_job_def()
        selection = [AssetKey([name, "mathvista_filtered"]), AssetKey([name, "resized_images"])]
        assert job.get_subset(asset_selection=set(selection)).execute_in_process(instance=instance).success
    root = tmp_path / "data" / "experiments"
    for name, eval_size in (("small_eval", 5), ("larger_eval", 9)):
        manifest = pd.read_parquet(root / name / "resized_images" / "manifest.parquet")
        assert (manifest["split"] == "eval").sum() == eval_size
        event = instance.get_latest_materialization_event(AssetKey([name, "resized_images"]))
        assert event.asset_materialization.metadata["num_eval"].value == eval_size
    assert not (tmp_path / "data" / "resized_images").exists()  # the main location's folder is untouched
    graph = experiments_module.small_eval.resolve_asset_graph()
    assert graph.get(AssetKey(["small_eval", "lora_adapter"])).group_name == "small_eval_training"
    artifacts = experiments_module.small_eval.resources["artifacts"]
    assert artifacts.report_page_path == "/experiments/small_eval/reports/report.html"
    # Their code versions differ exactly where their settings do.
    graphs = {name: getattr(experiments_module, name).resolve_asset_graph() for name in ("small_eval", "larger_eval")}
    versions = {name: {k.path[-1]: graph.get(k).code_version for k in graph.materializable_asset_keys}
                for name, graph in graphs.items()}
    differ = {a for a in versions["small_eval"] if versions["small_eval"][a] != versions["larger_eval"][a]}
    assert differ == {"resized_images", "lora_adapter"}
    experiments_module.experiment_definitions.cache_clear()


@pytest.mark.browser
def test_the_ui_lists_each_experiment_as_a_location_with_its_own_assets(tmp_path):
    from vlmrl_pipeline_tests.test_webserver import REPO_ROOT, _free_port, _graphql

    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS_YAML)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        f"  - python_module: {{module_name: vlmrl_pipeline.definitions, working_directory: {REPO_ROOT}}}\n"
        + "".join(f"  - python_module: {{module_name: vlmrl_pipeline.experiments, attribute: {name}, "
                  f"location_name: {name}, working_directory: {REPO_ROOT}}}\n"
                  for name in ("small_eval", "larger_eval")))
    (tmp_path / "home").mkdir()
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "VLMRL_DATA_DIR": str(tmp_path / "data"),
           "VLMRL_EXPERIMENTS": str(tmp_path / "experiments.yaml")}
    with open(tmp_path / "webserver.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h",
                                    "127.0.0.1", "-p", str(port)], cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    locations = _graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                              "locationOrLoadError { __typename } } } } }")
                    entries = locations["workspaceOrError"]["locationEntries"]
                    if len(entries) == 3 and all(e["locationOrLoadError"] for e in entries):
                        break
                except OSError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "webserver.log").read_text()
                time.sleep(1)
            assert {e["locationOrLoadError"]["__typename"] for e in entries} == {"RepositoryLocation"}, entries
            assert {e["name"] for e in entries} >= {"small_eval", "larger_eval"}
            keys = {"/".join(n["assetKey"]["path"]) for n in _graphql(url, "{ assetNodes { assetKey { path } } }")
                    ["assetNodes"]}
            for name in ("small_eval", "larger_eval"):
                assert {f"{name}/eval_diff_report", f"{name}/lora_adapter"} <= keys
            assert "eval_diff_report" in keys  # the main location's, unprefixed
        finally:
            process.terminate()
            process.wait(timeout=30)


def _report(accuracy_before: float, accuracy_after: float) -> dict:
    return {"num_samples": 10, "headline": {
        "baseline_accuracy": accuracy_before, "after_accuracy": accuracy_after,
        "baseline_accuracy_mathvista": accuracy_before, "after_accuracy_mathvista": accuracy_after,
        "baseline_format_compliance": 0.5, "after_format_compliance": 0.9},
        "comparison": {"accuracy": {"ci_low": -0.1, "ci_high": 0.5, "p_value": 0.2}}}


def test_the_main_location_sets_every_experiment_side_by_side(tmp_path, monkeypatch):
    from vlmrl_pipeline.assets.experiment_comparison import build_experiment_comparison
    from vlmrl_pipeline.resources import ArtifactStore, experiments_file

    (tmp_path / "experiments.yaml").write_text(EXPERIMENTS_YAML)
    monkeypatch.setenv("VLMRL_EXPERIMENTS", str(tmp_path / "experiments.yaml"))
    names = declared_experiment_names(experiments_file())
    assert names == ["small_eval", "larger_eval"]
    comparison = build_experiment_comparison("main (demo)", names)
    # Downstream of its own report and of each experiment's, so any of them changing makes it stale.
    assert {k.to_user_string() for k in comparison.dependency_keys} == {
        "eval_diff_report", "small_eval/eval_diff_report", "larger_eval/eval_diff_report"}
    data = tmp_path / "data"
    for folder, report in ((data, _report(0.2, 0.6)), (data / "experiments" / "small_eval", _report(0.2, 0.3))):
        (folder / "eval_diff_report").mkdir(parents=True)
        (folder / "eval_diff_report" / "report.json").write_text(json.dumps(report))
    result = materialize([comparison], resources={"artifacts": ArtifactStore(root=str(data))})
    assert result.success
    rows = json.loads((data / "experiment_comparison" / "comparison.json").read_text())
    assert [(r["experiment"], r["status"], r.get("after_accuracy")) for r in rows] == [
        ("main (demo)", "ok", 0.6), ("small_eval", "ok", 0.3), ("larger_eval", "no report yet", None)]
    [event] = result.asset_materializations_for_node("experiment_comparison")
    assert event.metadata["without_report"].value == ["larger_eval"]
    assert "| small_eval | 10 | 20.0 | 30.0 | [-10.0, +50.0] |" in event.metadata["comparison"].value
    assert (data / "experiment_comparison" / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_a_broken_experiments_file_leaves_the_main_location_loadable(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: [this is: not a mapping")
    assert declared_experiment_names(tmp_path / "experiments.yaml") == []


# Each malformed content, and what its one error must say (after the file's path). Before: non-UTF-8 bytes and
# `experiments: 5` broke every command at code-location load with a bare UnicodeDecodeError / TypeError; the
# others were silently ignored by the main location (rc 0).
MALFORMED = {
    "not UTF-8": (b"experiments:\n  caf\xe9: {profile: demo}\n", r"line 2: byte 0xe9 \(offset 18\) is not UTF-8"),
    "a number": (b"experiments: 5\n", r"'experiments' must be a mapping of experiment name to settings, got int"),
    "YAML syntax": (b"experiments:\n  a: {profile: demo\n  b: [\n", r"line \d+, column \d+: not valid YAML"),
    "a YAML list": (b"- experiments\n- a\n", r"the file must be a mapping with the key 'experiments'.*got a list"),
    "an unknown top-level key": (b"experiment:\n  a: {profile: demo}\n",
                                 r"unknown top-level key\(s\) \['experiment'\]"),
    "an unknown setting": (b"experiments:\n  a: {data: {eval_sise: 3}}\n", r"experiment a: data\.eval_sise: no such"),
    "a name given twice": (b"experiments:\n  a: {profile: demo}\n  a: {profile: demo}\n",
                           r"line 3, column 3: not valid YAML .*'a' is given twice \(first on line 2\)"),
    "a word for a number": (b"experiments:\n  a: {data: {eval_size: five}}\n",
                            r"experiment a: data\.eval_size must be int, got str 'five'"),
    "an experiment that is a list": (b"experiments:\n  a: [1, 2]\n", r"experiment a must be a mapping"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_experiments_file_is_one_error_naming_the_file_and_the_place(case, tmp_path, monkeypatch):
    from vlmrl_pipeline.core.experiment_specs import ExperimentsFileError, declared_experiments, load_experiments

    content, message = MALFORMED[case]
    path = tmp_path / "experiments.yaml"
    path.write_bytes(content)
    with pytest.raises(ExperimentsFileError) as info:
        load_experiments(path)
    assert str(info.value).startswith(f"{path}: ") and re.search(message, str(info.value)), str(info.value)
    _, problem = declared_experiments(path)  # what the main location gets: the same words, never an exception
    assert problem == str(info.value)
    # The experiment's own location shows it (Dagster's loader reports it as the location's load error).
    monkeypatch.setenv("VLMRL_EXPERIMENTS", str(path))
    experiments_module.experiment_definitions.cache_clear()
    with pytest.raises(ExperimentsFileError, match=re.escape(str(path))):
        experiments_module.a  # noqa: B018 - the attribute access is what Dagster's loader does
    experiments_module.experiment_definitions.cache_clear()


def test_the_main_location_and_its_job_keep_working_with_a_malformed_experiments_file(tmp_path, monkeypatch, caplog):
    from vlmrl_pipeline.definitions import build_definitions
    from vlmrl_pipeline_tests.conftest import tiny_profile

    path = tmp_path / "experiments.yaml"
    path.write_bytes(MALFORMED["a number"][0])
    monkeypatch.setenv("VLMRL_EXPERIMENTS", str(path))
    with caplog.at_level("WARNING", logger="vlmrl_pipeline"):
        defs = build_definitions(tiny_profile(), data_dir=str(tmp_path / "data"))
    assert any(str(path) in r.getMessage() and "must be a mapping" in r.getMessage() for r in caplog.records)
    job = defs.resolve_job_def("vlmrl_lineage")  # the main job still resolves, with the comparison in it
    assert AssetKey("experiment_comparison") in job.asset_layer.executable_asset_keys
    report = tmp_path / "data" / "eval_diff_report"
    report.mkdir(parents=True)
    (report / "report.json").write_text(json.dumps(_report(0.2, 0.6)))
    instance = DagsterInstance.ephemeral()
    result = job.get_subset(asset_selection={AssetKey("experiment_comparison")}).execute_in_process(
        instance=instance)
    assert result.success
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30]
    assert any("experiments file not used" in w and str(path) in w for w in warnings), warnings
    [event] = result.asset_materializations_for_node("experiment_comparison")
    assert str(path) in event.metadata["experiments_file_problem"].value


@pytest.mark.parametrize("content", [MALFORMED["not UTF-8"][0], MALFORMED["a number"][0]])
def test_the_main_module_loads_in_a_fresh_process_whatever_the_experiments_file_holds(content, tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_bytes(content)
    env = {**os.environ, "VLMRL_EXPERIMENTS": str(path), "VLMRL_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", "import vlmrl_pipeline.definitions as d; print(len(d.defs.assets))"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "experiments file not used" in done.stderr and str(path) in done.stderr


def test_the_experiments_location_has_one_repository_per_experiment_and_says_when_there_is_none(tmp_path,
                                                                                              monkeypatch):
    from vlmrl_pipeline.core.experiment_specs import ExperimentsFileError
    from vlmrl_pipeline.experiments_location import NONE_DECLARED, experiment_repositories

    path = tmp_path / "experiments.yaml"
    monkeypatch.setenv("VLMRL_EXPERIMENTS", str(path))
    monkeypatch.setenv("VLMRL_DATA_DIR", str(tmp_path / "data"))
    assert list(experiment_repositories()) == [NONE_DECLARED]  # no file: the location loads, empty
    path.write_text(EXPERIMENTS_YAML)
    repositories = experiment_repositories()
    assert set(repositories) == {"small_eval", "larger_eval"}
    for name, repository in repositories.items():
        assert repository.name == name and repository.has_job("vlmrl_lineage")
        keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
        assert f"{name}/eval_diff_report" in keys and "eval_diff_report" not in keys
        # Its own resources: its artifact folder and its experiment's settings.
        resources = repository.get_top_level_resources()
        assert resources["artifacts"].config_field.default_value["root"] == str(tmp_path / "data" / "experiments"
                                                                                / name)
        assert resources["data_settings"].config_field.default_value["eval_size"] == \
            {"small_eval": 5, "larger_eval": 9}[name]
    path.write_bytes(MALFORMED["a number"][0])
    with pytest.raises(ExperimentsFileError, match=re.escape(str(path))):
        experiment_repositories()  # the location's load error, as the UI shows it


def _dagster_dev_state(url: str) -> dict:
    """What the UI shows: each location's load error or repositories (with their jobs), and every asset with its
    dependencies, through the webserver's own GraphQL."""
    from vlmrl_pipeline_tests.test_webserver import _graphql

    entries = _graphql(url, """{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
        __typename ... on RepositoryLocation { repositories { name jobs { name } } }
        ... on PythonError { message } } } } } }""")["workspaceOrError"]["locationEntries"]
    nodes = _graphql(url, "{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
    return {
        "locations": {e["name"]: e["locationOrLoadError"] for e in entries},
        "assets": {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes},
    }


def test_an_experiment_declared_while_dagster_dev_runs_appears_on_reload(tmp_path):
    """``dagster dev -w workspace.yaml`` (the project's own file), as the README starts it. An experiment declared
    after it started appears once the UI's *Reload* (GraphQL ``reloadRepositoryLocation``, what the location's button
    sends) restarts the experiments location's code server, with its assets and job; *Reload all*
    (``reloadWorkspace``) also sets it beside the main report in ``experiment_comparison``. No restart, and no
    workspace entry per experiment."""
    from vlmrl_pipeline_tests.test_webserver import REPO_ROOT, _free_port, _graphql

    path = tmp_path / "experiments.yaml"
    path.write_text(EXPERIMENTS_YAML.split("  larger_eval:")[0])  # small_eval only
    home = tmp_path / "home"
    home.mkdir()
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "VLMRL_DATA_DIR": str(tmp_path / "data"),
           "VLMRL_EXPERIMENTS": str(path)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "dagster_dev.log", "w") as log:
        # Its own session, so the cleanup below reaches the webserver, daemon and code servers it started.
        process = subprocess.Popen([dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    state = _dagster_dev_state(url)
                    if len(state["locations"]) == 2 and all(state["locations"].values()):
                        break
                except (OSError, KeyError, TypeError):
                    pass
                assert process.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "dagster_dev.log").read_text()[-4000:]
                time.sleep(1)
            experiments = state["locations"]["experiments"]
            assert experiments["__typename"] == "RepositoryLocation", experiments
            assert [r["name"] for r in experiments["repositories"]] == ["small_eval"]
            assert "larger_eval/eval_diff_report" not in state["assets"]
            assert "small_eval/eval_diff_report" in state["assets"]["experiment_comparison"]

            path.write_text(EXPERIMENTS_YAML)  # declares larger_eval too
            reloaded = _graphql(url, 'mutation { reloadRepositoryLocation(repositoryLocationName: "experiments") '
                                     "{ __typename } }")
            assert reloaded["reloadRepositoryLocation"]["__typename"] == "WorkspaceLocationEntry", reloaded
            state = _dagster_dev_state(url)
            repositories = {r["name"]: {j["name"] for j in r["jobs"]}
                            for r in state["locations"]["experiments"]["repositories"]}
            assert set(repositories) == {"small_eval", "larger_eval"}
            assert "vlmrl_lineage" in repositories["larger_eval"]
            assert {"larger_eval/eval_diff_report", "larger_eval/lora_adapter"} <= set(state["assets"])
            assert state["assets"]["larger_eval/lora_adapter"] >= {"larger_eval/base_model",
                                                                    "larger_eval/resized_images"}

            assert _graphql(url, "mutation { reloadWorkspace { __typename } }")["reloadWorkspace"]["__typename"] \
                == "Workspace"
            state = _dagster_dev_state(url)
            assert {"small_eval/eval_diff_report", "larger_eval/eval_diff_report"} <= \
                state["assets"]["experiment_comparison"]
        finally:
            os.killpg(process.pid, signal.SIGINT)  # dagster dev shuts its webserver, daemon and code servers down
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
