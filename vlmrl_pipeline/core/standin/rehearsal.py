"""A reward signal for rehearsing the real lineage on stand-in checkpoints (real architecture, random weights).

A model with random weights samples tokens uniformly from a 150 k-token vocabulary: its completions never hold a
tagged answer, so every task reward is 0, every group's advantage is 0, GSPO's gradient is 0 and the LoRA B
matrices stay at PEFT's zeros; the ``lora_weights_trained`` check then (rightly) stops the run. The rehearsal's
question is whether every stage runs at full size, not whether the model learns the task, so it adds this
shaping reward: the share of a completion's characters that are printable ASCII. Random completions differ in it,
so the groups' rewards vary and the optimiser really moves the adapter, through the same trainer, loss and
checkpointing as a real run. It is switched on by ``GSPOSettings.rehearsal_reward_weight`` (off by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.answers.extraction import completion_text


def ascii_share_reward(completions: Any, **kwargs: Any) -> list[float]:
    """Share of each completion's characters that are printable ASCII (0.0 for an empty completion).

    >>> ascii_share_reward([[{"role": "assistant", "content": "ab\\u4e2d\\u6587"}], "12"])
    [0.5, 1.0]
    """
    items = completions if isinstance(completions, (list, tuple)) else [completions]
    scores = []
    for item in items:
        text = completion_text(item)
        scores.append(sum(" " <= ch <= "~" for ch in text) / len(text) if text else 0.0)
    return scores


# --- the data a rehearsal runs on ---------------------------------------------------------------------------------

# geo3k-style problems (RLinf's form): a prompt with an <image> placeholder, one image, a boxed answer.
_GEO3K_TEMPLATES = (
    ("<image>Find x. Round to the nearest tenth.", "\\boxed{{{a}.{b}}}"),
    ("<image>Find the area of the figure. Round to the nearest hundredth.", "\\boxed{{{a}{b}.{b}{a}}}"),
    ("<image>In the figure, find m \\angle {a}.", "\\boxed{{{a}{b}}}"),
    ("<image>Find the perimeter of the triangle.", "\\boxed{{{a}+{b}\\sqrt{{3}}}}"),
)


def _placeholder_image(width: int, height: int, label: str):
    """A plain figure-like image: the real images cannot be fetched here, and a stand-in with random weights
    cannot read one anyway; what matters is the pixel count the processor turns into image tokens."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 8, height // 8, width * 7 // 8, height * 7 // 8], outline="black", width=3)
    draw.line([width // 8, height * 7 // 8, width * 7 // 8, height // 8], fill="blue", width=3)
    draw.text((width // 6, height // 6), label, fill="black")
    return image


def write_mathvista_layout(out_dir: str | os.PathLike, *, testmini_json: str | os.PathLike | None = None,
                           num_rows: int = 48, max_side: int = 1024) -> Path:
    """A local copy in MathVista's GitHub layout (``testmini.json``, ``query.json``, ``images/``) for a rehearsal.

    From MathVista's own ``testmini.json`` (and the ``query.json`` beside it) when given: its first ``num_rows``
    problems with numeric answers, texts and fields unchanged, each with a placeholder image of the size its
    metadata records (capped at ``max_side``). Without it, the project's synthetic set in the same layout.
    """
    import json

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if testmini_json is not None:
        from vlmrl_pipeline.core.data.filtering import is_numeric_answer

        problems = json.loads(Path(testmini_json).read_text())
        chosen = {pid: p for pid, p in problems.items() if is_numeric_answer(p.get("answer"))}
        chosen = dict(list(chosen.items())[:num_rows])
        queries_file = Path(testmini_json).parent / "query.json"
        if queries_file.exists():
            queries = json.loads(queries_file.read_text())
            (out / "query.json").write_text(json.dumps({pid: queries[pid] for pid in chosen if pid in queries}))
        for pid, problem in chosen.items():
            meta = problem.get("metadata") or {}
            width = min(int(meta.get("img_width") or 512), max_side)
            height = min(int(meta.get("img_height") or 512), max_side)
            path = out / problem.get("image", f"images/{pid}.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            _placeholder_image(width, height, f"MathVista {pid}").save(path)
        (out / "testmini.json").write_text(json.dumps(chosen, indent=1))
        return out
    from vlmrl_pipeline.core.demo.synthetic import generate_synthetic_mathvista

    rows = generate_synthetic_mathvista(num_rows=num_rows, seed=0, image_size=512)
    problems = {}
    for row in rows.to_dict("records"):
        image = f"images/{row['pid']}.png"
        (out / image).write_bytes(row["decoded_image"]["bytes"])
        problems[str(row["pid"])] = {
            key: (list(row[key]) if key == "choices" and row[key] is not None else row[key])
            for key in ("question", "choices", "unit", "precision", "answer", "question_type", "answer_type",
                        "pid", "metadata")
        } | {"image": image}
    (out / "query.json").write_text(json.dumps({str(r["pid"]): r["query"] for r in rows.to_dict("records")}))
    (out / "testmini.json").write_text(json.dumps(problems, indent=1, default=str))
    return out


def write_geo3k_layout(out_dir: str | os.PathLike, *, num_rows: int = 48, split: str = "train") -> Path:
    """A local copy in RLinf's form (geo3k's columns: ``problem`` with an ``<image>`` placeholder, ``images``,
    ``answer`` as ``\\boxed{}``), one parquet file per split, with placeholder figures."""
    import io

    import pandas as pd

    rows = []
    for i in range(num_rows):
        question, answer = _GEO3K_TEMPLATES[i % len(_GEO3K_TEMPLATES)]
        a, b = 2 + i % 7, 1 + i % 5
        buffer = io.BytesIO()
        _placeholder_image(448, 448, f"geo3k {i}").save(buffer, format="PNG")
        rows.append({"id": f"geo-{i}", "problem": question.format(a=a, b=b),
                     "images": [{"bytes": buffer.getvalue(), "path": f"{i}.png"}],
                     "answer": answer.format(a=a, b=b)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / f"{split}.parquet")
    return out


REHEARSAL_STANDINS = {
    "qwen3vl-8b": "qwen3vl-8b",
    "qwen3vl-8b-paper": "qwen3vl-2b",
    "qwen3vl-8b-dapo": "qwen3vl-2b",
    "geo3k": "qwen3vl-2b",
    "qwen25vl-7b": "qwen25vl-7b",
    "gemma3-4b": "gemma3-4b",
}
"""Which stand-in (``core.standin``) each real profile rehearses on. The profiles that share Qwen3-VL 8B with
``qwen3vl-8b`` differ only in training and data settings, so they rehearse on the 2B stand-in (same architecture
class, packaging and vocabulary), which leaves GPU time for the other models at full size."""


# --- a profile, shortened to rehearse on a stand-in ---------------------------------------------------------------

@dataclass(frozen=True)
class RehearsalLengths:
    """The lengths and counts a rehearsal shortens so that a whole lineage fits one short GPU session. Nothing
    else of the profile changes: model class, packaging, backend, LoRA, optimiser, loss and rewards stay."""

    eval_size: int = 8
    max_completion_length: int = 32
    max_new_tokens: int = 32
    max_steps: int = 2
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    rehearsal_reward_weight: float = 1.0
    learning_rate: float = 1e-3
    """Large enough that two steps move random-weight LoRA B matrices measurably (the real rate is kept in the
    profile; only the rehearsal's adapter is affected)."""


def rehearsal_profile(profile, model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                      lengths: RehearsalLengths = RehearsalLengths()):
    """``profile`` pointed at a stand-in checkpoint (``model_name`` = the folder) and a local data copy, with the
    lengths and counts in ``lengths`` shortened and the rehearsal reward on."""
    from dataclasses import replace

    gspo = profile.gspo
    num_generations = min(gspo.num_generations, lengths.per_device_train_batch_size)
    steps_per_generation = gspo.steps_per_generation
    if steps_per_generation is not None:  # keep the preset's reuse of generations (the -paper profile)
        steps_per_generation = 2 * lengths.gradient_accumulation_steps
    return replace(
        profile,
        name=f"{profile.name}-rehearsal",
        data=replace(profile.data, source=str(data_dir), eval_size=lengths.eval_size),
        model=replace(profile.model, model_name=str(model_dir), revision=None),
        gspo=replace(gspo, max_completion_length=lengths.max_completion_length, max_steps=lengths.max_steps,
                     per_device_train_batch_size=lengths.per_device_train_batch_size,
                     gradient_accumulation_steps=lengths.gradient_accumulation_steps,
                     num_generations=num_generations, steps_per_generation=steps_per_generation,
                     learning_rate=lengths.learning_rate, warmup_steps=0.0, save_steps=0, logging_steps=1,
                     rehearsal_reward_weight=lengths.rehearsal_reward_weight),
        generation=replace(profile.generation, max_new_tokens=lengths.max_new_tokens),
    )
