"""The artifacts as a user takes them away: the adapter and merged folders load from their own folder with plain PEFT
and transformers after the data folder is moved elsewhere, the GGUF runs through llama-cpp-python's high-level
``Llama`` with its mmproj, and every snippet of the README's *Use the artifacts* and of both model cards runs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from vlmrl_pipeline.core.export.gguf import llama_cpp_runtime_available
from vlmrl_pipeline.core.export.mtmd import buffer_types
from vlmrl_pipeline.core.integrity import verify_files
from vlmrl_pipeline.core.model.card import (
    EVALUATION_END,
    EVALUATION_START,
    NOT_EVALUATED,
    card_adapter_sha256,
    evaluation_markdown,
    portable_base_reference,
    with_evaluation,
)
from vlmrl_pipeline.core.prompts import FORMAT_INSTRUCTION
from vlmrl_pipeline.definitions import all_assets, all_checks
from vlmrl_pipeline.resources import PROJECT_ROOT, resources_for_profile
from vlmrl_pipeline_tests.conftest import tiny_profile

FENCED_PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(markdown: str) -> list[str]:
    return FENCED_PYTHON.findall(markdown)


def readme_use_section() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    start = text.index("## Use the artifacts")
    return text[start : text.index("\n## ", start + 1)]


def test_the_base_reference_is_the_hub_id_or_a_path_inside_the_data_folder():
    assert portable_base_reference({"model_name": "unsloth/x-bnb-4bit", "checkpoint_dir": None}) == "unsloth/x-bnb-4bit"
    assert (
        portable_base_reference({"model_name": "demo:tiny", "checkpoint_dir": "checkpoint"}) == "base_model/checkpoint"
    )


def test_the_evaluation_block_is_replaced_and_a_card_without_one_is_refused():
    card = f"# card\n{EVALUATION_START}\n{NOT_EVALUATED}\n{EVALUATION_END}\nrest"
    diff = {
        "num_samples": 8,
        "headline": {"baseline_accuracy": 0.25, "after_accuracy": 0.5},
        "comparison": {"accuracy": {"difference": 0.25, "ci_low": 0.0, "ci_high": 0.5, "p_value": 0.25}},
    }
    updated = with_evaluation(card, evaluation_markdown(diff))
    assert NOT_EVALUATED not in updated and updated.endswith("rest")
    assert "| accuracy (strict) | 25.0% | 50.0% | +25.0 pts [+0.0, +50.0] | 0.25 |" in updated
    assert with_evaluation(updated, "again").count(EVALUATION_START) == 1
    with pytest.raises(ValueError, match="no <!-- vlmrl:evaluation:start -->"):
        with_evaluation("# a card", "x")


def test_the_weights_hash_leaves_the_model_card_out(tmp_path):
    """The report rewrites a merged checkpoint's card after ``merged_model`` recorded the weights' sha256 (its data
    version, and what ``merged_records`` names): the card must not move it; the weights must."""
    from vlmrl_pipeline.core.files import sha256_dir

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("not evaluated yet")
    before = sha256_dir(tmp_path, exclude=("README.md",))
    (tmp_path / "README.md").write_text("evaluated")
    assert sha256_dir(tmp_path, exclude=("README.md",)) == before != sha256_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert sha256_dir(tmp_path, exclude=("README.md",)) != before


def test_the_readmes_snippets_carry_the_projects_format_instruction():
    blocks = python_blocks(readme_use_section())
    assert len(blocks) == 3
    for block in blocks:
        namespace: dict = {}
        exec(re.search(r"INSTRUCTION = \(.*?\)\n", block, re.S).group(0), namespace)  # noqa: S102
        assert namespace["INSTRUCTION"] == FORMAT_INSTRUCTION


def demo_shaped_profile():
    """The tiny profile with the demo model's depth and image size (two text layers, 128 px images, 16 image
    tokens): what the README's users run. llama.cpp's Qwen3-VL graph breaks on a one-layer model when only the last
    position's logits are asked for (as ``Llama`` asks; see ``core.export.gguf.LlamaDecoder``), and mtmd's own
    minimum of 8 image tokens would turn the tiny profile's 64 px images into a 3x3 grid."""
    base = tiny_profile()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, image_size=128),
        model=dataclasses.replace(
            base.model, tiny_model=dataclasses.replace(base.model.tiny_model, text_layers=2, image_size=128)
        ),
    )


@pytest.fixture(scope="module")
def moved_data(tmp_path_factory):
    """The lineage materialized in one folder, then its data folder moved to another: nothing of the first path is
    left, as on a second machine."""
    if not llama_cpp_runtime_available():
        pytest.skip("needs the llama.cpp runtime (pip install -e '.[gguf]')")
    first = tmp_path_factory.mktemp("trained") / "data"
    result = materialize(
        [*all_assets, *all_checks],
        resources=resources_for_profile(demo_shaped_profile(), str(first)),
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    [report] = result.asset_materializations_for_node("eval_diff_report")
    moved = tmp_path_factory.mktemp("elsewhere") / "copy-of-data"
    shutil.move(str(first), str(moved))
    assert not first.exists()
    return moved, {k: v.value for k, v in report.metadata.items()}


def run_snippet(code: str, cwd: Path, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    """``code`` as a script in a fresh interpreter, from ``cwd``, offline, without this project on the path."""
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _answered(done: subprocess.CompletedProcess, what: str) -> str:
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{what} printed no answer:\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_adapter_folder_stands_alone_after_the_data_folder_moved(moved_data):
    data, report = moved_data
    adapter = data / "lora_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base_model/checkpoint" and (data / "base_model/checkpoint").is_dir()
    assert config["task_type"] is None
    assert config["auto_mapping"] == {
        "base_model_class": "Qwen3VLForConditionalGeneration",
        "parent_library": "transformers",
    }
    assert {"tokenizer_config.json", "chat_template.jinja", "README.md"} <= {p.name for p in adapter.iterdir()}
    card = (adapter / "README.md").read_text()
    assert card_adapter_sha256(card) == report["adapter_sha256"] and FORMAT_INSTRUCTION in card
    # eval_diff_report wrote its headline into the card, and the card's integrity record followed
    saved = json.loads((data / "eval_diff_report" / "report.json").read_text())
    accuracy = saved["comparison"]["accuracy"]
    assert NOT_EVALUATED not in card
    assert (
        f"{100 * accuracy['difference']:+.1f} pts [{100 * accuracy['ci_low']:+.1f}, {100 * accuracy['ci_high']:+.1f}]"
    ) in card
    assert report["model_cards_updated"] == "lora_adapter/README.md, merged_model/checkpoint/README.md"
    assert verify_files(adapter, "lora_adapter") is not None
    assert verify_files(data / "merged_model", "merged_model") is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "source,index", [("readme", 0), ("readme", 1), ("adapter card", 0), ("adapter card", 1), ("merged card", 0)]
)
def test_each_peft_and_transformers_snippet_loads_and_generates(moved_data, tmp_path, source, index):
    data, _ = moved_data
    markdown = {
        "readme": readme_use_section,
        "adapter card": lambda: (data / "lora_adapter/README.md").read_text(),
        "merged card": lambda: (data / "merged_model/checkpoint/README.md").read_text(),
    }[source]()
    code = [b for b in python_blocks(markdown) if "from llama_cpp" not in b][index]
    _answered(run_snippet(code, data, tmp_path, "snippet"), f"{source} snippet {index}")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["readme", "adapter card", "merged card"])
def test_q8_0_answers_through_the_high_level_llama_api_with_its_mmproj(moved_data, tmp_path, source):
    data, _ = moved_data
    markdown = {
        "readme": readme_use_section,
        "adapter card": lambda: (data / "lora_adapter/README.md").read_text(),
        "merged card": lambda: (data / "merged_model/checkpoint/README.md").read_text(),
    }[source]()
    [code] = [b for b in python_blocks(markdown) if "from llama_cpp" in b]
    assert 'model_path="gguf_model/model-q8_0.gguf"' in code or "model_path='gguf_model/model-q8_0.gguf'" in code
    _answered(run_snippet(code, data, tmp_path, "llama"), f"{source}'s llama.cpp snippet")


@pytest.mark.slow
def test_the_snippets_switch_reaches_llama_cpp(moved_data, tmp_path):
    """llama.cpp's own load log: with ``plain_cpu_buffers`` no weight is offered to an extra buffer type; without
    it (what ``Llama(model_path=...)`` does, ``use_extra_bufts=False`` as a keyword included) llama.cpp offers the
    q8_0 weights to them (the AVX2 repack here, AMX on a Sapphire Rapids CPU)."""
    import llama_cpp

    data, _ = moved_data
    [code] = [b for b in python_blocks(readme_use_section()) if "from llama_cpp" in b]
    verbose = code.replace("verbose=False", "verbose=True")
    with_switch = run_snippet(verbose, data, tmp_path, "with_switch")
    _answered(with_switch, "the snippet with llama.cpp's log")
    loaded, offered = buffer_types(with_switch.stderr)
    assert loaded and not set(loaded + offered) & {"AMX", "CPU_REPACK"}, (loaded, offered)
    info = llama_cpp.llama_print_system_info().decode()
    if "REPACK = 1" not in info and "AMX" not in info:
        pytest.skip(f"this llama.cpp build has no extra CPU buffer types to compare with: {info}")
    # The same load as Llama() does it by itself, the keyword users tried included (swallowed by **kwargs).
    plain = (
        verbose.replace("with plain_cpu_buffers():", "with contextlib.nullcontext():")
        .replace("verbose=True,\n", "verbose=True, use_extra_bufts=False,\n", 1)
        .replace("assert not llm.model_params.use_extra_bufts", "assert llm.model_params.use_extra_bufts")
    )
    assert plain != verbose and "use_extra_bufts=False," in plain
    without = run_snippet(plain, data, tmp_path, "without_switch")
    assert without.returncode == 0, without.stderr[-3000:]
    loaded, offered = buffer_types(without.stderr)
    assert set(loaded + offered) & {"AMX", "CPU_REPACK"}, (loaded, offered)
