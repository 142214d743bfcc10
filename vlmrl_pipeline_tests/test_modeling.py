"""Model building and loading: the demo model, LoRA placement, and the real path up to the download."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmrl_pipeline.core.model import loading as modeling
from vlmrl_pipeline.core.model.loading import (
    VISION_SPECIAL_TOKENS,
    LoraSettings,
    apply_lora,
    load_model,
    lora_target_regex,
    resolve_backend,
    vision_token_ids,
)
from vlmrl_pipeline.core.profiles import qwen3vl_8b_profile


def test_tiny_checkpoint_is_a_loadable_qwen3_vl(tiny_checkpoint):
    model, processor, backend = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    assert backend == "transformers"
    assert model.config.model_type == "qwen3_vl"
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    tok = processor.tokenizer
    for token in VISION_SPECIAL_TOKENS + ("<|im_start|>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(token) is not None
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    # Byte-level BPE: text the corpus never contained still round-trips exactly.
    text = "Ünïcode 991.0 <SOLUTION>x</SOLUTION>"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_places_the_image_and_the_generation_prompt(tiny_checkpoint):
    _, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n<|im_start|>assistant\n"
    )
    enc = processor(text=[text], images=[Image.new("RGB", (64, 64), "white")], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 64 px -> 4x4 patches of 16 px -> 2x2 merge -> 4 placeholder tokens
    assert int((enc["input_ids"] == image_id).sum()) == 4


def test_sampling_never_emits_vision_tokens(tiny_checkpoint):
    model, processor, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text] * 4, images=[Image.new("RGB", (64, 64), "red")] * 4, return_tensors="pt", padding=True)
    banned = vision_token_ids(processor)
    assert len(banned) == len(VISION_SPECIAL_TOKENS)
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=60, do_sample=True, temperature=5.0, suppress_tokens=banned,
                         min_new_tokens=60)
    new = out[:, enc["input_ids"].shape[1]:]
    assert not any(int(t) in banned for t in new.flatten())


def test_lora_targets_language_attention_and_mlp_only(tiny_checkpoint):
    model, _, _ = load_model(tiny_checkpoint, backend="transformers", dtype="float32")
    wrapped = apply_lora(model, LoraSettings(r=4, lora_alpha=8), "transformers")
    lora_modules = [name for name, _ in wrapped.named_modules() if name.endswith(".lora_A")]
    assert lora_modules, "no LoRA module was created"
    assert not [n for n in lora_modules if "visual" in n]
    kinds = {re.search(r"\.(\w+_proj)\.lora_A$", n).group(1) for n in lora_modules}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_switches_change_the_target_regex():
    attention_only = lora_target_regex(LoraSettings(finetune_mlp_modules=False))
    assert re.fullmatch(attention_only, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(attention_only, "model.language_model.layers.0.mlp.up_proj")
    with_vision = lora_target_regex(LoraSettings(finetune_vision_layers=True))
    assert re.fullmatch(with_vision, "model.visual.blocks.3.attn.qkv")
    assert not re.fullmatch(lora_target_regex(LoraSettings()), "model.visual.blocks.3.attn.qkv")
    with pytest.raises(ValueError, match="no module"):
        lora_target_regex(LoraSettings(finetune_language_layers=False))


def test_backend_resolution_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(modeling, "unsloth_available", lambda: False)
    assert resolve_backend("auto") == "transformers"
    with pytest.raises(RuntimeError, match="gpu"):
        resolve_backend("unsloth")
    with pytest.raises(ValueError):
        resolve_backend("vllm")


def test_real_profile_loads_qwen3_vl_through_unsloth_with_the_seed_arguments(monkeypatch):
    """The GPU path up to the download: FastVisionModel gets the seed's arguments, LoRA the seed's switches."""
    calls = {}

    class FakeFastVisionModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            processor = types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side="right"))
            return object(), processor

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastVisionModel=FakeFastVisionModel))
    monkeypatch.setattr(modeling, "unsloth_available", lambda: True)
    cfg = qwen3vl_8b_profile().model
    model, processor, backend = load_model(cfg.model_name, backend=cfg.backend, load_in_4bit=cfg.load_in_4bit,
                                           max_seq_length=cfg.max_seq_length)
    assert backend == "unsloth"
    assert calls["from_pretrained"]["model_name"] == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    assert calls["from_pretrained"]["load_in_4bit"] is True
    assert calls["from_pretrained"]["max_seq_length"] == 16384
    assert processor.tokenizer.padding_side == "left"
    apply_lora(model, cfg.lora, backend)
    peft = calls["get_peft_model"]
    assert peft["finetune_vision_layers"] is False
    assert peft["finetune_language_layers"] and peft["finetune_attention_modules"] and peft["finetune_mlp_modules"]
    assert (peft["r"], peft["lora_alpha"]) == (16, 16)


def test_transformers_path_requests_4bit_weights_from_the_hub(monkeypatch):
    seen = {}

    def fake_model_from_pretrained(name, **kwargs):
        seen["model"] = (name, kwargs)
        raise OSError("offline: weights would be downloaded here")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_model_from_pretrained)
    with pytest.raises(OSError, match="downloaded"):
        load_model("Qwen/Qwen3-VL-8B-Instruct", backend="transformers", load_in_4bit=True, revision="abc123")
    name, kwargs = seen["model"]
    assert name == "Qwen/Qwen3-VL-8B-Instruct"
    assert kwargs["revision"] == "abc123"
    assert kwargs["quantization_config"].load_in_4bit is True


def test_offline_hub_load_fails_clearly(monkeypatch, tmp_path):
    """Without weights in the cache and with the hub offline, loading says so instead of hanging."""
    import huggingface_hub.constants

    # The env var is read at import time, so patch the constant the hub client consults.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="offline|cached|connection|reach"):
        load_model("unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit", backend="transformers")


def _fake_unsloth(monkeypatch, calls):
    class FakeFastVisionModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            return object(), types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side="right"))

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastVisionModel=FakeFastVisionModel))
    monkeypatch.setattr(modeling, "unsloth_available", lambda: True)


def test_fast_inference_reaches_unsloth_only_when_vllm_is_installed(monkeypatch):
    calls = {}
    _fake_unsloth(monkeypatch, calls)
    monkeypatch.setattr(modeling, "vllm_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"needs vLLM, which is not installed.*fast_inference=False"):
        load_model("Qwen/Qwen2.5-VL-7B-Instruct", backend="unsloth", fast_inference=True)
    assert "from_pretrained" not in calls  # refused before any download
    monkeypatch.setattr(modeling, "vllm_available", lambda: True)
    load_model("Qwen/Qwen2.5-VL-7B-Instruct", backend="unsloth", load_in_4bit=False, fast_inference=True,
               gpu_memory_utilization=0.6, dtype="bfloat16")
    kwargs = calls["from_pretrained"]
    assert kwargs["fast_inference"] is True and kwargs["gpu_memory_utilization"] == 0.6
    assert kwargs["dtype"] == torch.bfloat16
    load_model("Qwen/Qwen2.5-VL-7B-Instruct", backend="unsloth")
    assert "fast_inference" not in calls["from_pretrained"] and calls["from_pretrained"]["dtype"] is None


def test_a_16bit_checkpoint_reaches_unsloths_vllm_engine_as_its_4bit_copy(monkeypatch, tmp_path):
    """vLLM's in-flight 4-bit would quantize the vision tower, which Unsloth's rebuilt training model cannot run:
    a 16-bit checkpoint with fast_inference + load_in_4bit is served from a copy in Unsloth's own 4-bit packaging."""
    calls, made = {}, []
    _fake_unsloth(monkeypatch, calls)
    monkeypatch.setattr(modeling, "vllm_available", lambda: True)

    def fake_copy(name, cache, **kwargs):
        made.append((name, kwargs))
        return Path(cache) / "4bit-copy"

    monkeypatch.setattr(modeling, "vllm_4bit_checkpoint", fake_copy)
    with pytest.raises(ValueError, match="vllm_4bit_cache"):
        load_model("Qwen/Qwen2.5-VL-7B-Instruct", backend="unsloth", load_in_4bit=True, fast_inference=True)
    assert "from_pretrained" not in calls
    load_model("Qwen/Qwen2.5-VL-7B-Instruct", backend="unsloth", load_in_4bit=True, fast_inference=True,
               revision="abc123", vllm_4bit_cache=tmp_path)
    assert made == [("Qwen/Qwen2.5-VL-7B-Instruct", {"revision": "abc123", "dtype": "auto", "log": None})]
    # Unsloth refuses a pinned revision with fast_inference; the copy is a local folder, pinned by its own key.
    assert calls["from_pretrained"]["model_name"] == str(tmp_path / "4bit-copy")
    assert calls["from_pretrained"]["revision"] is None
    # Unsloth's pre-quantized uploads, 16-bit loading and generate rollouts take the checkpoint as it is.
    for name, four_bit, fast in (("unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit", True, True),
                                 ("Qwen/Qwen2.5-VL-7B-Instruct", False, True),
                                 ("Qwen/Qwen2.5-VL-7B-Instruct", True, False)):
        load_model(name, backend="unsloth", load_in_4bit=four_bit, fast_inference=fast, vllm_4bit_cache=tmp_path)
        assert calls["from_pretrained"]["model_name"] == name
    assert len(made) == 1


def test_the_vllm_4bit_copy_keeps_the_vision_tower_in_16_bit(tiny_checkpoint, tmp_path):
    """The copy itself (bitsandbytes quantizes on the CPU too): language layers in 4-bit, vision tower, projector
    and lm_head as they were, the quantization recorded in its config; made once, then reused."""
    pytest.importorskip("bitsandbytes")
    import json

    assert not modeling.is_prequantized_4bit(tiny_checkpoint)
    logged = []
    copy = modeling.vllm_4bit_checkpoint(tiny_checkpoint, tmp_path / "cache", device="cpu", log=logged.append)
    assert modeling.is_prequantized_4bit(str(copy))
    quantization = json.loads((copy / "config.json").read_text())["quantization_config"]
    assert set(modeling.VLLM_4BIT_SKIP_MODULES) <= set(quantization["llm_int8_skip_modules"])
    from safetensors import safe_open

    with safe_open(str(copy / "model.safetensors"), "pt") as f:
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    language = [n for n in dtypes if "language_model.layers" in n and n.endswith("q_proj.weight")]
    vision = [n for n in dtypes if "visual.blocks" in n and n.endswith(".weight") and "norm" not in n]
    assert language and all(dtypes[n] == "U8" for n in language), {n: dtypes[n] for n in language}
    assert vision and all(dtypes[n] in ("BF16", "F32", "F16") for n in vision), {n: dtypes[n] for n in vision}
    assert modeling.vllm_4bit_checkpoint(tiny_checkpoint, tmp_path / "cache", device="cpu",
                                         log=logged.append) == copy
    assert "written" in logged[0] and "reusing" in logged[1]


def test_fast_inference_on_the_transformers_backend_says_what_to_change():
    with pytest.raises(RuntimeError, match=r"'transformers' backend.*fast_inference=False"):
        load_model("anything", backend="transformers", fast_inference=True)


def test_gemma3_vision_tokens_are_suppressed_too():
    vocab = {"<start_of_image>": 255999, "<end_of_image>": 256000, "<image_soft_token>": 262144, "hello": 5}
    tokenizer = types.SimpleNamespace(get_vocab=lambda: vocab)
    assert vision_token_ids(tokenizer) == [255999, 256000, 262144]


def _tiny_qwen25_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "vocab_size": 128,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                       "fullatt_block_indexes": [0]},
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _tiny_gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 300, "sliding_window": 8},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4,
    )
    return Gemma3ForConditionalGeneration(config)


@pytest.mark.parametrize("build, vision_prefix", [(_tiny_qwen25_vl, "model.visual."),
                                                  (_tiny_gemma3, "model.vision_tower.")],
                         ids=["qwen2.5-vl", "gemma-3"])
def test_lora_switches_place_adapters_right_on_the_other_seed_architectures(build, vision_prefix):
    from peft import get_peft_model

    def adapted(settings):
        model = get_peft_model(build(), modeling.peft_lora_config(settings))
        return {n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
                for n, _ in model.named_modules() if n.endswith("lora_A")}

    language_only = adapted(LoraSettings())
    assert language_only and all(".language_model." in n for n in language_only)
    assert {n.rsplit(".", 1)[1] for n in language_only} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"}
    with_vision = adapted(LoraSettings(finetune_vision_layers=True))
    vision = {n for n in with_vision if n.startswith(vision_prefix)}
    assert vision and with_vision - vision == language_only
    assert not any("multi_modal_projector" in n or "patch_embed" in n for n in with_vision)
