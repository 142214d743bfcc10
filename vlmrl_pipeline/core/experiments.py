"""Named experiments: a profile plus the settings it changes, declared in a YAML file.

::

    experiments:
      demo_boxed:             # letters, digits and _: the experiment's asset key prefix and folder name
        profile: demo
        data: {answer_format: boxed}
        model: {lora: {r: 8}}

Groups are ``data``, ``model``, ``warm_start``, ``gspo``, ``generation`` and ``export`` (the fields of the core
dataclasses, nested ones as mappings). Each experiment becomes its own Dagster code location with its own asset keys
(``demo_boxed/eval_diff_report``) and its own artifact folder, so materializing one never touches another's.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmrl_pipeline.core.profiles import Profile

NAME = r"[A-Za-z][A-Za-z0-9_]*"
NAME_PATTERN = re.compile(f"^{NAME}$")
GROUPS = ("data", "model", "warm_start", "gspo", "generation", "export")
EXPERIMENTS_DIR = "experiments"
"""Under the data folder: one folder per experiment, holding its asset folders."""
REPORT_ASSET = "eval_diff_report"
"""The report's asset name, so its folder in a data folder (an asset's folder is its key's last component): what
the report server serves under ``/reports/`` and the experiments' comparison reads. The Dagster asset
(``assets/report.py``) is tested to carry this name, so renaming one without the other fails a test."""


def experiment_dir(data_dir: str | Path, name: str) -> Path:
    """Experiment ``name``'s artifact folder under the data folder ``data_dir``."""
    return Path(data_dir) / EXPERIMENTS_DIR / name


def report_dir(data_dir: str | Path, name: str | None = None) -> Path:
    """The report's folder: in the data folder ``data_dir``, or in experiment ``name``'s when given."""
    return (experiment_dir(data_dir, name) if name else Path(data_dir)) / REPORT_ASSET


def report_page_path(name: str | None = None) -> str:
    """Where the report server (``vlmrl-playground --data-dir``) serves the report of experiment ``name``, or of
    the main location when None."""
    return f"/{EXPERIMENTS_DIR}/{name}/reports/report.html" if name else "/reports/report.html"


@dataclass(frozen=True)
class Experiment:
    name: str = field(metadata={"help": "Asset key prefix and folder name: letters, digits and underscores."})
    profile: str = field(default="demo", metadata={"help": "The profile it starts from (``core.profiles.PROFILES``)."})
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "Settings group -> field -> value, applied over the profile."})


def _replace(settings: Any, changes: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(settings)}
    values = {}
    for name, value in changes.items():
        if name not in known:
            raise ValueError(f"{where}.{name}: no such setting; choose from {sorted(known)}")
        current = getattr(settings, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name} is a group of settings: give a mapping, got {value!r}")
            value = _replace(current, value, f"{where}.{name}")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    try:
        return dataclasses.replace(settings, **values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def experiment_profile(experiment: Experiment) -> Profile:
    """The experiment's profile: its base profile with the overrides applied (each checked as it is made).

    >>> experiment_profile(Experiment("small", "demo", {"data": {"eval_size": 30}})).data.eval_size
    30
    """
    from vlmrl_pipeline.core.profiles import PROFILES  # the settings stack, only when an experiment is built

    if experiment.profile not in PROFILES:
        raise ValueError(f"experiment {experiment.name}: unknown profile {experiment.profile!r}; "
                         f"choose one of {sorted(PROFILES)}")
    profile = PROFILES[experiment.profile]()
    changes = {}
    for group, fields in experiment.overrides.items():
        if group not in GROUPS:
            raise ValueError(f"experiment {experiment.name}: unknown settings group {group!r}; choose from {GROUPS}")
        if not isinstance(fields, dict):
            raise ValueError(f"experiment {experiment.name}: {group} must be a mapping of settings, got {fields!r}")
        changes[group] = _replace(getattr(profile, group), fields, f"experiment {experiment.name}: {group}")
    return dataclasses.replace(profile, name=experiment.name, **changes)


def parse_experiments(document: Any, source: str = "experiments file") -> dict[str, Experiment]:
    """The experiments of a parsed YAML document (``{"experiments": {name: {profile, group: {...}}}}``)."""
    if document is None:
        return {}
    if not isinstance(document, dict) or not isinstance(document.get("experiments", {}), dict):
        raise ValueError(f"{source}: expected a mapping 'experiments: {{name: {{profile: ..., data: ...}}}}'")
    experiments = {}
    for name, body in (document.get("experiments") or {}).items():
        name = str(name)
        if not NAME_PATTERN.match(name):
            raise ValueError(f"{source}: experiment name {name!r} must start with a letter and hold only letters, "
                             "digits and underscores (it becomes an asset key prefix and a folder name)")
        body = dict(body or {})
        profile = str(body.pop("profile", "demo"))
        experiment = Experiment(name, profile, body)
        experiment_profile(experiment)  # every setting checked when the file is read, before any run
        experiments[name] = experiment
    return experiments


def load_experiments(path: str | Path) -> dict[str, Experiment]:
    """The experiments declared in the YAML file at ``path`` (none when it does not exist)."""
    import yaml

    path = Path(path)
    if not path.exists():
        return {}
    return parse_experiments(yaml.safe_load(path.read_text()), str(path))


COMPARED = ("accuracy", "accuracy_mathvista", "format_compliance")
"""The headline metrics set side by side, before and after RL."""


def comparison_rows(reports: dict[str, dict | None]) -> list[dict[str, Any]]:
    """One row per experiment from its ``report.json`` (None: not materialized yet, kept as a row that says so).

    >>> rows = comparison_rows({"demo": {"num_samples": 4, "headline": {"baseline_accuracy": 0.25,
    ...     "after_accuracy": 0.75, "baseline_accuracy_mathvista": 0.25, "after_accuracy_mathvista": 0.75,
    ...     "baseline_format_compliance": 0.5, "after_format_compliance": 1.0},
    ...     "comparison": {"accuracy": {"ci_low": 0.1, "ci_high": 0.9, "p_value": 0.5}}}, "other": None})
    >>> rows[0]["after_accuracy"], rows[0]["accuracy_ci_low"], rows[1]["status"]
    (0.75, 0.1, 'no report yet')
    """
    rows = []
    for name, report in reports.items():
        if report is None:
            rows.append({"experiment": name, "status": "no report yet"})
            continue
        headline, comparison = report.get("headline", {}), report.get("comparison", {})
        row: dict[str, Any] = {"experiment": name, "status": "ok", "num_samples": report.get("num_samples")}
        for metric in COMPARED:
            row[f"baseline_{metric}"] = headline.get(f"baseline_{metric}")
            row[f"after_{metric}"] = headline.get(f"after_{metric}")
        for field_name in ("ci_low", "ci_high", "p_value"):
            row[f"accuracy_{field_name}"] = comparison.get("accuracy", {}).get(field_name)
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table: percentages, and the accuracy change's 95% interval."""
    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    lines = ["| experiment | n | accuracy before | after | change 95% CI (pts) | MathVista acc. before | after | "
             "format before | after |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['experiment']} | {row['status']} | | | | | | | |")
            continue
        low, high = row["accuracy_ci_low"], row["accuracy_ci_high"]
        interval = "-" if low is None or high is None else f"[{100 * low:+.1f}, {100 * high:+.1f}]"
        lines.append(f"| {row['experiment']} | {row['num_samples']} | {pct(row['baseline_accuracy'])} | "
                     f"{pct(row['after_accuracy'])} | {interval} | {pct(row['baseline_accuracy_mathvista'])} | "
                     f"{pct(row['after_accuracy_mathvista'])} | {pct(row['baseline_format_compliance'])} | "
                     f"{pct(row['after_format_compliance'])} |")
    return "\n".join(lines)


def declared_experiment_names(path: str | Path) -> list[str]:
    """The names under ``experiments:`` in the file at ``path``, unchecked: the main location lists them even when
    one of them is wrong (that experiment's own location says what is wrong). Empty without a readable file."""
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
        return [str(name) for name in (document or {}).get("experiments") or {}]
    except (OSError, yaml.YAMLError, AttributeError):
        return []
