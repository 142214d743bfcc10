"""Adapter inspection, the merged checkpoint, and GGUF export read back (and run by llama.cpp when installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmrl_pipeline.core.evaluation.generation import GenerationSettings, generate_completions, greedy_token_ids
from vlmrl_pipeline.core.export.gguf import export_gguf, gguf_greedy_tokens, llama_cpp_runtime_available, verify_gguf
from vlmrl_pipeline.core.export.merge import (
    inspect_lora_adapter,
    merge_adapter_4bit_unsloth,
    merge_adapter_to_checkpoint,
)
from vlmrl_pipeline.core.export.settings import ExportSettings
from vlmrl_pipeline.core.files import sha256_dir, sha256_file
from vlmrl_pipeline.core.llama_cpp import (
    LLAMA_CPP_PYTHON_VERSION,
    SDIST_ENV_VAR,
    SDIST_NAME,
    llama_cpp_tools,
    vocab_test_cases,
)
from vlmrl_pipeline.core.model.loading import LoraSettings, apply_lora, load_model, load_policy, unsloth_available


def _save_adapter(checkpoint, folder, trained: bool):
    model, _, _ = load_model(checkpoint, backend="transformers", dtype="float32")
    peft_model = apply_lora(model, LoraSettings(r=4, lora_alpha=8), "transformers")
    if trained:  # stand-in for training: give every B matrix a value, as optimisation would
        torch.manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def test_untrained_adapter_has_all_zero_b_matrices(tiny_checkpoint, tmp_path):
    stats = inspect_lora_adapter(_save_adapter(tiny_checkpoint, tmp_path / "a", trained=False))
    assert stats["num_lora_b"] > 0 and stats["num_lora_b_nonzero"] == 0 and stats["all_finite"]
    trained = inspect_lora_adapter(_save_adapter(tiny_checkpoint, tmp_path / "b", trained=True))
    assert trained["num_lora_b_nonzero"] == trained["num_lora_b"]
    assert trained["sha256"] != stats["sha256"]


def test_merged_checkpoint_generates_like_base_plus_adapter(tiny_checkpoint, tmp_path):
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    merged_dir = merge_adapter_to_checkpoint(tiny_checkpoint, adapter, tmp_path / "merged", dtype="float32")
    assert not (merged_dir / "adapter_config.json").exists()  # standalone: plain transformers loads it
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Question {i}?"}]}]
               for i in range(3)]
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    settings = GenerationSettings(max_new_tokens=10, batch_size=3)
    with_adapter, processor, _ = load_policy(tiny_checkpoint, backend="transformers", dtype="float32",
                                             adapter_dir=adapter)
    merged, merged_processor, _ = load_model(str(merged_dir), backend="transformers", dtype="float32")
    base, _, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    expected = generate_completions(with_adapter, processor, prompts, images, settings)
    assert generate_completions(merged, merged_processor, prompts, images, settings) == expected
    # and the adapter matters: the base model alone generates something else
    assert generate_completions(base, processor, prompts, images, settings) != expected


def test_bf16_merge_writes_half_size_weights(tiny_checkpoint, tmp_path):
    adapter = _save_adapter(tiny_checkpoint, tmp_path / "adapter", trained=True)
    merged = merge_adapter_to_checkpoint(tiny_checkpoint, adapter, tmp_path / "bf16", dtype="bfloat16")
    model, _, _ = load_model(str(merged), backend="transformers", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    first = sha256_dir(merged)
    merge_adapter_to_checkpoint(tiny_checkpoint, adapter, tmp_path / "bf16", dtype="bfloat16")
    assert sha256_dir(merged) == first  # re-export replaces the folder with identical content


# --- GGUF ---------------------------------------------------------------------------------------------------------

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_runtime_available(),
                                     reason="needs the llama.cpp runtime (pip install -e '.[gguf]')")


@pytest.fixture(scope="module")
def merged_f32(tiny_checkpoint, tmp_path_factory):
    """A trained-looking adapter merged in float32: the exact reference a GGUF export is compared with."""
    folder = tmp_path_factory.mktemp("merged")
    adapter = _save_adapter(tiny_checkpoint, folder / "adapter", trained=True)
    return merge_adapter_to_checkpoint(tiny_checkpoint, adapter, folder / "merged", dtype="float32")


def test_gpt2_tokenizer_option_is_llama_cpps_gpt2_and_tokenizes_like_llama_cpp():
    import dataclasses

    from vlmrl_pipeline.core.demo.tiny_model import build_tiny_processor
    from vlmrl_pipeline_tests.conftest import tiny_profile

    tools = llama_cpp_tools()
    cases = vocab_test_cases(tools.vocab("gpt-2"))
    assert len(cases) > 30  # llama.cpp's own test strings: emoji, CJK, whitespace runs, apostrophes
    spec = dataclasses.replace(tiny_profile().model.tiny_model, tokenizer="gpt-2")
    tokenizer = build_tiny_processor(["unused"], spec).tokenizer
    for text, expected in cases:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, repr(text)
    # the chat and vision tokens are whole tokens after GPT-2's 50 257
    for token in ("<|im_start|>", "<|im_end|>", "<|image_pad|>"):
        assert tokenizer.convert_tokens_to_ids(token) >= 50257
        assert tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"][1] == tokenizer.convert_tokens_to_ids(token)


def test_gguf_export_reads_back_as_the_checkpoint(merged_f32, tmp_path):
    from transformers import AutoTokenizer

    exports = export_gguf(merged_f32, tmp_path, ["f16", "q8_0"], llama_cpp_tools().converter)
    assert [e.gguf_type for e in exports] == ["f16", "q8_0"]
    f16, q8 = exports
    assert f16.mmproj_file == q8.mmproj_file and f16.mmproj_file.name == "mmproj-f16.gguf"
    for export in exports:
        info = export.model_info
        assert info["architecture"] == "qwen3vl" and info["kind"] == "model"
        assert info["tokenizer_model"] == "gpt2" and info["tokenizer_pre"] == "gpt-2"  # recognised by its hash
        assert info["has_chat_template"] and info["size_bytes"] == export.model_file.stat().st_size
        assert info["sha256"] == sha256_file(export.model_file)
    assert "F16" in f16.model_info["tensor_types"] and "Q8_0" in q8.model_info["tensor_types"]
    assert q8.model_info["size_bytes"] < f16.model_info["size_bytes"]
    tokenizer = AutoTokenizer.from_pretrained(str(merged_f32))
    assert f16.model_info["tokens"][tokenizer.convert_tokens_to_ids("<|im_end|>")] == "<|im_end|>"
    assert f16.model_info["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    mmproj = f16.mmproj_info
    assert mmproj["architecture"] == "clip" and mmproj["projector_type"] == "qwen3vl_merger"
    assert verify_gguf(f16.model_info, mmproj, merged_f32) == []
    summary = f16.summary()
    assert "tokens" not in summary["model"] and summary["mmproj"]["sha256"] == mmproj["sha256"]


def test_gguf_verification_reports_what_does_not_match(merged_f32, tmp_path):
    [export] = export_gguf(merged_f32, tmp_path, ["q8_0"], llama_cpp_tools().converter)
    tampered = dict(export.model_info, tokens=list(export.model_info["tokens"]), block_count=7, tokenizer_pre=None)
    tampered["tokens"][100] = "not-a-token"
    problems = " | ".join(verify_gguf(tampered, dict(export.mmproj_info, block_count=9), merged_f32))
    assert "block_count 7" in problems and "tokens differ" in problems and "(100, " in problems and "'not-a-token'" in problems
    assert "did not recognise the tokenizer" in problems and "projector block_count 9" in problems


def test_export_settings_refuse_unknown_types():
    with pytest.raises(ValueError, match="unknown GGUF types"):
        ExportSettings(gguf_types=("q4_0",))
    with pytest.raises(ValueError, match="merged_dtype"):
        ExportSettings(merged_dtype="int8")
    with pytest.raises(ValueError, match="gguf_types must be a non-empty subset"):
        export_gguf(".", ".", [], Path("convert_hf_to_gguf.py"))


def test_merged_4bit_needs_unsloth_and_says_so(tmp_path):
    if unsloth_available():
        pytest.skip("Unsloth and CUDA are present: covered by test_gpu")
    with pytest.raises(RuntimeError, match="needs Unsloth and a CUDA GPU"):
        merge_adapter_4bit_unsloth(tmp_path, tmp_path / "out", base_load_path=str(tmp_path))


def test_tools_archive_is_checked_before_use(tmp_path, monkeypatch):
    fake = tmp_path / SDIST_NAME
    fake.write_bytes(b"not the release")
    monkeypatch.setenv(SDIST_ENV_VAR, str(fake))
    with pytest.raises(RuntimeError, match="expected 832db069"):
        llama_cpp_tools(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}").exists()
    monkeypatch.delenv(SDIST_ENV_VAR)
    with pytest.raises(FileNotFoundError, match="vlmrl-fetch-tools"):
        llama_cpp_tools(cache_dir=tmp_path / "empty", fetch=False)


@needs_llama_cpp
def test_llama_cpp_runs_the_f32_gguf_like_transformers(merged_f32, tmp_path):
    """The strongest read-back: llama.cpp's own forward pass on the file gives transformers' logits and tokens."""
    import numpy as np

    [export] = export_gguf(merged_f32, tmp_path, ["f32"], llama_cpp_tools().converter)
    model, processor, _ = load_model(str(merged_f32), backend="transformers", dtype="float32", device="cpu")
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 12 plus 30?"}]}]
    prompt_ids, expected = greedy_token_ids(model, processor, prompt, 12)
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    got, logits = gguf_greedy_tokens(export.model_file, prompt_ids, 12, stop_ids=[end])
    assert got == expected and len(got) > 0
    with torch.inference_mode():
        reference = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].numpy()
    assert np.allclose(np.asarray(logits)[: len(reference)], reference, atol=1e-3, rtol=1e-3)


@needs_llama_cpp
def test_q4_k_m_is_written_by_llama_cpps_quantizer(merged_f32, tmp_path):
    exports = export_gguf(merged_f32, tmp_path, ["f16", "q4_k_m"], llama_cpp_tools().converter)
    f16, q4 = exports
    # K-quants need rows of 256: the tiny model's 64-wide rows fall back to another type, as llama-quantize does;
    # what matters is that the quantizer ran and wrote smaller, consistent weights.
    assert set(q4.model_info["tensor_types"]) - {"F32", "F16"}
    assert q4.model_info["size_bytes"] < f16.model_info["size_bytes"]
    assert q4.model_info["file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert not list(tmp_path.glob(".model-f16-for-quantize.gguf"))


def test_the_trained_demo_tokenizer_is_registered_as_gpt2_and_llama_cpp_tokenizes_like_transformers(
        tiny_checkpoint, tmp_path):
    """The demo's small BPE is unknown to llama.cpp by its probe hash; registered as gpt-2 (its pre-tokenizer is
    GPT-2's), llama.cpp must then split text exactly as transformers does, or the GGUF would answer differently."""
    import shutil

    from transformers import AutoTokenizer

    from vlmrl_pipeline.core.llama_cpp import (
        LlamaCppTools,
        register_checkpoint_tokenizer,
        tokenizer_probe_hash,
        uses_gpt2_pre_tokenizer,
    )

    tools = LlamaCppTools(tmp_path / "tools")  # a copy: the registration edits the converter
    shutil.copytree(llama_cpp_tools().root, tools.root)
    assert uses_gpt2_pre_tokenizer(tiny_checkpoint)
    chkhsh = tokenizer_probe_hash(tiny_checkpoint, tools)
    # None: an earlier export that used this tools cache registered the same tokenizer already
    assert register_checkpoint_tokenizer(tiny_checkpoint, tools) in (chkhsh, None)
    assert f'"{chkhsh}"' in (tools.root / "conversion" / "base.py").read_text()
    assert register_checkpoint_tokenizer(tiny_checkpoint, tools) is None  # once is enough
    [export] = export_gguf(tiny_checkpoint, tmp_path / "gguf", ["f16"], tools.converter)
    assert export.model_info["tokenizer_model"] == "gpt2" and export.model_info["tokenizer_pre"] == "gpt-2"
    if not llama_cpp_runtime_available():
        pytest.skip("llama.cpp runtime not installed (the test extra compiles it)")
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    llm = llama_cpp.Llama(str(export.model_file), vocab_only=True, verbose=False)
    texts = [text for text, _ in vocab_test_cases(tools.vocab("gpt-2"))]
    texts += ["Hint: Please answer the question requiring an integer answer.\nQuestion: How many squares are there?",
              "<REASONING>I read the figure to answer.</REASONING>\n<SOLUTION>3</SOLUTION>"]
    for text in texts:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, repr(text)
