"""Supervised warm start for the demo model.

A randomly initialised model never emits ``<REASONING>``/``<SOLUTION>``, so every reward is equal, every group
advantage is zero and GSPO has nothing to learn from. Real instruct checkpoints start with some format
compliance (the seed's Qwen3-VL 8B: 77%). The demo reproduces that starting point: a short supervised run on the
*training* split only, where some question families are mostly answered in the tagged format and others mostly
in plain prose. Greedy decoding then follows the family's habit, so baseline compliance lands between 0% and 100%,
and sampling still explores the other style, which is the signal RL amplifies.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from vlmrl_pipeline.core.answers.extraction import REASONING_END, REASONING_START, SOLUTION_END, SOLUTION_START


@dataclass(frozen=True)
class WarmStartSettings:
    """Supervised warm start (demo model only)."""

    steps: int = field(default=300, metadata={"help": (
        "Optimizer steps (full-parameter AdamW).")})
    batch_size: int = field(default=8, metadata={"help": (
        "Targets per optimizer step of the warm start.")})
    learning_rate: float = field(default=3e-3, metadata={"help": (
        "AdamW learning rate of the warm start.")})
    formatted_rate_high: float = field(default=0.9, metadata={"help": (
        "Share of tagged targets in the question families that mostly answer in format.")})
    formatted_rate_low: float = field(default=0.2, metadata={"help": (
        "Share of tagged targets in the other families (kept above 0 so sampling can still find the format).")})
    seed: int = field(default=0, metadata={"help": (
        "Seed of the warm start's target choice and data order.")})
    right_answer_rate: float = field(default=1.0, metadata={"help": (
        "Share of targets that carry the gold answer. The rest carry a systematic misreading, one more than the "
        "gold integer (non-integer answers always stay right), the kind of habit a real base model brings: greedy "
        "decoding follows it while sampling still finds the right reading, which is what the correctness reward "
        "can teach. 1.0: every target is right.")})
    reasoning: str = field(default="I read the figure to answer.", metadata={"help": (
        "The reasoning text of every tagged target.")})


def misread(answer: str) -> str:
    """The warm start's systematic misreading of a gold answer: an integer plus one; anything else unchanged."""
    text = str(answer).strip()
    return str(int(text) + 1) if re.fullmatch(r"-?\d+", text) else text


def question_family(question: str) -> str:
    """A template-level key for a question: its first three words, lower-cased (``"what is the"``)."""
    words = re.findall(r"[a-z]+", str(question).lower())
    return " ".join(words[:3])


def family_format_rates(questions: Sequence[str], settings: WarmStartSettings) -> dict[str, float]:
    """Alternate high/low format rates over the sorted families, so both kinds exist whenever 2+ families do."""
    families = sorted({question_family(q) for q in questions})
    # Sort by a hash, not alphabetically, so which families are "formatted" does not follow the template wording.
    families.sort(key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    return {
        fam: settings.formatted_rate_high if i % 2 == 0 else settings.formatted_rate_low
        for i, fam in enumerate(families)
    }


def warm_start_targets(
    questions: Sequence[str], answers: Sequence[str], settings: WarmStartSettings, answer_format: str = "tags"
) -> list[str]:
    """One target completion per training row: in the task's answer format or plain prose, by family rate.

    ``answer_format="tags"``: reasoning and solution blocks (the seeds' format); ``"boxed"``: a final
    ``Answer: \\boxed{x}`` line (RLinf's geo3k format).
    """
    rates = family_format_rates(questions, settings)
    rng = random.Random(settings.seed)
    # Its own stream, so the share of right answers does not change which targets are tagged.
    habit = random.Random(f"misread:{settings.seed}")
    targets = []
    for question, answer in zip(questions, answers):
        if habit.random() >= settings.right_answer_rate:
            answer = misread(answer)
        if rng.random() < rates[question_family(question)]:
            if answer_format == "boxed":
                targets.append(f"{settings.reasoning}\nAnswer: \\boxed{{{answer}}}")
            else:
                targets.append(f"{REASONING_START}{settings.reasoning}{REASONING_END}\n"
                               f"{SOLUTION_START}{answer}{SOLUTION_END}")
        else:
            targets.append(f"The answer is {answer}.")
    return targets


def supervised_warm_start(
    model,
    processor,
    prompts: Sequence[list[dict]],
    images: Sequence[Image.Image],
    targets: Sequence[str],
    settings: WarmStartSettings,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Fine-tune all of ``model``'s weights on (prompt, image) -> target; returns the loss per step.

    The loss covers the target tokens and the closing ``<|im_end|>`` only, so the model learns to answer and to
    stop, not to reproduce prompts. Raises ``FloatingPointError`` on a non-finite loss, naming the step.
    """
    import torch

    if not (len(prompts) == len(images) == len(targets)) or not prompts:
        raise ValueError("warm start needs the same, non-zero number of prompts, images and targets")
    tokenizer = processor.tokenizer
    end = "<|im_end|>"
    prompt_texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    # Cosine decay: a high rate to leave random init quickly, a low one to settle.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, settings.steps) / settings.steps))
    )
    device = next(model.parameters()).device
    model.train()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # right padding keeps each row's prompt at the start for label masking
    losses: list[float] = []
    order: list[int] = []
    try:
        for step in range(1, settings.steps + 1):
            if len(order) < settings.batch_size:
                fresh = list(range(len(prompts)))
                rng.shuffle(fresh)
                order.extend(fresh)
            batch, order = order[: settings.batch_size], order[settings.batch_size :]
            batch_images = [images[i].convert("RGB") for i in batch]
            full = [prompt_texts[i] + targets[i] + end for i in batch]
            enc = processor(text=full, images=batch_images, return_tensors="pt", padding=True)
            prompt_lens = [
                len(ids)
                for ids in processor(text=[prompt_texts[i] for i in batch], images=batch_images)["input_ids"]
            ]
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
            for row, n in enumerate(prompt_lens):
                labels[row, :n] = -100
            enc = enc.to(device)
            # Logits only where a target token is predicted: the prompts (image tokens included) are most of each
            # row, and the output layer over the whole vocabulary is most of the cost.
            length = labels.shape[1]
            keep = length - min(prompt_lens) + 1
            logits = model(**enc, logits_to_keep=keep).logits[:, :-1]
            target_ids = labels[:, length - keep + 1:].to(device)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                     target_ids.reshape(-1), ignore_index=-100)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"warm start loss became {loss.item()} at step {step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
            if log is not None and (step % 25 == 0 or step == settings.steps):
                log(f"warm start step {step}/{settings.steps} loss {losses[-1]:.4f}")
    finally:
        tokenizer.padding_side = old_side
    model.eval()
    return losses


def tokenizer_corpus(prompt_texts: Sequence[str], targets: Sequence[str]) -> list[str]:
    """Text the demo tokenizer is trained on: training prompts and targets plus every digit and tag form.

    Evaluation rows are left out on purpose: nothing about them, not even their wording, shapes the demo model.
    """
    extras = [f"{REASONING_START} {REASONING_END} {SOLUTION_START} {SOLUTION_END}", "Answer: \\boxed{}",
              "0123456789 .-,%"]
    return list(prompt_texts) + list(targets) + extras


def build_demo_base_model(
    train_rows,
    out_dir,
    spec,
    settings: WarmStartSettings,
    style=None,
    log: Callable[[str], None] | None = None,
):
    """Build the demo policy: tokenizer + random Qwen3-VL from ``spec``, warm-started on ``train_rows`` only.

    Returns ``(checkpoint_dir, losses)``; the checkpoint is written atomically.
    """
    from vlmrl_pipeline.core.demo.tiny_model import build_tiny_qwen3vl
    from vlmrl_pipeline.core.model.loading import load_model, save_checkpoint
    from vlmrl_pipeline.core.prompts import PromptStyle, build_prompt_text, chat_prompts
    from vlmrl_pipeline.core.samples import open_images

    style = style or PromptStyle()
    records = train_rows.to_dict(orient="records")
    targets = warm_start_targets([r["question"] for r in records], [str(r["answer"]) for r in records], settings,
                                 style.answer_format)
    corpus = tokenizer_corpus(
        [build_prompt_text(r, style.prompt_field, instruction=style.instruction) for r in records]
        + ([style.system_prompt] if style.system_prompt else []),
        targets,
    )
    build_tiny_qwen3vl(out_dir, corpus, spec, seed=settings.seed)
    # On the GPU when there is one (CPU otherwise); float32 either way.
    model, processor, _ = load_model(str(out_dir), backend="transformers", dtype="float32")
    losses = supervised_warm_start(
        model, processor, chat_prompts(train_rows, style), open_images(train_rows), targets, settings, log
    )
    save_checkpoint(
        model, processor, out_dir,
        extra={"tiny_model_spec": asdict(spec), "warm_start": asdict(settings), "warm_start_final_loss": losses[-1],
               "trained_on": "train split only", "num_train_rows": len(records)},
    )
    return Path(out_dir), losses
