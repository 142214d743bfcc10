"""TensorBoard history that survives re-materializing ``lora_adapter``: one run folder per materialization, within
``training_settings.tensorboard_history_mb``, read back the way ``tensorboard --logdir`` reads it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.assets.training import TENSORBOARD_DIR, TENSORBOARD_HISTORY_DIR
from vlmrl_pipeline.core.training.run_history import folder_bytes, keep_run, run_folder_name, run_folders
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile


def _write_events(folder: Path, rewards: list[float]) -> Path:
    """Event files as the trainer writes them (transformers' TensorBoardCallback uses torch's SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for step, reward in enumerate(rewards, start=1):
        writer.add_scalar("train/reward", reward, step)
    writer.close()
    return folder


def _scalars(logdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """What TensorBoard shows for ``--logdir logdir``: each run (a folder holding event files, named by its path
    under the logdir) and its scalar series, read with TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    runs = {}
    for run, tags in multiplexer.Runs().items():
        runs[run] = {tag: [(e.step, e.value) for e in multiplexer.Scalars(run, tag)] for tag in tags["scalars"]}
    return runs


def test_each_kept_run_is_a_tensorboard_run_and_the_oldest_go_first_past_the_budget(tmp_path):
    history = tmp_path / "history"
    names = [run_folder_name(f"run{i:05d}", when=1_700_000_000 + i, host="box") for i in range(3)]
    messages: list[str] = []
    for i, name in enumerate(names[:2]):
        attempt = _write_events(tmp_path / f"attempts{i}" / "Dec04_01-00-00_box", [0.1 * i, 0.2 * i + 0.1])
        kept = keep_run([attempt], history, name, budget_bytes=10**9, log=messages.append)
        assert kept.removed == () and kept.num_event_files == 1
    runs = _scalars(history)
    assert set(runs) == {f"{name}/Dec04_01-00-00_box" for name in names[:2]}
    assert runs[f"{names[1]}/Dec04_01-00-00_box"]["train/reward"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.3))]
    assert messages == []

    # A budget that holds about two runs: the third pushes the oldest out, and says so.
    per_run = folder_bytes(history / names[0])
    attempt = _write_events(tmp_path / "attempts2" / "Dec04_02-00-00_box", [0.5, 0.6])
    kept = keep_run([attempt], history, names[2], budget_bytes=2 * per_run + per_run // 2, log=messages.append)
    assert kept.removed == (names[0],)
    assert [p.name for p in run_folders(history)] == names[1:]
    assert len(messages) == 1 and names[0] in messages[0] and "removed the oldest run" in messages[0]

    # Budget 0: everything older goes; the newest stays although it alone is over the budget.
    attempt = _write_events(tmp_path / "attempts3" / "Dec04_03-00-00_box", [0.7])
    newest = run_folder_name("run00003", when=1_700_000_003, host="box")
    kept = keep_run([attempt], history, newest, budget_bytes=0, log=messages.append)
    assert kept.removed == tuple(names[1:]) and [p.name for p in run_folders(history)] == [newest]
    assert list(_scalars(history)) == [f"{newest}/Dec04_03-00-00_box"]


def test_a_folder_a_killed_copy_left_is_cleared_and_a_negative_budget_refused(tmp_path):
    history = tmp_path / "history"
    (history / ".19700101-000000_box_dead.abc").mkdir(parents=True)
    attempt = _write_events(tmp_path / "a" / "run", [1.0])
    keep_run([attempt], history, "19700101-000001_box_live", budget_bytes=10**6)
    assert [p.name for p in history.iterdir()] == ["19700101-000001_box_live"]
    with pytest.raises(ValueError, match="budget must be >= 0"):
        keep_run([attempt], history, "x", budget_bytes=-1)
    with pytest.raises(ValueError, match="tensorboard_history_mb must be >= 0"):
        dataclasses.replace(tiny_profile().gspo, tensorboard_history_mb=-1.0)


def test_rematerializing_the_adapter_keeps_each_runs_events_within_the_budget(tmp_path):
    """The real asset, three times on one data folder: the first two runs' event folders both stay (the adapter
    folder itself holds only the newest run's); a third with a tiny budget removes the older ones, logs it, and
    keeps its own."""
    profile = tiny_profile()
    data = tmp_path / "data"
    instance = DagsterInstance.ephemeral()
    upstream = ["mathvista_filtered", "resized_images", "base_model", "lora_adapter"]
    first = materialize(
        [*all_assets, *all_checks],
        selection=upstream,
        instance=instance,
        resources=resources_for_profile(profile, str(data)),
    )
    assert first.success
    second = materialize(
        [*all_assets, *all_checks],
        selection=["lora_adapter"],
        instance=instance,
        resources=resources_for_profile(profile, str(data)),
    )
    assert second.success
    history = data / TENSORBOARD_HISTORY_DIR
    kept = run_folders(history)
    assert [p.name[-8:] for p in kept] == [first.run_id[:8], second.run_id[:8]]
    runs = _scalars(history)
    for run in (first, second):
        [series] = [tags for name, tags in runs.items() if name.split("/")[0].endswith(run.run_id[:8])]
        assert [step for step, _ in series["train/reward"]] == list(range(1, profile.gspo.max_steps + 1))
    # The adapter's own folder was replaced: it holds this run's events only.
    own = _scalars(data / "lora_adapter" / TENSORBOARD_DIR)
    assert (
        len(own) == 1
        and list(own.values())[0]["train/reward"]
        == runs[next(name for name in runs if name.split("/")[0].endswith(second.run_id[:8]))]["train/reward"]
    )
    [event] = second.asset_materializations_for_node("lora_adapter")
    assert event.metadata["tensorboard_history"].value == str(history)
    assert event.metadata["tensorboard_history_pruned"].value == "none"

    small = dataclasses.replace(profile, gspo=dataclasses.replace(profile.gspo, tensorboard_history_mb=0.0))
    third = materialize(
        [*all_assets, *all_checks],
        selection=["lora_adapter"],
        instance=instance,
        resources=resources_for_profile(small, str(data)),
    )
    assert third.success
    assert [p.name[-8:] for p in run_folders(history)] == [third.run_id[:8]]
    assert len(_scalars(history)) == 1
    [event] = third.asset_materializations_for_node("lora_adapter")
    assert event.metadata["tensorboard_history_pruned"].value == ", ".join(p.name for p in kept)
    logged = [e.user_message for e in instance.all_logs(third.run_id)]
    for old in kept:
        assert any(f"removed the oldest run {old.name}" in m for m in logged), old.name
