"""The environment fingerprint every materialization records, and how two of them are compared."""

from __future__ import annotations

import doctest
import json
import subprocess

from vlmrl_pipeline.core import environment
from vlmrl_pipeline.core.environment import (
    RESULT_PACKAGES,
    environment_differences,
    environment_fingerprint,
    package_version,
)


def test_doctests():
    assert doctest.testmod(environment).failed == 0


def test_the_fingerprint_names_every_version_that_decides_results():
    fingerprint = environment_fingerprint()
    assert set(fingerprint) == {"python", "torch_cuda_build", "gpu", *RESULT_PACKAGES}
    assert all(isinstance(v, str) and v for v in fingerprint.values())
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    import torch
    import transformers

    assert fingerprint["torch"] == package_version("torch") and torch.__version__.startswith(fingerprint["torch"])
    assert fingerprint["transformers"] == transformers.__version__


def _fake_smi(monkeypatch, lines: str):
    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(environment.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=lines, stderr=""))


def test_gpu_names_come_from_nvidia_smi_and_follow_cuda_visible_devices(monkeypatch):
    _fake_smi(monkeypatch, "0, NVIDIA H100 80GB HBM3\n1, NVIDIA H100 80GB HBM3\n2, NVIDIA A100-SXM4-40GB\n")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert environment._gpu_names() == "NVIDIA H100 80GB HBM3, NVIDIA H100 80GB HBM3, NVIDIA A100-SXM4-40GB"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert environment._gpu_names() == "2 x NVIDIA H100 80GB HBM3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert environment._gpu_names() == "NVIDIA A100-SXM4-40GB"


def test_no_nvidia_smi_means_no_gpu(monkeypatch):
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    assert environment._gpu_names() == "none"


def test_differences_name_each_changed_entry_in_order():
    before = {"python": "3.11.7", "torch": "2.11.0", "vllm": "0.25.1", "gpu": "NVIDIA H200"}
    after = {"python": "3.11.7", "torch": "2.13.0", "vllm": "0.25.1", "gpu": "NVIDIA H100 80GB HBM3"}
    assert environment_differences(before, after) == ["torch: 2.11.0 -> 2.13.0",
                                                      "gpu: NVIDIA H200 -> NVIDIA H100 80GB HBM3"]
    assert environment_differences(after, dict(after)) == []
    assert environment_differences({"torch": "1"}, {"torch": "1", "unsloth": "2026.10.9"}) == [
        "unsloth: unrecorded -> 2026.10.9"]


def test_a_record_from_before_the_rename_compares_under_the_new_name():
    old = {"python": "3.11.7", "cuda": "12.8", "gpu": "none"}
    new = {"python": "3.11.7", "torch_cuda_build": "12.8", "gpu": "none"}
    assert environment_differences(old, new) == []
    assert environment_differences(old, {**new, "torch_cuda_build": "13.0"}) == ["torch_cuda_build: 12.8 -> 13.0"]
