"""Where the rollout/train log-prob gap on random weights comes from, measured without vLLM.

TRL logs ``sampling/sampling_logp_difference/mean``: the mean over completion tokens of |log p_rollout - log p_train|
for the sampled tokens. On the random-weight Qwen3-VL 2B stand-in it is ~0.87 nats (vLLM rollouts, transformers
training, both bf16); on the trained demo model 0.04. This script asks whether vLLM is needed for such a gap at all:
for each model it samples one completion per prompt (float32, temperature 1, one image per prompt) and scores the
same token sequences again with transformers alone under other numerics:

* ``bf16``: the weights and activations in bfloat16 (what vLLM and the trainer both run);
* ``bf16-eager``: bfloat16 with the eager attention kernel instead of SDPA, i.e. the same dtype and a different
  kernel (the situation of two engines that both run bf16);
* ``bf16-sdpa-again``: bfloat16 SDPA scored twice (must be 0: the comparison itself adds nothing).

For each it prints the mean and max |delta log p| over completion tokens, and the relative difference of the hidden
states after each decoder layer (how a rounding difference grows with depth), beside the policy's entropy.

    python benchmarks/logp_gap_probe.py --standin qwen3vl-2b --demo --out /tmp/logp_gap.json   # CPU, ~10 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.vllm_benchmark import chat_inputs  # noqa: E402  (the benchmark's prompts and noise images)


def log(msg: str) -> None:
    print(f"[logp-gap {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def demo_base_model(work: Path) -> str:
    """The bundled demo profile's warm-started base model (a trained policy), materialized through Dagster."""
    from dagster import DagsterInstance, materialize

    from vlmrl_pipeline.core.lineage import model_load_path, read_model_ref
    from vlmrl_pipeline.core.profiles import demo_profile
    from vlmrl_pipeline.definitions import all_assets, all_checks
    from vlmrl_pipeline.resources import resources_for_profile

    result = materialize([*all_assets, *all_checks], selection=["mathvista_filtered", "resized_images", "base_model"],
                         resources=resources_for_profile(demo_profile(), str(work)),
                         instance=DagsterInstance.ephemeral())
    if not result.success:
        raise RuntimeError("the demo base_model did not materialize")
    folder = work / "base_model"
    return model_load_path(read_model_ref(folder), folder)


def encode(processor, prompt, image, device):
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[[image]], return_tensors="pt").to(device)


def score(model, inputs, sequence, prompt_len: int, dtype):
    """Per-token log p of the completion tokens of ``sequence``, the entropy there, and every layer's hidden states."""
    import torch

    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    if "pixel_values" in extra:  # a text-only prompt has none
        extra["pixel_values"] = extra["pixel_values"].to(dtype)
    for key, value in extra.items():  # per-token tensors (mm_token_type_ids): the completion is text, type 0
        if value.dim() == 2 and value.shape[1] == prompt_len:
            extra[key] = torch.cat([value, value.new_zeros(1, sequence.shape[1] - prompt_len)], dim=1)
    with torch.no_grad():
        out = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), output_hidden_states=True, **extra)
    logp = torch.log_softmax(out.logits[0, prompt_len - 1:-1].float(), dim=-1)
    tokens = sequence[0, prompt_len:]
    token_logp = logp.gather(-1, tokens[:, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    hidden = [h[0, prompt_len:].float() for h in out.hidden_states]
    return token_logp.cpu(), entropy.cpu(), hidden


def probe(name: str, checkpoint: str, args) -> dict:
    import torch

    from vlmrl_pipeline.core.model.loading import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    model, processor, _ = load_model(checkpoint, backend="transformers", dtype="float32", load_in_4bit=False)
    model.to(device).eval()
    prompts, images = chat_inputs(args.prompts, args.image_size, seed=args.seed)
    samples = []
    for prompt, image in zip(prompts, images):
        inputs = encode(processor, prompt, image, device)
        with torch.no_grad():
            sequence = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        samples.append((inputs, sequence, inputs["input_ids"].shape[1]))
    log(f"{name}: sampled {len(samples)} x {args.new_tokens} tokens in float32")

    variants = {}
    for variant, dtype, attn in (("float32", torch.float32, "sdpa"), ("bf16", torch.bfloat16, "sdpa"),
                                 ("bf16-sdpa-again", torch.bfloat16, "sdpa"), ("bf16-eager", torch.bfloat16, "eager")):
        model.to(dtype)
        model.set_attn_implementation(attn)
        variants[variant] = [score(model, inputs, seq, plen, dtype) for inputs, seq, plen in samples]

    def compare(a: str, b: str) -> dict:
        deltas, layer_rel = [], None
        for (lp_a, _, h_a), (lp_b, _, h_b) in zip(variants[a], variants[b]):
            deltas += (lp_a - lp_b).abs().tolist()
            rel = [float((x - y).norm() / x.norm().clamp_min(1e-12)) for x, y in zip(h_a, h_b)]
            layer_rel = rel if layer_rel is None else [p + q for p, q in zip(layer_rel, rel)]
        layer_rel = [round(r / len(samples), 5) for r in layer_rel]
        return {"mean_abs_logp_diff": round(statistics.mean(deltas), 4), "max_abs_logp_diff": round(max(deltas), 4),
                "hidden_rel_diff_by_layer": layer_rel}

    entropy = statistics.mean(e for _, ent, _ in variants["bf16"] for e in ent.tolist())
    res = {"model": name, "checkpoint": checkpoint, "device": device, "prompts": len(samples),
           "new_tokens": args.new_tokens, "layers": model.config.get_text_config().num_hidden_layers,
           "vocab": model.config.get_text_config().vocab_size, "entropy_bf16_mean": round(entropy, 4),
           "float32_vs_bf16": compare("float32", "bf16"), "bf16_sdpa_vs_eager": compare("bf16", "bf16-eager"),
           "bf16_vs_itself": compare("bf16", "bf16-sdpa-again")}
    for key in ("float32_vs_bf16", "bf16_sdpa_vs_eager", "bf16_vs_itself"):
        c = res[key]
        h = c["hidden_rel_diff_by_layer"]
        log(f"{name} {key}: mean |dlogp| {c['mean_abs_logp_diff']} (max {c['max_abs_logp_diff']}); hidden rel diff "
            f"after layer 1 {h[1]:.3g}, mid {h[len(h) // 2]:.3g}, last {h[-1]:.3g}")
    log(f"{name}: entropy {res['entropy_bf16_mean']} nats (uniform over the vocabulary: "
        f"{__import__('math').log(res['vocab']):.3f})")
    del model
    return res


def text_only(prompt: list[dict]) -> list[dict]:
    """The same chat prompt without its image."""
    return [{**m, "content": [c for c in m["content"] if c.get("type") != "image"]} for m in prompt]


def vllm_versus_transformers(name: str, checkpoint: str, args) -> dict:
    """Sample with vLLM (temperature 1, TRL's ``processed_logprobs``), then score the same token ids with
    transformers in bf16 and float32: the rollout/train gap TRL logs, with and without the image in the prompt."""
    import torch
    from vllm import LLM, SamplingParams

    from vlmrl_pipeline.core.evaluation.vllm_engine import stop_engine
    from vlmrl_pipeline.core.model.loading import load_model, load_processor

    processor = load_processor(checkpoint)
    prompts, images = chat_inputs(args.prompts, args.image_size, seed=args.seed)
    cases = {"with image": [(p, i) for p, i in zip(prompts, images)],
             "text only": [(text_only(p), None) for p in prompts]}
    # --vllm-as-trl: the engine as TRL 1.15's colocate mode builds it (compiled with CUDA graphs, chunked prefill
    # of 4096 tokens, no dtype given), prompts as token ids, and the vision tokens' logit_bias of our GSPO rollouts.
    engine_kwargs = ({"max_num_batched_tokens": 4096} if args.vllm_as_trl else
                     {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": max(args.prompts, 1),
                      "limit_mm_per_prompt": {"image": 1}})
    llm = LLM(model=checkpoint, seed=args.seed, max_model_len=2048, gpu_memory_utilization=0.3,
              logprobs_mode="processed_logprobs", **engine_kwargs)
    bias = {}
    if args.vllm_as_trl:
        from vlmrl_pipeline.core.training.gspo_config import suppressed_token_kwargs

        bias = suppressed_token_kwargs(processor, "vllm").get("logit_bias", {})
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=args.new_tokens,
                            min_tokens=args.new_tokens, logprobs=0, seed=args.seed, logit_bias=bias or None)
    sampled = {}
    for case, items in cases.items():
        requests = []
        for prompt, image in items:
            text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            source = ({"prompt_token_ids": processor(text=[text], images=[[image]] if image else None)["input_ids"][0]}
                      if args.vllm_as_trl else {"prompt": text})
            requests.append({**source, **({"multi_modal_data": {"image": image}} if image else {})})
        outs = llm.generate(requests, params, use_tqdm=False)
        sampled[case] = [(list(o.prompt_token_ids), list(o.outputs[0].token_ids),
                          [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
                         for o in outs]
    stop_engine(llm)
    log(f"{name}: vLLM sampled {args.prompts} x {args.new_tokens} tokens per case")

    res = {"model": name, "checkpoint": checkpoint, "prompts": args.prompts, "new_tokens": args.new_tokens}
    model, _, _ = load_model(checkpoint, backend="transformers", dtype="float32", load_in_4bit=False)
    model.to("cuda").eval()
    for dtype_name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype)
        for case, items in cases.items():
            deltas, entropies, prompt_ids_equal = [], [], 0
            for (prompt, image), (vllm_prompt_ids, completion, vllm_logp) in zip(items, sampled[case]):
                text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                inputs = processor(text=[text], images=[[image]] if image else None, return_tensors="pt").to("cuda")
                prompt_ids = inputs["input_ids"][0].tolist()
                prompt_ids_equal += prompt_ids == vllm_prompt_ids
                sequence = torch.tensor([prompt_ids + completion], device="cuda")
                token_logp, ent, _ = score(model, inputs, sequence, len(prompt_ids), dtype)
                deltas += (token_logp.cpu() - torch.tensor(vllm_logp)).abs().tolist()
                entropies += ent.tolist()
            key = f"{case}, transformers {dtype_name}"
            res[key] = {"mean_abs_logp_diff": round(statistics.mean(deltas), 4),
                        "max_abs_logp_diff": round(max(deltas), 4),
                        "entropy_mean": round(statistics.mean(entropies), 4),
                        "prompt_ids_equal": f"{prompt_ids_equal}/{len(items)}"}
            log(f"{name} vLLM vs {key}: mean |dlogp| {res[key]['mean_abs_logp_diff']} (max "
                f"{res[key]['max_abs_logp_diff']}), entropy {res[key]['entropy_mean']}, prompt ids equal "
                f"{res[key]['prompt_ids_equal']}")
    del model
    torch.cuda.empty_cache()
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--standin", action="append", default=[], help="a core.standin key (random weights), repeatable")
    p.add_argument("--checkpoint", action="append", default=[], help="a local checkpoint, repeatable")
    p.add_argument("--demo", action="store_true", help="the demo profile's warm-started base model")
    p.add_argument("--tiny", action="store_true", help="tiny stand-in configs (a plumbing check)")
    p.add_argument("--vllm", action="store_true", help="also sample with vLLM and score with transformers (GPU)")
    p.add_argument("--vllm-as-trl", action="store_true", help="with --vllm: the engine and requests as TRL's colocate "
                   "rollouts make them (compiled, chunked prefill, token-id prompts, the vision tokens' logit_bias)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="logp_gap_"))
    models = [(c, c) for c in args.checkpoint]
    for key in args.standin:
        from vlmrl_pipeline.core.standin import build_standin

        out = work / f"standin-{key}"
        if not (out / "config.json").exists():
            t0 = time.perf_counter()
            build_standin(key, out, packaging="bf16", tiny=args.tiny)
            log(f"built {key} in {time.perf_counter() - t0:.0f}s")
        models.append((f"{key} (random weights)", str(out)))
    if args.demo:
        models.append(("demo base model (trained)", demo_base_model(work / "demo")))
    results = []
    for name, ckpt in models:
        if args.vllm:  # first: vLLM starts best before this process has touched CUDA
            results.append(vllm_versus_transformers(name, ckpt, args))
        results.append(probe(name, ckpt, args))
    text = json.dumps(results, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
