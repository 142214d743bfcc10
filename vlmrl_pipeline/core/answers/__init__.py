"""Reading a model's answer and judging it, for the rewards (``core.rewards``) and the evaluation records alike.

Three parts, each importing only the ones before it:

- :mod:`~vlmrl_pipeline.core.answers.extraction`: the text of a completion and the answer in it (the last
  ``<SOLUTION>`` block or ``\\boxed{}``), block counts and the addCriterion-spam rule.
- :mod:`~vlmrl_pipeline.core.answers.matching`: a prediction against a gold answer (strict, numeric, MathVista's
  normalisation, option letters).
- :mod:`~vlmrl_pipeline.core.answers.verdicts`: evaluation's verdicts on one completion (:func:`score_completion`).

Everything here is pure Python and total: the functions never raise on model output, because they run inside the
trainer's reward loop and the evaluation loop, where one odd sample must not kill a long run. The names below stay
importable from ``vlmrl_pipeline.core.answers`` as before the split.
"""

from vlmrl_pipeline.core.answers.extraction import (
    ANSWER_FORMATS,
    REASONING_END,
    REASONING_START,
    SOLUTION_END,
    SOLUTION_START,
    addcriterion_share,
    completion_text,
    count_boxed,
    count_reasoning_blocks,
    count_solution_blocks,
    extract_answer,
    extract_boxed,
    extract_solution,
    is_addcriterion_spam,
)
from vlmrl_pipeline.core.answers.matching import (
    answer_given,
    choice_for_letter,
    choice_list,
    edit_distance,
    gold_text,
    mathvista_match,
    mathvista_normalize,
    numeric_match,
    parse_number,
    strict_match,
    unbox_answer,
)
from vlmrl_pipeline.core.answers.verdicts import (
    boxed_format_ok,
    format_ok,
    score_completion,
)

__all__ = [
    "ANSWER_FORMATS",
    "REASONING_END",
    "REASONING_START",
    "SOLUTION_END",
    "SOLUTION_START",
    "addcriterion_share",
    "answer_given",
    "boxed_format_ok",
    "choice_for_letter",
    "choice_list",
    "completion_text",
    "count_boxed",
    "count_reasoning_blocks",
    "count_solution_blocks",
    "edit_distance",
    "extract_answer",
    "extract_boxed",
    "extract_solution",
    "format_ok",
    "gold_text",
    "is_addcriterion_spam",
    "mathvista_match",
    "mathvista_normalize",
    "numeric_match",
    "parse_number",
    "score_completion",
    "strict_match",
    "unbox_answer",
]
