"""The ``experiments`` code location: every experiment declared in ``experiments.yaml``, one repository each.

::

    load_from:
      - python_module: {module_name: vlmrl_pipeline.experiments_location, location_name: experiments,
                        working_directory: .}

The file (``$VLMRL_DATA_DIR/experiments.yaml`` or ``$VLMRL_EXPERIMENTS``) is read when the location loads. Dagster's
*Reload* of a code location restarts its code server, which imports this module again, so an experiment declared
(or changed) after ``dagster dev`` started appears on *Reload* / *Reload all*. A code location of its own per
experiment could not: ``dagster dev`` starts the code servers ``workspace.yaml`` lists once, when it starts, and its
reloads never add one. Each repository is what an experiment's own location used to serve
(``vlmrl_pipeline.experiments``): its profile, its assets under the key prefix ``<name>/``, its artifacts under
``$VLMRL_DATA_DIR/experiments/<name>/`` and its own resources, job, schedule and sensor. One repository each because
Dagster binds one resource per key in a repository (a location may hold several repositories).
"""

from __future__ import annotations

from dagster import RepositoryDefinition, create_repository_using_definitions_args

from vlmrl_pipeline.core.experiment_specs import experiment_dir, experiment_profile, load_experiments
from vlmrl_pipeline.definitions import definitions_args
from vlmrl_pipeline.resources import default_data_dir, experiments_file

NONE_DECLARED = "no_experiments_declared"
"""The one (empty) repository shown while the file declares none: the location loads, and says so."""


def experiment_repositories() -> dict[str, RepositoryDefinition]:
    """Experiment name -> its repository, for every experiment the file declares now. A malformed file raises its
    one error (naming the file and the place), which the UI shows as this location's load error; the main location
    is unaffected."""
    experiments = load_experiments(experiments_file())
    if not experiments:
        return {NONE_DECLARED: create_repository_using_definitions_args(name=NONE_DECLARED)}
    data_dir = default_data_dir()
    return {
        name: create_repository_using_definitions_args(
            name=name,
            **definitions_args(experiment_profile(experiment), data_dir=str(experiment_dir(data_dir, name)),
                               key_prefix=name),
        )
        for name, experiment in experiments.items()
    }


REPOSITORIES = experiment_repositories()
# Dagster's loader takes every RepositoryDefinition at module scope; prefixed so that no experiment's name can
# shadow a name of this module.
globals().update({f"repository__{name}": repo for name, repo in REPOSITORIES.items()})
