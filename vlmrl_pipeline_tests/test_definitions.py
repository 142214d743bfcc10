"""The Definitions object: the lineage graph, its descriptions, the job and the blocking split check."""

from dagster import AssetKey

from vlmrl_pipeline.definitions import all_checks, defs

EXPECTED_UPSTREAM = {
    "mathvista_filtered": set(),
    "resized_images": {"mathvista_filtered"},
    "base_model": {"resized_images"},
    "baseline_completions": {"base_model", "resized_images", "mathvista_filtered"},
    "baseline_records": {"baseline_completions", "resized_images"},
    "lora_adapter": {"base_model", "resized_images"},
    "after_completions": {"lora_adapter", "base_model", "resized_images", "mathvista_filtered"},
    "after_records": {"after_completions", "resized_images"},
    "eval_diff_report": {"baseline_records", "after_records", "merged_records", "gguf_records"},
    "merged_model": {"lora_adapter", "base_model", "resized_images"},
    "gguf_model": {"merged_model", "resized_images"},
    "merged_records": {"merged_model", "after_completions", "resized_images", "mathvista_filtered"},
    "gguf_records": {"gguf_model", "merged_model", "after_completions", "resized_images", "mathvista_filtered"},
    "experiment_comparison": {"eval_diff_report"},  # and each declared experiment's report (none here)
}


def test_lineage_graph_has_every_stage_wired():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(EXPECTED_UPSTREAM)
    for name, upstream in EXPECTED_UPSTREAM.items():
        parents = {k.to_user_string() for k in graph.get(AssetKey(name)).parent_keys}
        assert parents == upstream, name


def test_every_asset_says_what_it_is():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key


def test_the_lineage_job_exists_and_bad_artifacts_are_stopped_by_blocking_checks():
    assert defs.resolve_job_def("vlmrl_lineage").name == "vlmrl_lineage"
    specs = {spec.name: spec for checks in all_checks for spec in checks.check_specs}
    expected = {
        "filtered_rows_valid": "mathvista_filtered",
        "train_eval_disjoint": "resized_images",
        "few_rows_lost": "resized_images",
        "lora_weights_trained": "lora_adapter",
        "baseline_records_complete": "baseline_records",
        "after_records_complete": "after_records",
        "merged_matches_adapter": "merged_model",
        "gguf_files_intact": "gguf_model",
        "merged_accuracy_kept": "merged_records",
        "gguf_accuracy_kept": "gguf_records",
    }
    assert set(specs) == set(expected)
    for name, asset in expected.items():
        assert specs[name].blocking and specs[name].asset_key == AssetKey(asset), name


def test_gpu_steps_share_the_gpu_pool_and_carry_the_compute_tag():
    graph = defs.resolve_asset_graph()
    gpu = {"baseline_completions", "after_completions", "lora_adapter", "merged_model", "merged_records"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.tags.get("compute") == ("gpu" if name in gpu else "cpu"), name
        assert (node.pools == {"gpu"}) == (name in gpu), name


def test_asset_names_that_dagster_free_code_needs_are_the_assets_keys():
    """The report server (no Dagster) serves the folder named by ``core.experiment_specs.REPORT_ASSET``; the rehearsal's
    stages name the assets they select. A renamed asset must fail here, not leave the server 404ing."""
    from vlmrl_pipeline.assets.report import eval_diff_report
    from vlmrl_pipeline.core.experiment_specs import REPORT_ASSET
    from vlmrl_pipeline.definitions import all_assets
    from vlmrl_pipeline.rehearse import STAGES

    assert eval_diff_report.key == AssetKey(REPORT_ASSET)
    lineage = sorted(key.to_user_string() for a in all_assets for key in a.keys)
    assert sorted(name for names in STAGES.values() for name in names) == lineage
