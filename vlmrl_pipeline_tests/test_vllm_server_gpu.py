"""``vllm_mode="server"`` on a GPU: the ``lora_adapter`` asset starts ``trl vllm-serve`` through the rollout server
resource, trains the demo model for 2 steps against it, and stops it (skipped without CUDA and vLLM).

One GPU: server and trainer share GPU 0 (``rollout_server.share_training_gpu``, the server taking 0.3 of it). TRL's
maintainers note that NCCL may refuse two ranks of its weight-sync group on one device ("Duplicate GPU detected");
this test is what tells whether this stack's vLLM accepts it. Two GPUs: the server on GPU 1, training on GPU 0.

Run on a GPU machine with the ``gpu`` and ``vllm`` extras:
``python -m pytest vlmrl_pipeline_tests/test_vllm_server_gpu.py -m gpu -s``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import RolloutServerResource, resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda_and_vllm():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("vllm")


def _gpu_pids() -> set[int]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True, check=True).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


def _server_mode_run(tmp_path, server: RolloutServerResource):
    profile = tiny_profile()
    profile = dataclasses.replace(
        profile,
        model=dataclasses.replace(profile.model, dtype="bfloat16"),
        gspo=dataclasses.replace(profile.gspo, max_steps=2, rollout_engine="vllm", vllm_mode="server",
                                 optim="adamw_torch", save_steps=0, report_to="none"),
    )
    resources = {**resources_for_profile(profile, str(tmp_path)), "rollout_server": server}
    before = _gpu_pids()
    result = materialize([*all_assets, *all_checks],
                         selection=["mathvista_filtered", "resized_images", "base_model", "lora_adapter"],
                         resources=resources, instance=DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("lora_adapter")[0].metadata
    print(json.dumps({k: str(v.value) for k, v in meta.items() if k in (
        "rollout_engine", "vllm_mode", "global_step", "train_runtime_s", "final_logged_reward")}))
    assert meta["rollout_engine"].value == "vllm" and meta["vllm_mode"].value == "server"
    assert meta["global_step"].value == 2
    rollout = meta["rollout_and_entropy"].value
    print(json.dumps(rollout))
    assert "logp_difference_mean/mean" in rollout  # TRL's mismatch metrics: the rollouts came from vLLM
    log = (tmp_path / "lora_adapter" / "rollout_server.log").read_text()
    assert "vllm" in log.lower()
    # the server is stopped with the step: no new process holds a GPU
    assert _gpu_pids() - before - {os.getpid()} == set()


def test_server_mode_with_engine_and_trainer_sharing_one_gpu(tmp_path):
    _server_mode_run(tmp_path, RolloutServerResource(gpus="0", share_training_gpu=True, gpu_memory_utilization=0.3,
                                                     enforce_eager=True, startup_timeout_s=600, stop_grace_s=20))


def test_server_mode_with_the_engine_on_its_own_gpu(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: the server on GPU 1, training on GPU 0")
    _server_mode_run(tmp_path, RolloutServerResource(gpus="1", gpu_memory_utilization=0.5, enforce_eager=True,
                                                     startup_timeout_s=600, stop_grace_s=20))
