"""The training wing: a GSPO run from its settings to its kept checkpoint.

``gspo_config`` (GSPOSettings -> TRL's GRPOConfig), ``trainer`` (the GSPO loop around TRL's GRPOTrainer), ``job`` (one
training job as the training process runs it), ``launch`` (``accelerate launch`` on one or more processes and
machines), ``checkpoints`` (where checkpoints live, which one a run resumes from), ``vllm_rollouts``,
``rollout_engine`` and ``rollout_server`` (how rollouts are generated), ``dynamic_sampling`` (zero-spread groups
refilled), ``validation`` (evaluation during training), ``run_history`` (TensorBoard run folders) and
``k8s_workers`` (the worker machines of a multi-machine run as a Kubernetes Job).
"""
