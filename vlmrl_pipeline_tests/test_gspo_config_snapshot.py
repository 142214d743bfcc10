"""GSPOSettings and the GRPOConfig built from them, for the default settings and every profile, against a snapshot
recorded before the settings were grouped (issue #29): regrouping the fields must change no value and no key.

Regenerate (only when a settings change is meant to change these values, and say so in the commit):
``PYTHONPATH=$PWD python -m vlmrl_pipeline_tests.test_gspo_config_snapshot``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pytest

from vlmrl_pipeline.core.profiles import PROFILES
from vlmrl_pipeline.core.training.gspo_config import GSPOSettings, build_grpo_config, resolve_optim

SNAPSHOT = Path(__file__).parent / "data" / "gspo_config_snapshot.json"
REWARD_WEIGHTS = (0.3, 1.0)  # fixed here: the reward set is not gspo_config's to decide
OUTPUT_DIR = "<output_dir>"
# Values that follow the machine, not the settings (CUDA, bf16 support, bitsandbytes): checked apart below.
MACHINE_KEYS = ("bf16", "use_cpu", "optim", "dataloader_pin_memory")


def snapshot_cases() -> dict[str, tuple[GSPOSettings, int]]:
    """Each case's settings and the model's max_seq_length (it bounds vLLM's context)."""
    cases = {"GSPOSettings()": (GSPOSettings(), 16384)}
    for name, make in PROFILES.items():
        profile = make()
        cases[f"profile:{name}"] = (profile.gspo, profile.model.max_seq_length)
    # build_grpo_config's own branches: vLLM rollouts (context bound, logit bias) and no checkpoints.
    cases["use_vllm"] = (GSPOSettings(use_vllm=True, vllm_enable_sleep_mode=True), 4096)
    cases["save_steps=0"] = (GSPOSettings(save_steps=0), 16384)
    return cases


def _plain(value):
    """JSON's form of a value (tuples as lists, enums and paths as strings), as the snapshot file holds it."""
    return json.loads(json.dumps(value, default=str))


def grpo_config_values(settings: GSPOSettings, processor, max_seq_length: int, output_dir: Path) -> dict:
    """Every GRPOConfig field build_grpo_config sets, with the output folder normalised."""
    config = build_grpo_config(settings, output_dir, processor, REWARD_WEIGHTS, max_seq_length=max_seq_length)
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    text = json.dumps(values, default=str, sort_keys=True).replace(str(output_dir), OUTPUT_DIR)
    return json.loads(text)


def record(processor, output_dir: Path) -> dict:
    return {name: {"settings": _plain(dataclasses.asdict(settings)),
                   "grpo_config": grpo_config_values(settings, processor, max_len, output_dir)}
            for name, (settings, max_len) in snapshot_cases().items()}


def _machine_free(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in MACHINE_KEYS}


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


def test_the_snapshot_covers_every_profile():
    recorded = json.loads(SNAPSHOT.read_text())
    assert set(recorded) == set(snapshot_cases())
    assert {f"profile:{name}" for name in PROFILES} <= set(recorded)


@pytest.mark.parametrize("case", sorted(snapshot_cases()))
def test_settings_match_the_snapshot(case):
    settings, _ = snapshot_cases()[case]
    assert _plain(dataclasses.asdict(settings)) == json.loads(SNAPSHOT.read_text())[case]["settings"]


@pytest.mark.parametrize("case", sorted(snapshot_cases()))
def test_grpo_config_matches_the_snapshot(case, processor, tmp_path):
    import torch

    settings, max_len = snapshot_cases()[case]
    expected = json.loads(SNAPSHOT.read_text())[case]["grpo_config"]
    got = grpo_config_values(settings, processor, max_len, tmp_path / "out")
    assert _machine_free(got) == _machine_free(expected)
    assert got["output_dir"] == OUTPUT_DIR
    # The recorded machine (CPU) keys, and here what this machine should give.
    assert (expected["use_cpu"], expected["bf16"], expected["dataloader_pin_memory"]) == (True, False, False)
    assert got["use_cpu"] is (not torch.cuda.is_available())
    assert got["optim"] == resolve_optim(settings.optim)


if __name__ == "__main__":  # writes the snapshot on a CPU machine (the recorded machine keys are a CPU's)
    from transformers import AutoProcessor

    from vlmrl_pipeline.core.demo.tiny_model import build_tiny_qwen3vl
    from vlmrl_pipeline_tests.conftest import tiny_profile

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_tiny_qwen3vl(Path(tmp) / "ckpt", ["What is the value? <SOLUTION>1</SOLUTION>"] * 20,
                                  tiny_profile().model.tiny_model, seed=0)
        snapshot = record(AutoProcessor.from_pretrained(str(ckpt)), Path(tmp) / "out")
    SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} ({len(snapshot)} cases)", file=sys.stderr)
