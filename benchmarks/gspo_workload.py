"""gspo_benchmark.py's workload: synthetic prompts and images, the offline processor, the random-weight
checkpoint (``child_build``), and the readings of parameters and memory a row records."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.bench_common import GB
from benchmarks.gspo_configs import ARCHS


def synthetic_rows(n: int, image_size: int, seed: int):
    from vlmrl_pipeline.core.demo.synthetic import generate_synthetic_mathvista

    return generate_synthetic_mathvista(num_rows=n, seed=seed, image_size=image_size)


def prompt_texts(rows) -> list[str]:
    from vlmrl_pipeline.core.prompts import build_prompt_text

    return [build_prompt_text(r, "query") for r in rows.to_dict(orient="records")]


def build_processor(image_size: int, vocab: int):
    """The project's offline Qwen3-VL processor (BPE trained on synthetic MathVista prompts), images up to
    ``image_size`` px per side (512 px -> 32x32 patches -> 256 image tokens after the 2x2 merge)."""
    from vlmrl_pipeline.core.demo.tiny_model import TinyModelSpec, build_tiny_processor

    rows = synthetic_rows(200, 64, seed=123)
    corpus = prompt_texts(rows) + ["<REASONING> </REASONING> <SOLUTION> </SOLUTION>", "0123456789 .-,%"]
    corpus += [str(a) for a in rows["answer"]]
    return build_tiny_processor(corpus, TinyModelSpec(tokenizer="trained", vocab_size=vocab, image_size=image_size))


def write_images(rows, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in rows.to_dict(orient="records"):
        p = folder / f"{r['pid']}.png"
        p.write_bytes(r["decoded_image"]["bytes"])
        paths.append(str(p))
    return paths


def train_dataset(n: int, image_size: int, folder: Path):
    """TRL's VLM format, as ``samples.trl_dataset`` builds it: ``prompt`` (chat), ``image`` (lazy), ``answer``."""
    import datasets

    from vlmrl_pipeline.core.prompts import chat_prompt

    rows = synthetic_rows(n, image_size, seed=0)
    paths = write_images(rows, folder)
    ds = datasets.Dataset.from_dict({
        "prompt": [chat_prompt(t) for t in prompt_texts(rows)],
        "image": paths,
        "answer": [str(a) for a in rows["answer"]],
        "pid": [str(p) for p in rows["pid"]],
    })
    return ds.cast_column("image", datasets.Image())


def eval_inputs(n: int, image_size: int):
    import io

    from PIL import Image

    from vlmrl_pipeline.core.prompts import chat_prompt

    rows = synthetic_rows(n, image_size, seed=7)
    images = [Image.open(io.BytesIO(r["decoded_image"]["bytes"])).convert("RGB") for r in rows.to_dict("records")]
    return [chat_prompt(t) for t in prompt_texts(rows)], images


def param_breakdown(model) -> dict[str, float]:
    """GB held by parameters, by part (4-bit weights count at their packed size)."""
    parts = {"vision": 0, "embed_tokens": 0, "lm_head": 0, "language_layers": 0, "lora": 0, "other": 0}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen and p.numel() > 0:
            continue
        seen.add(p.data_ptr())
        nbytes = p.numel() * p.element_size()
        if "lora_" in name:
            key = "lora"
        elif ".visual." in f".{name}" or name.startswith("visual"):
            key = "vision"
        elif "embed_tokens" in name:
            key = "embed_tokens"
        elif "lm_head" in name:
            key = "lm_head"
        elif "layers." in name:
            key = "language_layers"
        else:
            key = "other"
        parts[key] += nbytes
    return {k: round(v / GB, 3) for k, v in parts.items()}


def device_info():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", "cpu"


def mem_snapshot() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    return {
        "allocated_gb": round(torch.cuda.memory_allocated() / GB, 3),
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3),
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
    }


def child_build(spec: dict) -> dict:
    """Write the random-weight bf16 checkpoint of one architecture (model built directly on the device)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from vlmrl_pipeline.core.model.loading import CHAT_SPECIAL_TOKENS, VISION_SPECIAL_TOKENS, save_checkpoint

    arch = ARCHS[spec["arch"]]
    t0 = time.perf_counter()
    processor = build_processor(spec["image_size"], spec["tokenizer_vocab"])
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in CHAT_SPECIAL_TOKENS + VISION_SPECIAL_TOKENS}
    if max(ids.values()) >= arch["text"]["vocab_size"] or len(tok) > arch["text"]["vocab_size"]:
        raise ValueError("tokenizer ids must stay below the model vocab")
    config = Qwen3VLConfig(
        text_config=dict(arch["text"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(arch["vision"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=arch["tie_word_embeddings"],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.bos_token_id = None
    n_params = sum(p.numel() for p in model.parameters())
    t_built = time.perf_counter()
    save_checkpoint(model, processor, spec["ckpt"], extra={"arch": arch["name"], "n_params": n_params,
                                                           "tokenizer_len": len(tok), "token_ids": ids})
    t_saved = time.perf_counter()
    return {"n_params": n_params, "tokenizer_len": len(tok), "token_ids": ids,
            "build_s": round(t_built - t0, 1), "save_s": round(t_saved - t_built, 1)}
