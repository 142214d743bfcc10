"""Training stage: GSPO with LoRA on the training split, in its own process(es) launched through Dagster Pipes."""

import json
import os
import shlex
import shutil
from contextlib import ExitStack

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
from vlmrl_pipeline.assets.export_preflight import export_preflight
from vlmrl_pipeline.assets.metadata import environment_metadata
from vlmrl_pipeline.assets.model import base_model, base_model_path
from vlmrl_pipeline.assets.provenance import card_facts, card_sample, lineage
from vlmrl_pipeline.core.evaluation.plots import png_markdown, training_curves_png
from vlmrl_pipeline.core.export.merge import inspect_lora_adapter, read_checkpoint_config
from vlmrl_pipeline.core.files import sha256_file
from vlmrl_pipeline.core.model.card import (
    CARD_NAME,
    adapter_card,
    make_adapter_portable,
    model_class_name,
    portable_base_reference,
    save_base_processor,
)
from vlmrl_pipeline.core.reward_plugins import reward_import_roots
from vlmrl_pipeline.core.samples import MANIFEST_NAME, read_manifest
from vlmrl_pipeline.core.training.checkpoints import (
    local_files_state,
    remove_work_dir,
)
from vlmrl_pipeline.core.training.dynamic_sampling import dynamic_sampling_summary
from vlmrl_pipeline.core.training.gspo_config import report_targets
from vlmrl_pipeline.core.training.job import TRAINING_LOG, TrainingProcessError, describe_failure
from vlmrl_pipeline.core.training.k8s_workers import worker_job_name
from vlmrl_pipeline.core.training.launch import (
    accelerate_command,
    default_cpu_threads,
    write_accelerate_config,
)
from vlmrl_pipeline.core.training.plan import choose_work_dir, plan_training
from vlmrl_pipeline.core.training.run_history import keep_run, run_folder_name, run_folders
from vlmrl_pipeline.core.training.trainer import rollout_summary
from vlmrl_pipeline.execution import GPU_POOL, GPU_TAGS, gpu_op_tags
from vlmrl_pipeline.resources import (
    NO_OP_CONFIG,
    ArtifactStore,
    DataSettingsResource,
    ExportSettingsResource,
    ModelSettingsResource,
    RolloutServerResource,
    TrainingSettingsResource,
    asset_folder,
)

TRAINING_CODE_VERSION = "training-3"
CHECKPOINTS_DIR = "lora_adapter_checkpoints"
"""Beside the asset folders: ``<key>/checkpoint-<step>`` per set of training inputs (see
``core.training.checkpoints``)."""
TRAINING_CURVES = "training_curves.png"
TENSORBOARD_DIR = "tensorboard"
"""The adapter folder's TensorBoard event files (``tensorboard --logdir data/lora_adapter/tensorboard``)."""
TENSORBOARD_HISTORY_DIR = "lora_adapter_tensorboard"
"""Beside the asset folders: one run folder of event files per materialization, kept across re-materializations
within ``training_settings.tensorboard_history_mb`` (``tensorboard --logdir data/lora_adapter_tensorboard``)."""
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
    rollout_server: RolloutServerResource,
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
    (``adapter_model.safetensors`` + ``adapter_config.json``) with the trainer's log history, and made to stand alone
    (``core.model.card``): a base reference that works on another machine, PEFT's auto mapping instead of a task
    type, the base's processor and a model card. One materialization
    per data folder at a time: a second one fails at once, naming the first (its checkpoint folder and launch
    files would be shared).
    """
    with artifacts.lock(context.asset_key):
        return _train(context, artifacts, model_settings, data_settings, training_settings, export_settings,
                      rollout_server)


def _train(context: AssetExecutionContext, artifacts: ArtifactStore, model_settings: ModelSettingsResource,
           data_settings: DataSettingsResource, training_settings: TrainingSettingsResource,
           export_settings: ExportSettingsResource, rollout_server: RolloutServerResource) -> MaterializeResult:
    artifacts.verify(base_model, resized_images, log=context.log.warning)  # the weights and every training image
    load_path, ref = base_model_path(artifacts)
    manifest_dir = artifacts.asset_dir(resized_images)
    # Every refusal happens here, before any model loads (core.training.plan).
    plan = plan_training(model_settings.to_core(), data_settings.to_core(), training_settings.to_core(),
                         rollout_server.to_core(), load_path=load_path, revision=ref.get("revision"),
                         manifest=read_manifest(manifest_dir), main_address=_step_pod_address)
    context.log.info(plan.engine.reason)
    # What can only fail after training (the export's disk, memory, converter support) is checked now.
    export_need = export_preflight(artifacts, export_settings, load_path, ref.get("revision"))
    context.log.info(f"export will need about {export_need['disk_bytes'] / 1e9:.1f} GB of disk; merging on the CPU "
                     f"about {export_need['merge_host_bytes_on_cpu'] / 1e9:.1f} GB of host memory")
    inputs = plan.checkpoint_inputs(
        base_model_ref=ref, base_model_files=local_files_state(load_path, cache_file=artifacts.asset_dir(HASH_CACHE)),
        manifest_sha256=sha256_file(manifest_dir / MANIFEST_NAME), code_version=TRAINING_CODE_VERSION)
    checkpoints_root = artifacts.asset_dir(CHECKPOINTS_DIR)
    training_lock = artifacts.asset_dir(TRAINING_LOCK)
    work_dir = choose_work_dir(checkpoints_root, inputs, training_lock)
    work, found = work_dir.path, work_dir.resume_from
    if work_dir.other_settings:
        context.log.warning(f"not resuming {len(work_dir.other_settings)} checkpoint folder(s) written for other "
                            f"settings, data or base model: {[p.name for p in work_dir.other_settings]} (left in "
                            f"{checkpoints_root}; delete them to free space)")
    for name, problem, aside in work_dir.set_aside:
        context.log.warning(f"skipping {name}: {problem}; renamed to {aside}"
                            + (f", resuming from {found.name} instead" if found else ", and no older checkpoint "
                               "verifies: training starts from step 0"))
    context.log.info(f"checkpoint folder {work}: " + (f"resuming from {found.name}" if found else "starting fresh"))
    launch_dir = work / "launch"
    with artifacts.staging(context.asset_key) as tmp, ExitStack() as serving:  # the server, the other machines
        if plan.starts_server:
            # Stopped when this block is left, however it is; a SIGKILLed step's watchdog stops it too.
            # Its log goes with the adapter (rollout_server.log): the record of what generated the rollouts.
            server = serving.enter_context(rollout_server.serving(
                load_path, log_dir=tmp, max_model_len=plan.model.max_seq_length, dtype=plan.model.dtype,
                revision=ref.get("revision"), log=context.log.info))
            plan = plan.with_server(server.base_url)  # what training connects to
        job_file = plan.job(base_model_path=load_path, base_model_ref=ref, manifest_dir=manifest_dir, adapter_dir=tmp,
                            work_dir=work, training_lock=training_lock).write(launch_dir / "job.json")
        config_file = write_accelerate_config(launch_dir / "accelerate_config.yaml", plan.accelerate_config())
        machines = plan.machines
        if machines.num_machines > 1:
            from vlmrl_pipeline.k8s_training import training_workers

            serving.enter_context(training_workers(
                name=worker_job_name(context.run_id, work.name), num_machines=machines.num_machines,
                processes_per_machine=plan.per_machine, job_file=str(job_file), main_address=machines.main_process_ip,
                main_port=machines.main_process_port, distributed=plan.gspo.distributed, log=context.log.info))
        command = accelerate_command(config_file, job_file, cpu_threads=default_cpu_threads(plan.per_machine))
        context.log.info(f"launching {plan.processes} training process(es): {shlex.join(command)}")
        try:
            invocation = PipesSubprocessClient().run(
                command=command, context=context, extras={"job": str(job_file), "checkpoint_key": work.name},
                env=_child_env(reward_import_roots(tuple(plan.gspo.reward_funcs))),
            )
        except Exception as exc:  # the process exited non-zero (Dagster's DagsterPipesExecutionError) or died
            raise TrainingProcessError(describe_failure(job_file, work, str(exc))) from exc
        serving.close()  # training is done: the server's GPUs are free again
        reported = dict(invocation.get_materialize_result().metadata or {})
        log = json.loads((tmp / TRAINING_LOG).read_text())
        kept = log.get("kept_checkpoint") or {}
        curves = training_curves_png(log["log_history"])
        (tmp / TRAINING_CURVES).write_bytes(curves)
        # transformers writes TensorBoard events under the trainer's output dir (one folder per attempt, so a
        # resumed run keeps the killed one's too); they move with the adapter.
        if (work / "runs").is_dir():
            shutil.copytree(work / "runs", tmp / TENSORBOARD_DIR)
        stats = inspect_lora_adapter(tmp)
        _make_standalone(tmp, artifacts, load_path, ref, plan.data, reported, log["log_history"], stats["sha256"])
    history = _keep_tensorboard_history(context, artifacts, work, plan.gspo.tensorboard_history_mb)
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
            "rollout_engine": plan.engine.label,
            "rollout_engine_setting": plan.engine.setting,
            "rollout_engine_reason": plan.engine.reason,
            "report_to": plan.gspo.report_to,
            "vllm_mode": plan.gspo.vllm_mode if plan.gspo.use_vllm else "none",
            **({"tensorboard_logdir": MetadataValue.path(str(artifacts.asset_dir(context.asset_key) / TENSORBOARD_DIR))}
               if "tensorboard" in report_targets(plan.gspo.report_to) else {}),
            **history,
            **({"rollout_and_entropy": MetadataValue.json(rollout)} if rollout else {}),
            "dynamic_sampling": plan.gspo.dynamic_sampling,
            "zero_spread_groups": MetadataValue.json(dynamic_sampling_summary(log["log_history"])),
            "training_curves": MetadataValue.md(png_markdown(curves, "GSPO training curves")),
        }
    )


def _keep_tensorboard_history(context: AssetExecutionContext, artifacts: ArtifactStore, work, budget_mb: float,
                              ) -> dict:
    """This run's event folders (one per attempt: a resumed run has the killed one's too) copied into the history
    beside the adapter, whose next replacement would otherwise delete them; the oldest runs pruned to the budget.
    Returns the metadata that says where the history is and what was pruned."""
    attempts = sorted(p for p in (work / "runs").iterdir() if p.is_dir()) if (work / "runs").is_dir() else []
    if not attempts:
        return {}
    history = artifacts.asset_dir(TENSORBOARD_HISTORY_DIR)
    kept = keep_run(attempts, history, run_folder_name(context.run_id), int(budget_mb * 1e6), log=context.log.info)
    context.log.info(f"TensorBoard events of this run kept in {kept.folder} ({kept.num_event_files} event files); "
                     f"compare runs with: tensorboard --logdir {history}")
    return {
        "tensorboard_history": MetadataValue.path(str(history)),
        "tensorboard_history_run": kept.folder.name,
        "tensorboard_history_kept": f"{len(run_folders(history))} runs, {kept.history_bytes / 1e6:.2f} MB of "
                                    f"{budget_mb:g} MB",
        "tensorboard_history_pruned": ", ".join(kept.removed) or "none",
    }


def _make_standalone(folder, artifacts: ArtifactStore, load_path: str, ref: dict, data, reported: dict,
                     log_history: list, adapter_sha256: str) -> None:
    """The staged adapter folder as a Hugging Face user loads it (``core.model.card``): a portable base reference
    and PEFT auto mapping in ``adapter_config.json``, the base's processor, and the model card."""
    base_config = read_checkpoint_config(load_path, ref.get("revision"))
    reference = portable_base_reference(ref, asset_folder(base_model))
    make_adapter_portable(folder, base_reference=reference, revision=ref.get("revision"),
                          base_class=model_class_name(base_config))
    save_base_processor(load_path, folder, ref.get("revision"))
    rewards = [float(h["reward"]) for h in log_history if "reward" in h]
    training = {k: getattr(reported.get(k), "value", reported.get(k)) for k in ("global_step", "train_rows", "backend")}
    facts = card_facts(artifacts, reference, adapter_sha256, data.prompt_style,
                       training={**training, "final_logged_reward": round(rewards[-1], 4) if rewards else None})
    (folder / CARD_NAME).write_text(adapter_card(facts, card_sample(artifacts, data.prompt_style)), encoding="utf-8")


def _step_pod_address() -> str:
    """Rank 0's address when training spans several machines (imported only then: it needs the k8s extra)."""
    from vlmrl_pipeline.k8s_training import step_pod_address

    return step_pod_address()


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
