"""Training stage: GSPO with LoRA on the training split, in its own process(es) launched through Dagster Pipes."""

import json
import os
import shlex
import shutil
from dataclasses import asdict

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    PipesSubprocessClient,
    asset,
    asset_check,
)

import vlmrl_pipeline
from vlmrl_pipeline.assets.data import resized_images
from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.preflight import export_preflight
from vlmrl_pipeline.assets.provenance import lineage
from vlmrl_pipeline.core.atomic import ArtifactBusyError, exclusive
from vlmrl_pipeline.core.checkpoints import (
    local_files_state,
    other_work_dirs,
    prepare_work_dir,
    remove_work_dir,
    resume_candidates,
    set_aside,
    training_inputs,
)
from vlmrl_pipeline.core.export.merge import inspect_lora_adapter
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.gspo_config import report_targets, report_to_problems
from vlmrl_pipeline.core.launch import (
    accelerate_command,
    accelerate_config,
    check_backend_supports,
    default_cpu_threads,
    resolve_num_processes,
    visible_gpu_count,
    visible_gpu_ids,
    write_accelerate_config,
)
from vlmrl_pipeline.core.modeling import resolve_backend
from vlmrl_pipeline.core.plots import png_markdown, training_curves_png
from vlmrl_pipeline.core.rewards import (
    gspo_reward_set,
    reward_import_roots,
    reward_kwargs_for_rows,
    reward_problems,
    reward_set,
    reward_set_version,
)
from vlmrl_pipeline.core.rollout_engine import resolve_rollout_engine
from vlmrl_pipeline.core.samples import MANIFEST_NAME, SPLIT_TRAIN, SPLIT_VALIDATION, read_manifest, split_rows
from vlmrl_pipeline.core.settings_check import vllm_conflicts
from vlmrl_pipeline.core.training import rollout_summary
from vlmrl_pipeline.core.training_job import TRAINING_LOG, TrainingJob, TrainingProcessError, describe_failure
from vlmrl_pipeline.core.vllm_engine import vllm_problems
from vlmrl_pipeline.execution import GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import (
    NO_OP_CONFIG,
    ArtifactStore,
    DataSettingsResource,
    ExportSettingsResource,
    ModelSettingsResource,
    TrainingSettingsResource,
)

TRAINING_CODE_VERSION = "training-2"
CHECKPOINTS_DIR = "lora_adapter_checkpoints"
"""Beside the asset folders: ``<key>/checkpoint-<step>`` per set of training inputs (see ``core.checkpoints``)."""
TENSORBOARD_DIR = "tensorboard"
"""The adapter folder's TensorBoard event files (``tensorboard --logdir data/lora_adapter/tensorboard``)."""
TRAINING_LOCK = "lora_adapter_training"
"""Its lock file (``.lora_adapter_training.lock``) is held by the training process itself: a process that outlived
its killed step (the step's own lock died with it) still blocks a second training on the same checkpoints."""
HASH_CACHE = ".cache/base_model_sha256.json"
"""sha256 of the base model's files by path, size and mtime: the checkpoint key hashes content, once per file."""


@asset(config_schema=NO_OP_CONFIG,
       group_name="training", deps=[base_model, resized_images], kinds={"pytorch", "trl"},
       code_version=TRAINING_CODE_VERSION, pool=GPU_POOL, tags=GPU_TAGS, op_tags=gpu_op_tags())
def lora_adapter(
    context: AssetExecutionContext,
    artifacts: ArtifactStore,
    model_settings: ModelSettingsResource,
    data_settings: DataSettingsResource,
    training_settings: TrainingSettingsResource,
    export_settings: ExportSettingsResource,
) -> MaterializeResult:
    """A LoRA adapter trained with GSPO (TRL ``GRPOTrainer``, ``importance_sampling_level="sequence"``).

    Rewards follow ``answer_format``: the seeds' formatting and correctness functions weighted 0.3 and 1.0
    (``tags``), or RLinf's +1/0 boxed-answer reward (``boxed``), unless ``reward_funcs`` names others (each tried on
    a training row before anything launches). Prompts that overflow the context are dropped and counted first.
    With ``eval_steps`` the policy is evaluated on the validation rows during training, and ``keep_checkpoint``
    picks the adapter written (the metadata says which step and why). LoRA sits on the language model's attention
    and MLP projections; the vision tower is frozen.
    Trains on the training split only. Training runs in its own process(es): ``accelerate launch`` through Dagster
    Pipes, one process on a CPU or one per GPU (``num_processes``, ``distributed``), with its logs and metrics
    streamed into this run. Checkpoints every ``save_steps`` go to a folder keyed by the training inputs; after a
    killed run, materializing again resumes from the newest one. Saved in PEFT's format
    (``adapter_model.safetensors`` + ``adapter_config.json``) with the trainer's log history. One materialization
    per data folder at a time: a second one fails at once, naming the first (its checkpoint folder and launch
    files would be shared).
    """
    with artifacts.lock(context.asset_key):
        return _train(context, artifacts, model_settings, data_settings, training_settings, export_settings)


def _train(context: AssetExecutionContext, artifacts: ArtifactStore, model_settings: ModelSettingsResource,
           data_settings: DataSettingsResource, training_settings: TrainingSettingsResource,
           export_settings: ExportSettingsResource) -> MaterializeResult:
    model_cfg = model_settings.to_core()
    data = data_settings.to_core()
    gspo = training_settings.to_core()
    reward_set(data.answer_format)  # an unknown format is refused here, before anything is launched
    artifacts.verify(base_model, resized_images, log=context.log.warning)  # the weights and every training image
    load_path, ref = base_model_path(artifacts)
    manifest_dir = artifacts.asset_dir(resized_images)
    manifest = read_manifest(manifest_dir)
    train_rows = split_rows(manifest, SPLIT_TRAIN)  # no manifest or no training rows: say so now
    # Refused before any model loads: a plugged-in reward that does not import or score a real training row, and
    # validation settings without validation rows.
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
    gpus = visible_gpu_count()
    processes = resolve_num_processes(gspo.num_processes, gpus)
    gspo.check_generation_batch(processes)  # num_processes=0 resolves only here
    backend = resolve_backend(model_cfg.backend)
    check_backend_supports(backend, processes, gspo.distributed)
    if gspo.eval_steps and processes > 1 and gspo.distributed == "fsdp":
        raise ValueError("training_settings.eval_steps with distributed='fsdp' is not supported: validation "
                         "generates on the whole policy, which FSDP shards; use ddp, one process, or eval_steps=0")
    # Resolved before the checks, the checkpoint key and the job: they all see the switches training runs with, so
    # a resumed run cannot change engines unnoticed (its key would differ).
    engine = resolve_rollout_engine(model_cfg, gspo, backend)
    if engine.problems:
        raise ValueError("; ".join(engine.problems))
    model_cfg, gspo = engine.apply(model_cfg, gspo)
    context.log.info(engine.reason)
    refusals = vllm_conflicts(model_cfg, gspo, backend)
    if gspo.use_vllm:
        refusals += vllm_problems("training_settings.use_vllm=True")
    refusals += report_to_problems(gspo)
    if refusals:
        raise ValueError("; ".join(refusals))
    # What can only fail after training (the export's disk, memory, converter support) is checked now.
    export_need = export_preflight(artifacts, export_settings, load_path, ref.get("revision"))
    context.log.info(f"export will need about {export_need['disk_bytes'] / 1e9:.1f} GB of disk; merging on the CPU "
                     f"about {export_need['merge_host_bytes_on_cpu'] / 1e9:.1f} GB of host memory")
    style = {"prompt_field": data.prompt_field, "answer_format": data.answer_format,
             "system_prompt": data.system_prompt}
    inputs = training_inputs(
        gspo=asdict(gspo), model=asdict(model_cfg), prompt_style=style, base_model_ref=ref,
        base_model_files=local_files_state(load_path, cache_file=artifacts.asset_dir(HASH_CACHE)),
        manifest_sha256=sha256_file(manifest_dir / MANIFEST_NAME),
        reward_version=reward_set_version(rewards), num_processes=processes, code_version=TRAINING_CODE_VERSION,
    )
    checkpoints_root = artifacts.asset_dir(CHECKPOINTS_DIR)
    work = prepare_work_dir(checkpoints_root, inputs)
    stale = other_work_dirs(checkpoints_root, work.name)
    if stale:
        context.log.warning(f"not resuming {len(stale)} checkpoint folder(s) written for other settings, data or base "
                            f"model: {[p.name for p in stale]} (left in {checkpoints_root}; delete them to free space)")
    training_lock = artifacts.asset_dir(TRAINING_LOCK)
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
    for folder, problem in unusable:
        # Renamed, not deleted: out of the trainer's rotation and never resumed, but there for a person to inspect.
        aside = set_aside(folder)
        context.log.warning(f"skipping {folder.name}: {problem}; renamed to {aside.name}"
                            + (f", resuming from {found[0].name} instead" if found else ", and no older checkpoint "
                               "verifies: training starts from step 0"))
    context.log.info(f"checkpoint folder {work}: " + (f"resuming from {found[0].name}" if found else "starting fresh"))
    launch_dir = work / "launch"
    for old_error in (launch_dir / "errors").glob("rank-*.json"):
        old_error.unlink()
    with artifacts.staging(context.asset_key) as tmp:
        job_file = TrainingJob(
            base_model_path=load_path, base_model_ref=ref, manifest_dir=str(manifest_dir), adapter_dir=str(tmp),
            work_dir=str(work), checkpoint_key=work.name, model=asdict(model_cfg), prompt_style=style,
            gspo=asdict(gspo), num_processes=processes, training_lock=str(training_lock),
            rollout_engine=engine.record(),
        ).write(launch_dir / "job.json")
        config_file = write_accelerate_config(launch_dir / "accelerate_config.yaml", accelerate_config(
            processes, gspo.distributed, use_cpu=gpus == 0, gpu_ids=visible_gpu_ids(processes)))
        command = accelerate_command(config_file, job_file, cpu_threads=default_cpu_threads(processes))
        context.log.info(f"launching {processes} training process(es): {shlex.join(command)}")
        try:
            invocation = PipesSubprocessClient().run(
                command=command, context=context, extras={"job": str(job_file), "checkpoint_key": work.name},
                env=_child_env(reward_import_roots(tuple(gspo.reward_funcs))),
            )
        except Exception as exc:  # the process exited non-zero (Dagster's DagsterPipesExecutionError) or died
            raise TrainingProcessError(describe_failure(job_file, work, str(exc))) from exc
        reported = dict(invocation.get_materialize_result().metadata or {})
        log = json.loads((tmp / TRAINING_LOG).read_text())
        kept = log.get("kept_checkpoint") or {}
        curves = training_curves_png(log["log_history"])
        (tmp / "training_curves.png").write_bytes(curves)
        # transformers writes TensorBoard events under the trainer's output dir (one folder per attempt, so a
        # resumed run keeps the killed one's too); they move with the adapter.
        if (work / "runs").is_dir():
            shutil.copytree(work / "runs", tmp / TENSORBOARD_DIR)
        stats = inspect_lora_adapter(tmp)
    remove_work_dir(work)  # the adapter is in place; its checkpoints are no longer needed
    logged = [float(h["reward"]) for h in log["log_history"] if "reward" in h]
    rollout = rollout_summary(log["log_history"])
    return MaterializeResult(
        metadata={
            **environment_metadata(),
            "path": MetadataValue.path(str(artifacts.asset_dir(context.asset_key))),
            **reported,  # from the training process: backend, train_rows, global_step, resumed_from_step, ...
            **lineage(artifacts),  # adapter_sha256 below: this run's adapter
            "reward_version": log["reward_version"],
            "reward_functions": ", ".join(log["reward_functions"]),
            "reward_weights": MetadataValue.json(log["reward_weights"]),
            **({"reward_paths": MetadataValue.json(log["reward_paths"])} if log.get("reward_paths") else {}),
            "kept_checkpoint": kept.get("policy", "last"),
            "kept_checkpoint_step": int(kept.get("step", log["global_step"])),
            "kept_checkpoint_why": kept.get("why", ""),
            **({"validation_rows": log["validation"]["rows"],
                "kept_validation": MetadataValue.json(kept.get("validation"))}
               if log.get("validation", {}).get("rows") else {}),
            "first_logged_reward": logged[0] if logged else float("nan"),
            "final_logged_reward": logged[-1] if logged else float("nan"),
            "adapter_sha256": stats["sha256"],
            "lora_b_nonzero": f"{stats['num_lora_b_nonzero']}/{stats['num_lora_b']}",
            "lora_all_finite": stats["all_finite"],
            "rollout_engine": engine.label,
            "rollout_engine_setting": engine.setting,
            "rollout_engine_reason": engine.reason,
            "report_to": gspo.report_to,
            **({"tensorboard_logdir": MetadataValue.path(str(artifacts.asset_dir(context.asset_key) / TENSORBOARD_DIR))}
               if "tensorboard" in report_targets(gspo.report_to) else {}),
            **({"rollout_and_entropy": MetadataValue.json(rollout)} if rollout else {}),
            "training_curves": MetadataValue.md(png_markdown(curves, "GSPO training curves")),
        }
    )


def _child_env(extra_paths: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The training process imports this package from wherever the launching step did, and the plugged-in
    rewards' modules from the folders this step imported them from (``extra_paths``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(vlmrl_pipeline.__file__)))
    path = os.environ.get("PYTHONPATH")
    roots = os.pathsep.join([root, *extra_paths])
    return {"PYTHONPATH": roots + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@asset_check(asset=lora_adapter, blocking=True,
             description="Every LoRA weight is finite and at least one LoRA B matrix is non-zero")
def lora_weights_trained(artifacts: ArtifactStore) -> AssetCheckResult:
    """An adapter with NaN/inf weights, or whose B matrices are all still zero (PEFT's initialisation: the
    adapter changes nothing), must not be evaluated, merged or exported as if it were a trained policy."""
    stats = inspect_lora_adapter(artifacts.asset_dir(lora_adapter))
    return AssetCheckResult(
        passed=bool(stats["all_finite"]) and stats["num_lora_b"] > 0 and stats["num_lora_b_nonzero"] > 0,
        metadata={
            "all_finite": bool(stats["all_finite"]),
            "num_lora_b": stats["num_lora_b"],
            "num_lora_b_nonzero": stats["num_lora_b_nonzero"],
            "max_abs_lora_b": stats["max_abs_lora_b"],
            "adapter_sha256": stats["sha256"],
        },
    )
