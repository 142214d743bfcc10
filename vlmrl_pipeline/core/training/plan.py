"""What one ``lora_adapter`` materialization will run, decided before anything launches: the plan of a training run.

:func:`plan_training` takes the stage's settings, the checkpoint being trained and the ``resized_images`` manifest,
and either refuses (``ValueError`` naming the settings, before any model loads) or returns a :class:`TrainingPlan`:
the rewards, the rollout engine and the switches it sets, the processes, GPUs and machines, and the
``TrainingJob`` the training process reads. :func:`choose_work_dir` picks the checkpoint folder a run writes and
resumes from. The asset (``assets.training``) adds what needs Dagster: the lock, the run log, Pipes and metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmrl_pipeline.core.atomic import ArtifactBusyError, exclusive
from vlmrl_pipeline.core.evaluation.vllm_engine import vllm_problems
from vlmrl_pipeline.core.export.merge import read_checkpoint_config
from vlmrl_pipeline.core.model.loading import resolve_backend
from vlmrl_pipeline.core.reward_plugins import reward_kwargs_for_rows, reward_problems
from vlmrl_pipeline.core.rewards import RewardSet, gspo_reward_set, reward_set, reward_set_version
from vlmrl_pipeline.core.samples import SPLIT_TRAIN, SPLIT_VALIDATION, split_rows
from vlmrl_pipeline.core.settings_check import vllm_conflicts
from vlmrl_pipeline.core.training.checkpoints import (
    other_work_dirs,
    prepare_work_dir,
    resume_candidates,
    set_aside,
    training_inputs,
)
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, report_to_problems
from vlmrl_pipeline.core.training.job import TrainingJob
from vlmrl_pipeline.core.training.k8s_workers import training_machines
from vlmrl_pipeline.core.training.launch import (
    DEFAULT_MAIN_PROCESS_PORT,
    Machines,
    accelerate_config,
    check_backend_supports,
    resolve_num_processes,
    visible_gpu_count,
    visible_gpu_ids,
)
from vlmrl_pipeline.core.training.rollout_engine import RolloutEngineChoice, resolve_rollout_engine
from vlmrl_pipeline.core.training.rollout_server import (
    RolloutServerSettings,
    plan_gpus,
    server_runtime_problems,
    server_settings_problems,
)

if TYPE_CHECKING:
    import pandas as pd

    from vlmrl_pipeline.core.profiles import DataSettings, ModelSettings


@dataclass(frozen=True)
class TrainingPlan:
    """A training run as it will be launched; every refusal has already happened."""

    model: ModelSettings
    """``model_settings`` with the rollout engine's switch applied (``fast_inference``)."""
    gspo: GSPOSettings
    """``training_settings`` with the engine's ``use_vllm`` applied (the server's address is filled in later)."""
    data: DataSettings
    backend: str
    engine: RolloutEngineChoice
    rewards: RewardSet
    gpus: int
    """GPUs this machine sees."""
    processes: int
    """Training processes over all machines."""
    per_machine: int
    gpu_ids: str
    """The GPUs training takes here (the server's are left out)."""
    machines: Machines = field(default_factory=Machines)
    server: RolloutServerSettings = field(default_factory=RolloutServerSettings)

    @property
    def starts_server(self) -> bool:
        """Whether the step starts the rollout server itself (server mode with GPUs named for it)."""
        return self.gspo.vllm_mode == "server" and bool(self.server.gpu_ids)

    @property
    def prompt_style(self) -> dict[str, str]:
        """The prompt settings as the job file and the checkpoint key carry them."""
        return {"prompt_field": self.data.prompt_field, "answer_format": self.data.answer_format,
                "system_prompt": self.data.system_prompt}

    def checkpoint_inputs(self, *, base_model_ref: dict[str, Any], base_model_files: Any, manifest_sha256: str,
                          code_version: str) -> dict[str, Any]:
        """What the checkpoint folder is keyed by (``core.training.checkpoints.training_inputs``): a resumed run
        continues only a run of the same settings, data, base model, rewards and process count."""
        return training_inputs(
            gspo=asdict(self.gspo), model=asdict(self.model), prompt_style=self.prompt_style,
            base_model_ref=base_model_ref, base_model_files=base_model_files, manifest_sha256=manifest_sha256,
            reward_version=reward_set_version(self.rewards), num_processes=self.processes,
            code_version=code_version)

    def with_server(self, base_url: str) -> TrainingPlan:
        """The plan training against the rollout server at ``base_url``."""
        return replace(self, gspo=replace(self.gspo, vllm_server_base_url=base_url))

    def job(self, *, base_model_path: str, base_model_ref: dict[str, Any], manifest_dir: str | Path,
            adapter_dir: str | Path, work_dir: Path, training_lock: str | Path) -> TrainingJob:
        """The job the training process runs (written to ``launch/job.json`` beside the checkpoints)."""
        return TrainingJob(
            base_model_path=base_model_path, base_model_ref=base_model_ref, manifest_dir=str(manifest_dir),
            adapter_dir=str(adapter_dir), work_dir=str(work_dir), checkpoint_key=work_dir.name,
            model=asdict(self.model), prompt_style=self.prompt_style, gspo=asdict(self.gspo),
            num_processes=self.processes, training_lock=str(training_lock), rollout_engine=self.engine.record())

    def accelerate_config(self) -> dict[str, Any]:
        """``accelerate launch``'s configuration for this plan's processes, GPUs and machines."""
        return accelerate_config(self.processes, self.gspo.distributed, use_cpu=self.gpus == 0,
                                 gpu_ids=self.gpu_ids, machines=self.machines)


def plan_training(model: ModelSettings, data: DataSettings, gspo: GSPOSettings, server: RolloutServerSettings, *,
                  load_path: str, revision: str | None, manifest: pd.DataFrame, gpus: int | None = None,
                  num_machines: int | None = None, main_address: Callable[[], str] | None = None) -> TrainingPlan:
    """The run these settings ask for on this machine, or a ``ValueError`` naming every setting that cannot work.

    ``gpus`` (visible GPUs) and ``num_machines`` (``VLMRL_TRAINING_MACHINES``) default to this machine's;
    ``main_address`` gives rank 0's address when training spans several machines.
    """
    reward_set(data.answer_format)  # an unknown format is refused first
    train_rows = split_rows(manifest, SPLIT_TRAIN)  # no training rows: say so now
    # A plugged-in reward that does not import or score a real training row, and validation settings without
    # validation rows.
    rewards = gspo_reward_set(data.answer_format, gspo)
    if gspo.reward_funcs:
        problems = reward_problems(tuple(gspo.reward_funcs), reward_kwargs_for_rows(train_rows.head(1),
                                                                                    data.prompt_style))
        if problems:
            raise ValueError("; ".join(problems))
    num_validation = int((manifest["split"] == SPLIT_VALIDATION).sum())
    if (gspo.eval_steps or gspo.keep_checkpoint == "best_validation") and not num_validation:
        raise ValueError(f"training_settings.eval_steps={gspo.eval_steps} / "
                         f"keep_checkpoint={gspo.keep_checkpoint!r} need validation rows, but resized_images' "
                         "manifest has none: set data_settings.validation_size and materialize resized_images again")
    gpus = visible_gpu_count() if gpus is None else gpus
    if gspo.vllm_mode == "server" and server.gpu_ids:  # training takes the GPUs the server leaves it
        processes, gpu_ids = plan_gpus(server, visible_gpu_ids(gpus).split(",") if gpus else [], gspo.num_processes)
    else:
        processes = resolve_num_processes(gspo.num_processes, gpus)
        gpu_ids = visible_gpu_ids(processes)
    machines = Machines()
    per_machine = processes
    num_machines = training_machines() if num_machines is None else num_machines
    if num_machines > 1:  # this pod is machine rank 0; a Kubernetes Job runs the others (k8s_training)
        if gpus == 0 or gspo.vllm_mode == "server":
            raise ValueError(f"VLMRL_TRAINING_MACHINES={num_machines} trains on the GPUs of several machines: "
                             + ("this step sees none" if gpus == 0 else "training_settings.vllm_mode='server' is "
                                "offered on one machine only; use vllm_mode='colocate'"))
        if main_address is None:
            raise ValueError(f"VLMRL_TRAINING_MACHINES={num_machines}: rank 0's address is not known here")
        machines = Machines(num_machines, 0, main_address(), DEFAULT_MAIN_PROCESS_PORT)
        processes = per_machine * machines.num_machines
    gspo.check_generation_batch(processes)  # num_processes=0 resolves only here
    backend = resolve_backend(model.backend)
    check_backend_supports(backend, processes, gspo.distributed)
    if gspo.eval_steps and processes > 1 and gspo.distributed == "fsdp":
        raise ValueError("training_settings.eval_steps with distributed='fsdp' is not supported: validation "
                         "generates on the whole policy, which FSDP shards; use ddp, one process, or eval_steps=0")
    # Resolved before the checks, the checkpoint key and the job: they all see the switches training runs with, so
    # a resumed run cannot change engines unnoticed (its key would differ).
    model_type = read_checkpoint_config(load_path, revision).get("model_type")
    engine = resolve_rollout_engine(model, gspo, backend, model_type=model_type)
    if engine.problems:
        raise ValueError("; ".join(engine.problems))
    model, gspo = engine.apply(model, gspo)
    refusals = vllm_conflicts(model, gspo, backend) + server_settings_problems(gspo, server, backend)
    if gspo.vllm_mode == "server" and not gspo.use_vllm:
        refusals.append(f"training_settings.vllm_mode='server' generates rollouts on vLLM, but the rollout engine "
                        f"resolved to model.generate ({engine.reason}): set training_settings.rollout_engine='vllm'")
    if gspo.use_vllm:
        refusals += vllm_problems("training_settings.use_vllm=True")
    if gspo.vllm_mode == "server":
        refusals += server_runtime_problems(server)
    refusals += report_to_problems(gspo)
    if refusals:
        raise ValueError("; ".join(refusals))
    return TrainingPlan(model=model, gspo=gspo, data=data, backend=backend, engine=engine, rewards=rewards,
                        gpus=gpus, processes=processes, per_machine=per_machine, gpu_ids=gpu_ids, machines=machines,
                        server=server)


@dataclass(frozen=True)
class WorkDir:
    """The checkpoint folder a run writes and resumes from, and what choosing it found."""

    path: Path
    resume_from: Path | None
    """The newest checkpoint that verifies (None: training starts from step 0)."""
    other_settings: list[Path]
    """Checkpoint folders written for other settings, data or base model: never resumed, left in place."""
    set_aside: list[tuple[str, str, str]]
    """(checkpoint, why it does not verify, the name it was renamed to) for each unusable checkpoint."""


def choose_work_dir(checkpoints_root: str | Path, inputs: dict[str, Any], training_lock: str | Path) -> WorkDir:
    """The folder keyed by ``inputs`` (made if new), after making sure no training process of an earlier, killed
    run still writes into it (``ArtifactBusyError``); checkpoints that do not verify are renamed out of the way
    (not deleted: there for a person to inspect) and the newest one that does is the one to resume."""
    work = prepare_work_dir(checkpoints_root, inputs)
    others = other_work_dirs(checkpoints_root, work.name)
    try:
        with exclusive(training_lock):
            pass  # free: no training process of an earlier run is still at work on this data folder
    except ArtifactBusyError as exc:
        raise ArtifactBusyError(
            f"a training process of an earlier (killed) run is still running on this data folder, and would write "
            f"the same checkpoints: stop it (kill its pid) or wait for it to end, then materialize again. {exc}"
        ) from None
    # After the lock check: a live training process may still be writing its newest checkpoint.
    found, unusable = resume_candidates(work)
    aside = [(folder.name, problem, set_aside(folder).name) for folder, problem in unusable]
    launch_errors = work / "launch" / "errors"
    for old_error in launch_errors.glob("rank-*.json"):  # a failed attempt's, not this run's
        old_error.unlink()
    return WorkDir(path=work, resume_from=found[0] if found else None, other_settings=others, set_aside=aside)
