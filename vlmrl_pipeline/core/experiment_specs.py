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
import types
import typing
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


class ExperimentsFileError(ValueError):
    """A malformed experiments file: the message names the file and the place (line, experiment, field)."""


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` (from YAML) cannot be a setting of type ``hint``, or None. Only the plain types settings use
    are checked (bool, int, float, str, optional, tuples, literals); others are left to the dataclass's checks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is typing.Literal:
        return None if value in args else f"must be one of {list(args)}, got {value!r}"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {type(value).__name__} {value!r}"
        inner = args[0] if args else None
        for item in value:
            if inner is not None and inner is not Ellipsis and (problem := _type_problem(item, inner)):
                return f"item {item!r}: {problem}"
        return None
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if expected is None:
        return None
    if isinstance(value, bool) and hint is not bool:  # YAML's yes/no/true are bools, never numbers
        return f"must be {hint.__name__}, got the boolean {value!r}"
    return None if isinstance(value, expected) else f"must be {hint.__name__}, got {type(value).__name__} {value!r}"


def _replace(settings: Any, changes: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(settings)}
    hints = typing.get_type_hints(type(settings))
    values = {}
    for name, value in changes.items():
        if name not in known:
            raise ValueError(f"{where}.{name}: no such setting; choose from {sorted(known)}")
        current = getattr(settings, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name} is a group of settings: give a mapping, got {value!r}")
            value = _replace(current, value, f"{where}.{name}")
        else:
            if (problem := _type_problem(value, hints[name])) is not None:
                raise ValueError(f"{where}.{name} {problem}")
            if isinstance(current, tuple) and isinstance(value, list):
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


TOP_LEVEL_KEYS = ("experiments",)


def parse_experiments(document: Any, source: str = "experiments file") -> dict[str, Experiment]:
    """The experiments of a parsed YAML document (``{"experiments": {name: {profile, group: {...}}}}``), checked
    strictly: anything that is not exactly that shape, or a setting that cannot work, raises
    :class:`ExperimentsFileError` naming ``source`` (the file), the experiment and the field."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ExperimentsFileError(f"{source}: the file must be a mapping with the key 'experiments' "
                                   f"('experiments: {{name: {{profile: ..., data: ...}}}}'), got a "
                                   f"{type(document).__name__}: {repr(document)[:80]}")
    unknown = [str(k) for k in document if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ExperimentsFileError(f"{source}: unknown top-level key(s) {unknown}; the only key is 'experiments'")
    declared = document.get("experiments")
    if declared is None:
        return {}
    if not isinstance(declared, dict):
        raise ExperimentsFileError(f"{source}: 'experiments' must be a mapping of experiment name to settings, got "
                                   f"{type(declared).__name__} {repr(declared)[:80]}")
    experiments = {}
    for name, body in declared.items():
        name = str(name)
        if not NAME_PATTERN.match(name):
            raise ExperimentsFileError(
                f"{source}: experiment name {name!r} must start with a letter and hold only letters, digits and "
                "underscores (it becomes an asset key prefix and a folder name)")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ExperimentsFileError(f"{source}: experiment {name} must be a mapping (profile, {', '.join(GROUPS)}), "
                                       f"got {type(body).__name__} {repr(body)[:80]}")
        body = dict(body)
        profile = body.pop("profile", "demo")
        if not isinstance(profile, str):
            raise ExperimentsFileError(f"{source}: experiment {name}: profile must be a profile's name, "
                                       f"got {profile!r}")
        experiment = Experiment(name, profile, body)
        try:
            experiment_profile(experiment)  # every setting checked when the file is read, before any run
        except ValueError as exc:
            raise ExperimentsFileError(f"{source}: {exc}") from None
        experiments[name] = experiment
    return experiments


def _strict_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML silently keeps the last)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: let PyYAML report it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice (first on line {first})", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def read_experiments_document(path: str | Path) -> Any:
    """The parsed YAML of the file at ``path``; text that is not UTF-8 or not YAML raises
    :class:`ExperimentsFileError` naming the file and the line."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExperimentsFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ExperimentsFileError(f"{path}: line {line}: byte 0x{raw[exc.start]:02x} (offset {exc.start}) is not "
                                   "UTF-8 text; save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise ExperimentsFileError(f"{path}: {where}not valid YAML ({what})") from None
    except yaml.YAMLError as exc:
        raise ExperimentsFileError(f"{path}: not valid YAML ({exc})") from None


def load_experiments(path: str | Path) -> dict[str, Experiment]:
    """The experiments declared in the YAML file at ``path`` (none when it does not exist); any malformed content
    raises :class:`ExperimentsFileError` naming the file and the place."""
    path = Path(path)
    if not path.exists():
        return {}
    return parse_experiments(read_experiments_document(path), str(path))


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


def declared_experiments(path: str | Path) -> tuple[list[str], str | None]:
    """The experiment names declared in the file at ``path`` and, when the file is malformed, why (else None).

    For the main location, which must load whatever the file holds: it never raises. The names are those of a
    valid file; of a malformed one, whatever names its ``experiments`` mapping still shows (each such
    experiment's own location then fails with the same error), or none.
    """
    path = Path(path)
    if not path.exists():
        return [], None
    try:
        return list(load_experiments(path)), None
    except ExperimentsFileError as exc:
        problem = str(exc)
    except Exception as exc:  # noqa: BLE001 - nothing in this file may stop the main location from loading
        problem = f"{path}: {type(exc).__name__}: {exc}"
    try:
        document = read_experiments_document(path)
        declared = document.get("experiments") if isinstance(document, dict) else None
        names = [str(n) for n in declared if NAME_PATTERN.match(str(n))] if isinstance(declared, dict) else []
    except Exception:  # noqa: BLE001 - unreadable: no names
        names = []
    return names, problem


def declared_experiment_names(path: str | Path) -> list[str]:
    """The names of :func:`declared_experiments`, without the problem."""
    return declared_experiments(path)[0]
