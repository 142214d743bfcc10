"""One experiment as a code location of its own: the older form (the project's ``workspace.yaml`` serves every
experiment from one location, ``vlmrl_pipeline.experiments_location``, which a reload re-reads; ``dagster dev``
adds a location only when it restarts).

::

    load_from:
      - python_module: {module_name: vlmrl_pipeline.experiments, attribute: demo_boxed, working_directory: .}

The attribute is the experiment's name, declared in ``$VLMRL_DATA_DIR/experiments.yaml`` (or
``$VLMRL_EXPERIMENTS``); this module builds its Definitions on first access: the experiment's
profile (``core.experiment_specs``), its assets under the key prefix ``demo_boxed/``, and its artifacts under
``$VLMRL_DATA_DIR/experiments/demo_boxed/``. The UI lists each experiment as a location and its assets under their
prefix, with their own materializations, metadata plots and staleness, beside the main location's.
"""

from __future__ import annotations

from functools import cache

from dagster import Definitions

from vlmrl_pipeline.core.experiment_specs import experiment_dir, experiment_profile, load_experiments
from vlmrl_pipeline.definitions import build_definitions
from vlmrl_pipeline.resources import default_data_dir, experiments_file


@cache
def experiment_definitions(name: str) -> Definitions:
    """The code location of experiment ``name`` (a clear error naming the file when it is not declared there)."""
    path = experiments_file()
    experiments = load_experiments(path)
    if name not in experiments:
        raise ValueError(f"no experiment {name!r} in {path}; declared: {sorted(experiments) or 'none'}")
    data_dir = str(experiment_dir(default_data_dir(), name))
    return build_definitions(experiment_profile(experiments[name]), data_dir=data_dir, key_prefix=name)


def __getattr__(name: str) -> Definitions:
    if name.startswith("_"):
        raise AttributeError(name)
    return experiment_definitions(name)
