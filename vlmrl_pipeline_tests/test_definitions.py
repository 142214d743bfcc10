"""The Definitions object: the lineage graph, its descriptions, the job and the blocking split check."""

from dagster import AssetKey

from vlmrl_pipeline.definitions import all_checks, defs

EXPECTED_UPSTREAM = {
    "mathvista_filtered": set(),
    "resized_images": {"mathvista_filtered"},
    "base_model": {"resized_images"},
    "baseline_records": {"base_model", "resized_images", "mathvista_filtered"},
    "lora_adapter": {"base_model", "resized_images"},
    "after_records": {"lora_adapter", "base_model", "resized_images", "mathvista_filtered"},
    "eval_diff_report": {"baseline_records", "after_records"},
    "merged_model": {"lora_adapter", "base_model", "resized_images"},
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


def test_the_lineage_job_exists_and_the_split_check_is_blocking():
    assert defs.resolve_job_def("vlmrl_lineage").name == "vlmrl_lineage"
    specs = {spec.name: spec for checks in all_checks for spec in checks.check_specs}
    assert specs["train_eval_disjoint"].blocking
    assert specs["train_eval_disjoint"].asset_key == AssetKey("resized_images")
