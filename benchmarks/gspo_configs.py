"""What gspo_benchmark.py measures: the backends, the published Qwen3-VL architectures, the GPUs' limits,
the seed-batch paths, and the rough seconds each child takes (to skip what a deadline cannot fit)."""

from __future__ import annotations

BACKENDS = ("transformers-bf16", "unsloth-4bit", "unsloth-16bit", "unsloth-4bit-vllm", "unsloth-16bit-vllm",
            "transformers-bf16-vllm")


ENGINES = {
    "transformers-bf16": "transformers bf16 + PEFT LoRA, rollouts through model.generate",
    "unsloth-4bit": "Unsloth 4-bit + LoRA, rollouts through model.generate",
    "unsloth-16bit": "Unsloth 16-bit + LoRA, rollouts through model.generate",
    "unsloth-4bit-vllm": "Unsloth 4-bit + LoRA, fast_inference (Unsloth's in-process vLLM, weights shared)",
    "unsloth-16bit-vllm": "Unsloth 16-bit + LoRA, fast_inference (Unsloth's in-process vLLM, weights shared)",
    "transformers-bf16-vllm": "transformers bf16 + PEFT LoRA, TRL's colocated vLLM (a second copy of the weights)",
}
"""What each configuration is; ``-vllm`` ones roll out through vLLM."""


# The seed's epoch: 466 training prompts of the numeric MathVista split, 8 prompts (32 completions) per optimizer
# step = 58 optimizer steps of 4 micro-steps of 8 completions.
SEED_EPOCH_MICRO_STEPS = 58 * 4


# Memory bandwidth and dense bf16 tensor throughput, the limits each phase is held against.
GPU_LIMITS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.0e12, 312e12), "L40S": (0.864e12, 362e12),
              "4090": (1.008e12, 165e12)}


VERSION_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "unsloth", "unsloth_zoo", "bitsandbytes")


# Published config values (Qwen/Qwen3-VL-2B-Instruct and Qwen/Qwen3-VL-8B-Instruct config.json; field names as in
# transformers 5.17's Qwen3VLTextConfig / Qwen3VLVisionConfig). Token ids are not listed: they come from the
# tokenizer built here, so that processor and config agree.
ARCHS: dict[str, dict] = {
    "2b": {
        "name": "qwen3-vl-2b-arch",
        "text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                      "mrope_interleaved": True}),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[5, 11, 17]),
        "tie_word_embeddings": True,
    },
    "8b": {
        "name": "qwen3-vl-8b-arch",
        "text": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                      "mrope_interleaved": True}),
        "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[8, 16, 24]),
        "tie_word_embeddings": False,
    },
    # --smoke: same code path, a shape that runs on two CPU cores. The vocab stays larger than the tokenizer, as
    # in the real runs (151936 vs a few thousand trained tokens).
    "tiny": {
        "name": "qwen3-vl-tiny-arch",
        "text": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                     rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                      "mrope_interleaved": True}),
        "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                       hidden_act="gelu_pytorch_tanh", deepstack_visual_indexes=[1]),
        "tie_word_embeddings": True,
    },
}


# Rough seconds per child on an H100 (import + load + compile + steps), to skip what cannot finish before
# --deadline-s instead of being killed half-way.
ESTIMATE_S = {
    ("2b", "build"): 35, ("8b", "build"): 80,
    ("2b", "transformers-bf16"): 90, ("8b", "transformers-bf16"): 140,
    ("2b", "unsloth-4bit"): 150, ("8b", "unsloth-4bit"): 210,
    ("2b", "unsloth-16bit"): 140, ("8b", "unsloth-16bit"): 190,
    # Seed batch, child walls measured on an H200 (2026-12-03); the 4-bit vLLM path plus its warm-up step.
    ("8b", "unsloth-4bit-vllm"): 420, ("8b", "unsloth-16bit-vllm"): 300, ("8b", "transformers-bf16-vllm"): 180,
    ("8b", "standin"): 90, ("8b", "unsloth-4bit-seed"): 340,
}


SEED_BATCH_CONFIGS = {
    # backend: (vLLM engine GiB, capped, warm-up steps or None for --warmup). The engine's share holds the shared
    # 4-bit weights (7.3 GB) and the KV cache of one rollout (32 sequences x ~1300 tokens x 144 KiB = 6 GB); 16-bit
    # needs 17.5 GB of weights before any.
    # A warm-up step: the first step's _prepare_inputs (33 s of vLLM rollout, 56 s of logprob recompute) compiles
    # the recompute, which the first-step estimate cannot take out; a second step costs ~40 s.
    "unsloth-4bit-vllm": (15.0, True, None),
    # The reference, as measured before: TRL's colocated engine at 0.3 of the GPU, no cap (it needs ~70 GB).
    "transformers-bf16-vllm": (None, False, None),
    # 16-bit weights (17.5 GB) in a 21 GiB engine: measured to leave vLLM no KV cache under the 24 GiB cap.
    "unsloth-16bit-vllm": (21.0, True, None),
    # generate: one optimizer step (~5 min) and no warm-up step: its _prepare_inputs is the rollout alone (no
    # recompute on this on-policy path), so the first-step estimate takes the whole compile out.
    "unsloth-4bit": (None, True, 0),
}
"""The seed-batch paths, in the order they run (the most informative first, should the deadline cut the run)."""
