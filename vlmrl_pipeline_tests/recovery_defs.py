"""The project's Definitions with a tiny profile, for the kill-and-run-again test (test_recovery.py).

Same assets, checks, executor (``execution.executor_for_environment``) and job name as
``vlmrl_pipeline.definitions``; only the settings are shrunk so a run takes about a minute on two cores, and the
job stops at ``lora_adapter`` (evaluation and export are not what a kill during training is about). Artifacts go
to ``$VLMRL_DATA_DIR``, the instance is ``$DAGSTER_HOME``, as with the README's command.
"""

import dataclasses

from dagster import AssetSelection, Definitions, define_asset_job

from vlmrl_pipeline.core.demo.warmstart import WarmStartSettings
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.execution import executor_for_environment
from vlmrl_pipeline.resources import resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

LINEAGE_TO_ADAPTER = ["mathvista_filtered", "resized_images", "base_model", "lora_adapter"]
FIRST_STEPS = ["mathvista_filtered", "resized_images"]
"""The ``vlmrl_first_steps`` job: what two runs started together on a fresh instance both begin with."""
MAX_STEPS = 8
SAVE_STEPS = 2


def recovery_profile():
    base = tiny_profile()
    # The small trained tokenizer (no llama.cpp files needed) and a two-step warm start: this is about the
    # training loop surviving a kill, not about rewards.
    base = dataclasses.replace(base, model=dataclasses.replace(
        base.model, tiny_model=dataclasses.replace(base.model.tiny_model, tokenizer="trained")))
    return dataclasses.replace(base, warm_start=WarmStartSettings(steps=2, batch_size=2),
                               gspo=dataclasses.replace(base.gspo, max_steps=MAX_STEPS, save_steps=SAVE_STEPS,
                                                        max_completion_length=16))


defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    # Without the asset checks: a two-step warm start gives rewards too flat for lora_weights_trained, whose
    # blocking check is not what this test is about (test_end_to_end runs it).
    jobs=[define_asset_job("vlmrl_lineage", selection=AssetSelection.assets(*LINEAGE_TO_ADAPTER).without_checks()),
          define_asset_job("vlmrl_first_steps", selection=AssetSelection.assets(*FIRST_STEPS))],
    resources=resources_for_profile(recovery_profile()),
    executor=executor_for_environment(),
)
