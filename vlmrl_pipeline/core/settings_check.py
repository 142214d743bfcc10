"""Settings that cannot work, found before a run's first step (``execution.settings_problems`` calls this).

Each settings dataclass checks its own fields when it is made (``GSPOSettings.__post_init__`` and others); this
module adds the checks that need several settings at once, and those of dataclasses that do not check themselves.
"""

from __future__ import annotations

from typing import Any

from vlmrl_pipeline.core.answers import ANSWER_FORMATS

DATASET_FORMATS = ("mathvista", "rlinf")


def settings_conflicts(data: Any = None, model: Any = None, gspo: Any = None, generation: Any = None) -> list[str]:
    """One line per problem (each argument optional): unknown formats, empty splits, and completions that leave
    no room for the prompt inside ``max_seq_length``."""
    problems = []
    if data is not None:
        if data.answer_format not in ANSWER_FORMATS:
            problems.append(f"data_settings.answer_format must be one of {ANSWER_FORMATS}, got {data.answer_format!r}")
        if data.dataset_format not in DATASET_FORMATS:
            problems.append(f"data_settings.dataset_format must be one of {DATASET_FORMATS}, "
                            f"got {data.dataset_format!r}")
        if data.eval_size < 1:
            problems.append(f"data_settings.eval_size must be >= 1 (the held-out rows), got {data.eval_size}")
        if data.image_size < 1:
            problems.append(f"data_settings.image_size must be >= 1, got {data.image_size}")
        if not 0.0 <= data.max_lost_fraction <= 1.0:
            problems.append(f"data_settings.max_lost_fraction must be in [0, 1], got {data.max_lost_fraction}")
    limit = getattr(model, "max_seq_length", None)
    if limit is not None and limit < 1:
        problems.append(f"model_settings.max_seq_length must be >= 1, got {limit}")
    elif limit is not None:
        if gspo is not None and gspo.max_completion_length >= limit:
            problems.append(f"training_settings.max_completion_length={gspo.max_completion_length} leaves no room "
                            f"for the prompt in model_settings.max_seq_length={limit}")
        new_tokens = getattr(generation, "max_new_tokens", None)
        if new_tokens is not None and new_tokens >= limit:
            problems.append(f"eval_settings.max_new_tokens={new_tokens} leaves no room for the prompt in "
                            f"model_settings.max_seq_length={limit}")
    return problems
