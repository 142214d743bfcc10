"""Evaluation during training on the validation rows, and the choice of which adapter to keep.

With ``training_settings.eval_steps`` the policy answers every validation row greedily every N optimizer steps
(and after the last one), scored by ``core.evaluation.records`` exactly as the held-out evaluation scores: accuracy,
format compliance, answer rate and the training's own reward. The numbers join the trainer's log history (so a resumed
run keeps them: they are in every checkpoint's ``trainer_state.json``) and the run log. With
``keep_checkpoint='best_validation'`` each evaluation that beats every earlier one saves the adapter to
``<work dir>/best_validation/step-<N>``; the kept adapter is the best one in the log history. The held-out rows
never reach this module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

VALIDATION_PREFIX = "validation/"
VALIDATION_METRICS = ("accuracy", "format_compliance", "answer_rate", "mean_total_reward")
"""What each validation evaluation logs, as ``validation/<metric>`` (and ``validation/num_samples``)."""
BEST_DIR = "best_validation"
"""Under the training work folder: one adapter folder per evaluation that was the best so far."""
RECORD_FILE = "validation.json"


def validation_entries(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation evaluations in a trainer's log history, in step order.

    >>> validation_entries([{"step": 2, "loss": 1.0}, {"step": 2, "validation/accuracy": 0.5}])
    [{'step': 2, 'validation/accuracy': 0.5}]
    """
    return [h for h in log_history if f"{VALIDATION_PREFIX}accuracy" in h and "step" in h]


def _rank(entry: dict[str, Any]) -> tuple[float, float, float]:
    return tuple(float(entry.get(f"{VALIDATION_PREFIX}{k}", 0.0)) for k in ("accuracy", "answer_rate",
                                                                            "format_compliance"))


def best_entry(log_history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best validation evaluation: highest accuracy, then answer rate, then format compliance; a later step
    must be strictly better to win (None without any).

    >>> h = [{"step": 2, "validation/accuracy": 0.5}, {"step": 4, "validation/accuracy": 0.7},
    ...      {"step": 6, "validation/accuracy": 0.7}]
    >>> best_entry(h)["step"]
    4
    """
    best = None
    for entry in validation_entries(log_history):
        if best is None or _rank(entry) > _rank(best):
            best = entry
    return best


def best_folder(work_dir: str | Path, step: int) -> Path:
    return Path(work_dir) / BEST_DIR / f"step-{int(step)}"


def drop_later_best(work_dir: str | Path, step: int) -> list[Path]:
    """Remove best-so-far adapters saved after ``step`` (a killed run's, past the checkpoint it resumes from: the
    resumed run evaluates those steps again). Returns what was removed."""
    root = Path(work_dir) / BEST_DIR
    removed = []
    for folder in sorted(root.glob("step-*")) if root.is_dir() else []:
        try:
            later = int(folder.name.removeprefix("step-")) > step
        except ValueError:
            later = True  # not ours: a half-written staging folder
        if later:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def kept_checkpoint(keep: str, log_history: Sequence[dict[str, Any]], final_step: int,
                    work_dir: str | Path) -> dict[str, Any]:
    """Which adapter ``lora_adapter`` writes and why: ``policy``, ``step``, ``final_step``, ``why``, the step's
    ``validation`` numbers (when it was evaluated) and, for ``best_validation``, the adapter ``folder`` to copy.

    Raises RuntimeError when ``best_validation`` finds no evaluation, or the best step's adapter is missing."""
    entries = validation_entries(log_history)
    best = best_entry(log_history)

    def numbers(entry: dict[str, Any] | None) -> dict[str, float] | None:
        return {k: entry[f"{VALIDATION_PREFIX}{k}"] for k in VALIDATION_METRICS
                if f"{VALIDATION_PREFIX}{k}" in entry} if entry else None

    if keep == "last":
        last = next((e for e in reversed(entries) if int(e["step"]) == final_step), None)
        return {"policy": "last", "step": int(final_step), "final_step": int(final_step),
                "why": f"keep_checkpoint='last': the adapter after the final step ({final_step})",
                "validation": numbers(last), "best_validation_step": int(best["step"]) if best else None}
    if best is None:
        raise RuntimeError("keep_checkpoint='best_validation' but no validation evaluation was logged")
    folder = best_folder(work_dir, best["step"])
    if not (folder / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"the best validation step {best['step']}'s adapter is missing from {folder}")
    accuracy = best[f"{VALIDATION_PREFIX}accuracy"]
    why = (f"keep_checkpoint='best_validation': step {best['step']} had the highest validation accuracy "
           f"({100 * accuracy:.1f}% of {best.get(f'{VALIDATION_PREFIX}num_samples', '?')} rows) of "
           f"{len(entries)} evaluations (steps {', '.join(str(e['step']) for e in entries)}; ties go to the "
           "higher answer rate, then format compliance, then the earlier step)")
    return {"policy": "best_validation", "step": int(best["step"]), "final_step": int(final_step), "why": why,
            "validation": numbers(best), "best_validation_step": int(best["step"]), "folder": str(folder)}


def copy_kept_adapter(kept: dict[str, Any], adapter_dir: str | Path) -> None:
    """Put the kept best-validation adapter's files in place of the final one in ``adapter_dir``."""
    if kept.get("policy") != "best_validation":
        return
    for file in Path(kept["folder"]).iterdir():
        if file.is_file() and file.name != RECORD_FILE:
            shutil.copy2(file, Path(adapter_dir) / file.name)


def validation_callback(rows: pd.DataFrame, processor, style, eval_steps: int, generation_settings,
                        rewards, *, keep_best: bool, work_dir: str | Path, is_main: bool,
                        log: Callable[[str], None] | None = None):
    """A ``TrainerCallback`` evaluating the policy on ``rows`` every ``eval_steps`` steps and after the last.

    Every process evaluates (greedy decoding on one replica gives every rank the same numbers, so they stay in
    step); the main one logs and saves the best-so-far adapter. On a resumed run it first removes best adapters
    newer than the checkpoint (their steps run again).
    """
    import torch
    from transformers import TrainerCallback

    from vlmrl_pipeline.core.evaluation.generation import generate_completions
    from vlmrl_pipeline.core.evaluation.records import score_records, summarize_records
    from vlmrl_pipeline.core.prompts import chat_prompts
    from vlmrl_pipeline.core.samples import open_images

    prompts, images = chat_prompts(rows, style), open_images(rows)

    class ValidationCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if is_main and keep_best:
                for folder in drop_later_best(work_dir, state.global_step):
                    if log is not None:
                        log(f"validation: removed {folder.name}, saved after the checkpoint this run resumes from")

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            step = state.global_step
            if step % eval_steps and step != state.max_steps:
                return
            if any(e["step"] == step for e in validation_entries(state.log_history)):
                return  # already evaluated (the last step falling on an eval step)
            tokenizer = processor.tokenizer
            padding_side, was_training = tokenizer.padding_side, model.training
            model.eval()
            try:
                with torch.no_grad():
                    completions = generate_completions(model, processor, prompts, images, generation_settings)
            finally:
                tokenizer.padding_side = padding_side  # the trainer pads its own batches as it chose
                model.train(was_training)
            records = score_records(rows, completions, style.answer_format, rewards=rewards, style=style)
            summary = summarize_records(records)
            entry = {"step": step, f"{VALIDATION_PREFIX}num_samples": len(records),
                     **{f"{VALIDATION_PREFIX}{k}": round(float(summary[k]), 6) for k in VALIDATION_METRICS}}
            earlier = best_entry(state.log_history)
            state.log_history.append(entry)
            improved = best_entry(state.log_history) is entry
            if not is_main:
                return
            if keep_best and improved:
                self._save_best(model, step, entry)
            if log is not None:
                shown = " ".join(f"{k}={entry[f'{VALIDATION_PREFIX}{k}']:.4g}" for k in VALIDATION_METRICS)
                note = " (best so far)" if improved and earlier is not None else (
                    "" if earlier is None else f" (best: step {earlier['step']})")
                log(f"validation at step {step}/{state.max_steps} on {len(records)} rows: {shown}{note}")

        def _save_best(self, model, step: int, entry: dict[str, Any]) -> None:
            from vlmrl_pipeline.core.atomic import atomic_dir

            with atomic_dir(best_folder(work_dir, step)) as tmp:
                model.save_pretrained(tmp)
                (Path(tmp) / RECORD_FILE).write_text(json.dumps(entry, indent=2))

    return ValidationCallback()
