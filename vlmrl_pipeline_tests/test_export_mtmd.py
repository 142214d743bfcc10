"""A GGUF with its mmproj on images through llama.cpp's multimodal runtime: the evaluation's prompt reaches it token
for token, an f32 file answers as transformers does, q8_0 and q4_k_m run with the extra buffer types off, and a
broken file fails with its name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmrl_pipeline.core.evaluation.generation import greedy_new_ids, next_token_logits
from vlmrl_pipeline.core.evaluation.shipped import logit_agreement
from vlmrl_pipeline.core.export.gguf import export_gguf, llama_cpp_runtime_available
from vlmrl_pipeline.core.export.merge import merge_adapter_to_checkpoint
from vlmrl_pipeline.core.export.mtmd import (
    MEDIA_MARKER,
    MtmdJob,
    buffer_types,
    evaluate_gguf,
    image_token_limits,
    media_prompt,
    run_gguf_multimodal,
    stop_token_ids,
)
from vlmrl_pipeline.core.llama_cpp import llama_cpp_tools
from vlmrl_pipeline.core.model.loading import load_model, vision_token_ids

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_runtime_available(),
                                     reason="needs the llama.cpp runtime (pip install -e '.[gguf]')")


def test_media_prompt_replaces_the_one_image_placeholder():
    qwen = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
    assert media_prompt(qwen) == f"<|im_start|>user\n{MEDIA_MARKER}How many?<|im_end|>\n"
    # Gemma 3's processor puts a blank line on each side of the image; mtmd writes the begin/end tokens itself
    gemma = "<bos><start_of_turn>user\n<start_of_image>How many?<end_of_turn>\n"
    assert media_prompt(gemma) == f"<bos><start_of_turn>user\n\n\n{MEDIA_MARKER}\n\nHow many?<end_of_turn>\n"
    with pytest.raises(ValueError, match="2 images"):
        media_prompt(qwen.replace("How", "<|vision_start|><|image_pad|><|vision_end|>How"))
    with pytest.raises(ValueError, match="no image placeholder"):
        media_prompt("<|im_start|>user\nHow many?<|im_end|>\n")


def test_image_token_limits_follow_the_processor(tiny_checkpoint):
    from transformers import AutoProcessor

    # the tiny processor: 1024..4096 pixels, 32 px per token
    assert image_token_limits(AutoProcessor.from_pretrained(tiny_checkpoint)) == (1, 4)
    assert image_token_limits(object()) == (0, 0)


def test_buffer_types_are_read_from_llama_cpps_load_log():
    log = ("done_getting_tensors: tensor 'token_embd.weight' (q8_0) (and 24 others) cannot be used with preferred "
           "buffer type CPU_REPACK, using CPU instead\nload_tensors:   CPU_Mapped model buffer size =     0.46 MiB\n"
           "load_tensors:   AMX model buffer size =  1953.78 MiB\n")
    assert buffer_types(log) == (["AMX", "CPU_Mapped"], ["CPU_REPACK"])


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """A trained-looking adapter merged in float32, exported as f32, q8_0 and q4_k_m with an f16 mmproj."""
    from vlmrl_pipeline_tests.test_export import _save_adapter

    if not llama_cpp_runtime_available():
        pytest.skip("needs the llama.cpp runtime (pip install -e '.[gguf]')")
    folder = tmp_path_factory.mktemp("mtmd")
    adapter = _save_adapter(tiny_checkpoint, folder / "adapter", trained=True)
    merged = merge_adapter_to_checkpoint(tiny_checkpoint, adapter, folder / "merged", dtype="float32")
    exports = export_gguf(merged, folder / "gguf", ["f32", "q8_0", "q4_k_m"], llama_cpp_tools().converter)
    images = []
    for i, colour in enumerate(("red", "green", "blue", "grey")):
        path = folder / f"image{i}.png"
        Image.new("RGB", (64, 64), colour).save(path)
        images.append(path)
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What is {i} plus 3?"}]}]
               for i in range(4)]
    return merged, {e.gguf_type: e for e in exports}, prompts, images


@needs_llama_cpp
def test_an_f32_gguf_with_its_mmproj_sees_the_evaluations_prompt_and_answers_as_transformers(exported):
    merged, exports, prompts, images = exported
    model, processor, _ = load_model(str(merged), backend="transformers", dtype="float32", device="cpu")
    opened = [Image.open(p).convert("RGB") for p in images]
    reference_logits = next_token_logits(model, processor, prompts, opened).numpy()
    reference_ids = greedy_new_ids(model, processor, prompts, opened, 12)
    f32 = exports["f32"]
    result = evaluate_gguf(f32.model_file, f32.mmproj_file, processor, prompts, images, max_new_tokens=12,
                           stop_ids=stop_token_ids(merged), suppress_ids=vision_token_ids(processor),
                           logits_samples=4)
    # the same prompt, token for token, as transformers tokenizes it (image placeholders aside)
    assert result.prompt_tokens_identical == 4 and result.first_prompt_difference is None
    # 64 px: 4x4 patches, 2x2 merge, as transformers (mtmd's own minimum would have made it 9)
    assert result.image_tokens == [4, 4, 4, 4] and result.image_tokens_identical == 4
    agreement = logit_agreement(reference_logits, result.first_logits, reference_ids, result.new_tokens)
    assert agreement["argmax_agree"] == 4 and agreement["greedy_identical"] == 4
    # float32 both sides: the image went in the same way. llama.cpp's sums run in another order than torch's, and
    # its thread count (the machine's load) changes that order: 0.0005-0.0012 seen, so the bound is 5e-3; an image
    # fed differently (9 tokens instead of 4) moves the logits by far more, and the token checks above catch it.
    assert max(agreement["relative_logit_diff"]) < 5e-3
    assert result.completions == [processor.tokenizer.decode(i, skip_special_tokens=True) for i in reference_ids]
    # and the image matters: another image gives other first-token logits
    swapped = evaluate_gguf(f32.model_file, f32.mmproj_file, processor, prompts[:1], images[2:3], max_new_tokens=1,
                            stop_ids=[], logits_samples=1)
    assert not np.allclose(swapped.first_logits[0], result.first_logits[0], atol=1e-4)


@needs_llama_cpp
@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_k_m"])
def test_quantized_ggufs_run_through_the_multimodal_path_with_the_plain_kernels(exported, gguf_type):
    """The crash of q8_0 through mtmd (llama-cpp-python's ``Llama``, which loads with the CPU's extra buffer types:
    on Sapphire Rapids the AMX buffer, whose ``ggml_backend_amx_mul_mat`` segfaulted): loaded here with them off,
    the weights sit in plain CPU buffers and the quantized files answer close to the f32 one."""
    merged, exports, prompts, images = exported
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(merged))
    kwargs = dict(max_new_tokens=8, stop_ids=stop_token_ids(merged), logits_samples=4)
    f32 = evaluate_gguf(exports["f32"].model_file, exports["f32"].mmproj_file, processor, prompts, images, **kwargs)
    quantized = evaluate_gguf(exports[gguf_type].model_file, exports[gguf_type].mmproj_file, processor, prompts,
                              images, **kwargs)
    assert quantized.weight_buffers and not set(quantized.weight_buffers) & {"AMX", "CPU_REPACK"}
    assert quantized.prompt_tokens_identical == 4
    agreement = logit_agreement(f32.first_logits, quantized.first_logits)
    assert agreement["argmax_agree"] >= 3 and agreement["mean_relative_logit_diff"] < 0.2


@needs_llama_cpp
def test_the_extra_buffer_types_switch_reaches_llama_cpp(exported):
    """On: llama.cpp offers the weights to its extra buffer types (here the AVX2 repack, which refuses the tiny
    model's shapes; AMX on a Sapphire Rapids CPU). Off (the default): it never considers them."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    if "REPACK = 1" not in info and "AMX" not in info:
        pytest.skip(f"this llama.cpp build has no extra CPU buffer types: {info}")
    merged, exports, prompts, images = exported
    q8 = exports["q8_0"]
    job = dict(model_file=str(q8.model_file), mmproj_file=str(q8.mmproj_file),
               prompts=[f"<|im_start|>user\n{MEDIA_MARKER}hi<|im_end|>\n<|im_start|>assistant\n"],
               image_paths=[str(images[0])], max_new_tokens=2, stop_ids=[])
    on = run_gguf_multimodal(MtmdJob(**job, extra_buffer_types=True))
    off = run_gguf_multimodal(MtmdJob(**job))
    assert set(on.weight_buffers + on.preferred_buffers) & {"AMX", "CPU_REPACK"}
    assert not set(off.weight_buffers + off.preferred_buffers) & {"AMX", "CPU_REPACK"}


@needs_llama_cpp
def test_a_broken_gguf_fails_with_its_name(exported, tmp_path):
    merged, exports, prompts, images = exported
    broken = tmp_path / "model-broken.gguf"
    broken.write_bytes(Path(exports["q8_0"].model_file).read_bytes()[:4096])  # truncated
    job = MtmdJob(model_file=str(broken), mmproj_file=str(exports["q8_0"].mmproj_file),
                  prompts=[f"{MEDIA_MARKER}hi"], image_paths=[str(images[0])], max_new_tokens=2, stop_ids=[])
    with pytest.raises(RuntimeError, match="model-broken.gguf"):
        run_gguf_multimodal(job)


@needs_llama_cpp
@pytest.mark.slow
def test_a_gemma3_gguf_sees_the_prompt_and_image_as_transformers_does(tmp_path):
    """Gemma 3's template writes ``<bos>`` and ``<start_of_image>``; its processor adds the tokenizer's BOS too and
    a blank line on each side of 256 image tokens. mtmd must see exactly that (a tiny-width Gemma 3 stand-in)."""
    from transformers import AutoProcessor

    from vlmrl_pipeline.core.standin.build import build_standin

    checkpoint = build_standin("gemma3-4b", tmp_path / "gemma", tiny=True)
    [export] = export_gguf(checkpoint, tmp_path / "gguf", ["f16"], llama_cpp_tools().converter)
    image = tmp_path / "red.png"
    Image.new("RGB", (512, 512), "red").save(image)
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 3 plus 4?"}]}]]
    result = evaluate_gguf(export.model_file, export.mmproj_file, processor, prompts, [image], max_new_tokens=2,
                           stop_ids=stop_token_ids(checkpoint), suppress_ids=vision_token_ids(processor))
    assert result.prompt_tokens_identical == 1, result.first_prompt_difference
    assert result.image_tokens == [256] and result.image_tokens_identical == 1
