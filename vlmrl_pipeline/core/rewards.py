"""GRPO reward functions (Unsloth Qwen3-VL GSPO notebook), written the way TRL writes its own (``trl/rewards/``).

TRL calls each reward function as ``f(prompts=..., completions=..., completion_ids=...,
trainer_state=..., **dataset_columns)`` and logs it under ``f.__name__``. Pass
``REWARD_FUNCTIONS`` as ``reward_funcs`` and ``REWARD_WEIGHTS`` as
``GRPOConfig(reward_weights=...)`` to get ``0.3 * format + 1.0 * correctness``.

That pair is the ``"tags"`` entry of :data:`REWARD_SETS`, which keys the reward
functions by answer format; ``"boxed"`` is the geo3k / RLinf recipe (a single
``\\boxed{}`` answer reward, +1 / 0). Use :func:`reward_set` to pick one.

The reward set a profile trains with is built here, once: :func:`gspo_reward_set` (the answer format's set, RLinf's
reward values, the rewards a user plugs in, the rehearsal's extra reward). The training job, ``lora_adapter``'s
checks, and every records asset (baseline, after, merged, gguf) call it, so what evaluation pays is what training
paid. Plugging in and calling rewards the way TRL does is ``core.reward_plugins``.

Each reward is one short typed function with an example in its docstring (the tests run them); a reward with
parameters is a small picklable class with the same signature (:class:`BoxedRewardValued`). They pair the
completions with the dataset's columns by ``zip(..., strict=True)``. Bad input gets one of two answers:

- Odd completion *text* never raises: an exception inside the reward loop would abort a training run hours in, so
  None, numbers, dicts, garbage or spam score whatever the rules give their text (mostly 0.0), and so does an
  unusable gold cell (None, NaN, empty: 0.0).
- A batch of the wrong *shape* raises a ValueError naming the reward: no ``answer`` column for a reward that needs
  one, or a column (``answer``, ``choices``, ``question_type``) whose length is not the number of completions.
  That is a wiring bug, and scoring on would pair completions with other rows' answers; it shows on step one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import pathlib
import re
from collections.abc import Callable
from typing import Any

from vlmrl_pipeline.core import answers
from vlmrl_pipeline.core.answers.extraction import (
    completion_text,
    count_reasoning_blocks,
    count_solution_blocks,
    extract_boxed,
    extract_solution,
    is_addcriterion_spam,
)
from vlmrl_pipeline.core.answers.matching import choice_for_letter, gold_text, numeric_match, strict_match, unbox_answer
from vlmrl_pipeline.core.reward_plugins import load_reward_function, reward_name

FORMAT_WEIGHT = 0.3
CORRECTNESS_WEIGHT = 1.0
BOXED_WEIGHT = 1.0

# Per-rule scores from the seed notebook.
_BLOCK_SCORE = 1.0
_SPAM_PENALTY = -2.0
_EXACT_SCORE = 2.0
_NUMERIC_SCORE = 1.5
# RLinf's geo3k reward: right or not, nothing in between.
_BOXED_SCORE = 1.0


# What TRL passes as ``completions``: conversational (one list of message dicts per completion, whose ``content`` is
# a string or a list of parts) or standard (one string per completion). answers.completion_text reads both.
Completions = list[list[dict[str, Any]]] | list[str]

_PLURALS = {"answer": "answers", "choices": "choice lists", "question_type": "question types"}


def _as_list(values: Any) -> list:
    """Turn a batch argument into a list.

    None -> []; lists/tuples and other non-text iterables -> list(values); a bare
    string, dict or scalar -> a one-element batch (so a direct call with a single
    completion still works).
    """
    if values is None:
        return []
    if isinstance(values, list):
        return values
    if isinstance(values, (str, bytes, dict)):
        return [values]
    try:
        return list(values)
    except Exception:  # noqa: BLE001 - not iterable (int, object) or an iterator that fails midway
        return [values]


def _is_batch(value: Any) -> bool:
    """True for list-like answer columns (list, tuple, numpy array, ...)."""
    if isinstance(value, (str, bytes, dict)):
        return False
    try:
        iter(value)
    except TypeError:
        return False
    # 0-d numpy arrays claim iterability via __iter__ but fail on iteration.
    return getattr(value, "ndim", 1) != 0


def _column(reward: str, name: str, values: Any, n: int, *, required: bool = True) -> list:
    """The dataset column ``name`` as one value per completion, ready for ``zip(..., strict=True)``.

    A list-like column must hold exactly ``n`` values; a bare value (one string or number) applies to every
    completion; a missing optional column gives None for each. Raises ValueError naming ``reward`` when a required
    column is missing (None) or a column's length is not ``n``.
    """
    if values is None:
        if required:
            raise ValueError(f"{reward} needs the dataset's {name!r} column (got none)")
        return [None] * n
    if not _is_batch(values):
        return [values] * n
    column = _as_list(values)
    if len(column) != n:
        raise ValueError(f"{reward} got {n} completions but {len(column)} {_PLURALS[name]} "
                         f"(the dataset's {name!r} column needs one per completion)")
    return column


def _format_score(completion: Any) -> float:
    """Formatting reward for one completion (see :func:`formatting_reward`)."""
    try:
        text = completion_text(completion)
        score = 0.0
        if count_reasoning_blocks(text) == 1:
            score += _BLOCK_SCORE
        if count_solution_blocks(text) == 1:
            score += _BLOCK_SCORE
        if is_addcriterion_spam(text):
            score += _SPAM_PENALTY
        return score
    except Exception:  # noqa: BLE001 - defensive: answers.* is total, but a reward must never raise
        return 0.0


_OPTION_LETTER = re.compile(r"\(?([A-Z])\)?")


def _is_chosen_option(pred: str, gold: Any, choices: Any, question_type: Any) -> bool:
    """True when ``pred`` is the option letter ("B" or "(B)") of the gold choice of a multiple-choice row.

    MathVista's ``query`` asks for the option letter, so without this a correct letter would earn nothing.
    """
    if question_type != "multi_choice":
        return False
    match = _OPTION_LETTER.fullmatch(pred.strip())
    chosen = choice_for_letter(match.group(1), choices) if match else None
    return chosen is not None and chosen.strip() == gold_text(gold)


def _correctness_score(completion: Any, gold: Any, choices: Any = None, question_type: Any = None) -> float:
    """Correctness reward for one completion (see :func:`correctness_reward`)."""
    try:
        if gold_text(gold) is None:
            return 0.0
        pred = extract_solution(completion_text(completion))
        if pred is None:
            return 0.0
        if strict_match(pred, gold) or _is_chosen_option(pred, gold, choices, question_type):
            return _EXACT_SCORE
        if numeric_match(pred, gold):
            return _NUMERIC_SCORE
        return 0.0
    except Exception:  # noqa: BLE001 - defensive, as above
        return 0.0


def _boxed_score(completion: Any, gold: Any) -> float:
    """Boxed-answer reward for one completion (see :func:`boxed_reward`)."""
    try:
        gold_s = unbox_answer(gold)
        if not gold_s:
            return 0.0
        pred = extract_boxed(completion_text(completion))
        if pred is None:
            return 0.0
        if strict_match(pred, gold_s) or numeric_match(pred, gold_s):
            return _BOXED_SCORE
        return 0.0
    except Exception:  # noqa: BLE001 - defensive, as above
        return 0.0


def formatting_reward(completions: Completions, **kwargs: Any) -> list[float]:
    r"""Score the answer format of each completion.

    +1.0 for exactly one ``<REASONING>...</REASONING>`` block, +1.0 for exactly one ``<SOLUTION>...</SOLUTION>``
    block, and -2.0 when "addCriterion" and newlines make up at least half of a non-empty completion. Range: -2.0 to
    2.0. Other keyword arguments (prompts, answer, trainer_state, ...) are ignored. Never raises.

    Example:

    >>> from vlmrl_pipeline.core.rewards import formatting_reward
    >>> completions = [
    ...     [{"role": "assistant", "content": "<REASONING>991 tall</REASONING><SOLUTION>991</SOLUTION>"}],
    ...     [{"role": "assistant", "content": "<SOLUTION>991</SOLUTION>"}],
    ...     [{"role": "assistant", "content": "991"}],
    ... ]
    >>> formatting_reward(completions)
    [2.0, 1.0, 0.0]
    >>> formatting_reward(["addCriterion\n" * 50])
    [-2.0]
    """
    return [_format_score(completion) for completion in _as_list(completions)]


def correctness_reward(
    completions: Completions,
    answer: list[str] | str | None = None,
    choices: list[list[str]] | None = None,
    question_type: list[str] | None = None,
    **kwargs: Any,
) -> list[float]:
    r"""Score each completion's last ``<SOLUTION>`` block against the dataset's ``answer`` column.

    2.0 when it equals the gold answer as a string (after stripping), or, on a ``multi_choice`` row (``question_type``
    and ``choices`` columns), is the letter of the gold choice; 1.5 when both parse as the same number ("3.0" vs
    "3"); else 0.0. An unusable gold cell (None, NaN, empty) scores 0.0; a bare answer (one string or number)
    applies to every completion. Raises ValueError when the ``answer`` column is missing, or a column's length is
    not the number of completions.

    Example:

    >>> from vlmrl_pipeline.core.rewards import correctness_reward
    >>> completions = [
    ...     [{"role": "assistant", "content": "<SOLUTION>991</SOLUTION>"}],
    ...     [{"role": "assistant", "content": "<SOLUTION>991.0</SOLUTION>"}],
    ...     [{"role": "assistant", "content": "<SOLUTION>(B)</SOLUTION>"}],
    ...     [{"role": "assistant", "content": "991"}],
    ... ]
    >>> correctness_reward(completions, answer=["991", "991", "145°", "991"], choices=[[], [], ["135°", "145°"], []],
    ...                    question_type=["free_form", "free_form", "multi_choice", "free_form"])
    [2.0, 1.5, 2.0, 0.0]
    >>> correctness_reward(completions, answer=["991", "991", "145°"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: correctness_reward got 4 completions but 3 answers ...
    """
    completions = _as_list(completions)
    n, name = len(completions), "correctness_reward"
    golds = _column(name, "answer", answer, n)
    choice_lists = _column(name, "choices", choices, n, required=False)
    question_types = _column(name, "question_type", question_type, n, required=False)
    rows = zip(completions, golds, choice_lists, question_types, strict=True)
    return [_correctness_score(completion, gold, row_choices, row_type)
            for completion, gold, row_choices, row_type in rows]


def boxed_reward(completions: Completions, answer: list[str] | str | None = None, **kwargs: Any) -> list[float]:
    r"""Score each completion's last ``\boxed{...}`` against the dataset's ``answer`` column.

    1.0 when the content of the last box (:func:`~vlmrl_pipeline.core.answers.extract_boxed`, nested braces allowed)
    equals the gold answer as a string after stripping, or both parse as the same number; else 0.0. This is RLinf's
    geo3k reward (+1 / 0): no separate format score, since an answer outside a box earns nothing anyway. A gold
    written as ``\boxed{3}`` is compared as ``3`` (:func:`unbox_answer`). The ``answer`` column is read as in
    :func:`correctness_reward`, and a missing or mismatched one raises ValueError the same way.

    Example:

    >>> from vlmrl_pipeline.core.rewards import boxed_reward
    >>> completions = [
    ...     [{"role": "assistant", "content": r"The area is \boxed{\frac{1}{2}}."}],
    ...     [{"role": "assistant", "content": r"\boxed{3.0}"}],
    ...     [{"role": "assistant", "content": "3"}],
    ... ]
    >>> boxed_reward(completions, answer=[r"\frac{1}{2}", r"\boxed{3}", "3"])
    [1.0, 1.0, 0.0]
    >>> boxed_reward(completions)
    Traceback (most recent call last):
    ...
    ValueError: boxed_reward needs the dataset's 'answer' column (got none)
    """
    completions = _as_list(completions)
    golds = _column("boxed_reward", "answer", answer, len(completions))
    return [_boxed_score(completion, gold) for completion, gold in zip(completions, golds, strict=True)]


@dataclasses.dataclass(frozen=True)
class BoxedRewardValued:
    r""":func:`boxed_reward` paying ``reward_max_val`` for a correct box and ``reward_min_val`` otherwise (RLinf's
    configurable reward values), with TRL's reward signature.

    A small class, not a closure, so a reward set pickles (a closure cannot; TRL's parametric rewards are
    picklable for the same reason). Its ``__name__`` is ``boxed_reward``, the name TRL logs it under
    (``rewards/boxed_reward/mean``), so the metrics and error messages read the same whatever the values.

    Example:

    >>> import pickle
    >>> reward = BoxedRewardValued(5.0, -1.0)
    >>> reward(["so \\boxed{4}", "\\boxed{5}"], answer=["4", "4"])
    [5.0, -1.0]
    >>> reward.__name__, pickle.loads(pickle.dumps(reward)) == reward
    ('boxed_reward', True)
    """

    reward_max_val: float = 1.0
    reward_min_val: float = 0.0

    def __post_init__(self) -> None:
        # TRL names a reward by ``getattr(f, "__name__", type(f).__name__)``; an instance has no __name__ of its own.
        object.__setattr__(self, "__name__", boxed_reward.__name__)

    def __call__(self, completions: Completions, answer: list[str] | str | None = None, **kwargs: Any) -> list[float]:
        return [self.valued(score) for score in boxed_reward(completions, answer=answer)]

    def valued(self, score: float) -> float:
        """A +1 / 0 :func:`boxed_reward` score in these values."""
        return self.reward_min_val + (self.reward_max_val - self.reward_min_val) * score


def boxed_reward_valued(reward_max_val: float = 1.0, reward_min_val: float = 0.0) -> Callable[..., list[float]]:
    r""":func:`boxed_reward` itself for RLinf's default values (+1 / 0), else a :class:`BoxedRewardValued`.

    Example:

    >>> from vlmrl_pipeline.core.rewards import boxed_reward_valued
    >>> boxed_reward_valued(5.0, -1.0)(["so \\boxed{4}", "\\boxed{5}"], answer=["4", "4"])
    [5.0, -1.0]
    >>> boxed_reward_valued() is boxed_reward
    True
    """
    if (reward_max_val, reward_min_val) == (1.0, 0.0):
        return boxed_reward
    return BoxedRewardValued(reward_max_val, reward_min_val)


@dataclasses.dataclass(frozen=True)
class RewardSet:
    """Reward functions and their weights, in the order TRL's ``GRPOConfig`` expects them."""

    functions: tuple[Callable[..., list[float]], ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        # TRL would only notice a mismatch once training starts.
        if len(self.functions) != len(self.weights):
            raise ValueError(f"{len(self.functions)} reward functions but {len(self.weights)} weights")


# Keyed by answer format, one entry per answers.ANSWER_FORMATS: how the model is asked to write its answer.
REWARD_SETS = {
    "tags": RewardSet(functions=(formatting_reward, correctness_reward), weights=(FORMAT_WEIGHT, CORRECTNESS_WEIGHT)),
    "boxed": RewardSet(functions=(boxed_reward,), weights=(BOXED_WEIGHT,)),
}

# The seed's pair, kept under its original names for existing callers.
REWARD_FUNCTIONS = REWARD_SETS["tags"].functions
REWARD_WEIGHTS = REWARD_SETS["tags"].weights


def reward_set(answer_format: str) -> RewardSet:
    """The reward functions and weights for ``answer_format`` ("tags" or "boxed").

    Raises ValueError naming the valid formats for anything else.

    Example:

    >>> chosen = reward_set("tags")
    >>> [f.__name__ for f in chosen.functions], chosen.weights
    (['formatting_reward', 'correctness_reward'], (0.3, 1.0))
    """
    try:
        return REWARD_SETS[answer_format]
    except (KeyError, TypeError):  # TypeError: an unhashable argument
        raise ValueError(
            f"unknown answer_format {answer_format!r}; expected one of {', '.join(REWARD_SETS)}"
        ) from None


def training_reward_set(answer_format: str, reward_funcs: tuple[str, ...] = (), reward_weights: tuple[float, ...] = (),
                        reward_max_val: float = 1.0, reward_min_val: float = 0.0,
                        rehearsal_reward_weight: float = 0.0) -> RewardSet:
    r"""The rewards GSPO trains with, and evaluation scores with: one place, so the two never differ.

    No ``reward_funcs``: the answer format's set (:func:`reward_set`; ``boxed`` pays ``reward_max_val`` /
    ``reward_min_val``). Otherwise the functions those import paths name (:func:`load_reward_function`).
    ``reward_weights`` empty: the default set's weights, or 1.0 each for named functions (TRL's default). With a
    rehearsal weight above 0, :func:`~vlmrl_pipeline.core.standin.rehearsal.ascii_share_reward` is added.

    >>> chosen = training_reward_set("boxed", reward_max_val=2.0, reward_min_val=-1.0)
    >>> [reward_name(f) for f in chosen.functions], chosen.weights, chosen.functions[0]([r"\boxed{3}"], answer="3")
    (['boxed_reward'], (1.0,), [2.0])
    >>> training_reward_set("tags", ("vlmrl_pipeline.core.rewards:boxed_reward",)).weights
    (1.0,)
    """
    base = reward_set(answer_format)
    if reward_funcs:
        functions = tuple(load_reward_function(path) for path in reward_funcs)
        default_weights = (1.0,) * len(functions)
    else:
        functions = base.functions
        if answer_format == "boxed":
            functions = (boxed_reward_valued(reward_max_val, reward_min_val),)
        default_weights = base.weights
    weights = tuple(float(w) for w in reward_weights) if reward_weights else default_weights
    if len(weights) != len(functions):
        raise ValueError(f"training_settings.reward_weights has {len(weights)} weight(s) for {len(functions)} reward "
                         f"function(s) ({[reward_name(f) for f in functions]}): give one per function, or none")
    if rehearsal_reward_weight > 0:
        from vlmrl_pipeline.core.standin.rehearsal import ascii_share_reward

        functions, weights = (*functions, ascii_share_reward), (*weights, float(rehearsal_reward_weight))
    return RewardSet(functions=functions, weights=weights)


def gspo_reward_set(answer_format: str, gspo: Any) -> RewardSet:
    """The reward set of a profile: :func:`training_reward_set` from its answer format and ``GSPOSettings`` (or
    anything with its reward fields). Training and evaluation both take their rewards from here.

    >>> from vlmrl_pipeline.core.profiles import geo3k_profile, qwen3vl_8b_profile
    >>> [reward_name(f) for f in gspo_reward_set("tags", qwen3vl_8b_profile().gspo).functions]
    ['formatting_reward', 'correctness_reward']
    >>> gspo_reward_set("boxed", geo3k_profile().gspo).functions == (boxed_reward,)
    True
    """
    return training_reward_set(answer_format, tuple(getattr(gspo, "reward_funcs", ()) or ()),
                               tuple(getattr(gspo, "reward_weights", ()) or ()), gspo.reward_max_val,
                               gspo.reward_min_val, gspo.rehearsal_reward_weight)


def reward_breakdown(
    completion: str | list[dict[str, Any]],
    answer: Any,
    answer_format: str = "tags",
    choices: list[str] | None = None,
    question_type: str | None = None,
    reward_max_val: float = 1.0,
    reward_min_val: float = 0.0,
) -> dict[str, float]:
    r"""The rewards of one completion and their weighted total.

    One row's values, not columns: ``answer`` is this completion's gold (None or NaN scores 0.0, as a stored
    record without a gold must), ``choices`` its option list and ``question_type`` its type.

    Returns ``{"format_reward", "correctness_reward", "total_reward"}``, where
    ``total_reward`` is what GRPO optimises for this sample (before group
    normalisation):

    - ``"tags"``: ``FORMAT_WEIGHT * format + CORRECTNESS_WEIGHT * correctness``.
    - ``"boxed"``: format 0.0 (the recipe has no format reward), correctness and
      total both the :func:`boxed_reward_valued` score for ``reward_max_val`` /
      ``reward_min_val`` (training's values; its weight is 1.0).

    Raises ValueError for an unknown ``answer_format``; odd completions or golds score per the rules instead.

    Example:

    >>> reward_breakdown("<REASONING>r</REASONING><SOLUTION>991</SOLUTION>", "991")
    {'format_reward': 2.0, 'correctness_reward': 2.0, 'total_reward': 2.6}
    >>> reward_breakdown(r"x = \boxed{3}", "3", answer_format="boxed")
    {'format_reward': 0.0, 'correctness_reward': 1.0, 'total_reward': 1.0}
    >>> reward_breakdown("no box", "3", answer_format="boxed", reward_max_val=2.0, reward_min_val=-1.0)
    {'format_reward': 0.0, 'correctness_reward': -1.0, 'total_reward': -1.0}
    """
    chosen = reward_set(answer_format)
    if answer_format == "boxed":
        boxed = BoxedRewardValued(reward_max_val, reward_min_val).valued(_boxed_score(completion, answer))
        return {
            "format_reward": 0.0,
            "correctness_reward": boxed,
            "total_reward": chosen.weights[0] * boxed,
        }
    fmt = _format_score(completion)
    corr = _correctness_score(completion, answer, choices, question_type)
    return {
        "format_reward": fmt,
        "correctness_reward": corr,
        "total_reward": FORMAT_WEIGHT * fmt + CORRECTNESS_WEIGHT * corr,
    }


def _reward_sources() -> tuple[pathlib.Path, ...]:
    """The source files that decide a reward or a verdict: every module of ``core.answers``, this module and
    ``reward_plugins.py`` (how a reward set is assembled and called), in a fixed order."""
    here = pathlib.Path(__file__)
    return (*sorted(pathlib.Path(answers.__file__).parent.glob("*.py")), here, here.with_name("reward_plugins.py"))


def sources_version(sources: tuple[pathlib.Path, ...]) -> str:
    """12-hex sha256 of the files ``sources``, each followed by a NUL; a missing file hashes as a fixed marker."""
    digest = hashlib.sha256()
    for source in sources:
        try:
            digest.update(pathlib.Path(source).read_bytes())
        except OSError:
            # Source not shipped (e.g. bytecode-only install): still hash something stable.
            digest.update(b"<source unavailable>")
        digest.update(b"\0")
    return digest.hexdigest()[:12]


REWARD_SOURCES = _reward_sources()
REWARD_VERSION = sources_version(REWARD_SOURCES)
"""Which reward code scored a record: editing any file of :data:`REWARD_SOURCES` changes it."""


def _source_digest(function: Callable[..., Any]) -> str | None:
    """sha256 of the source file of ``function``'s module; None for this package's own (REWARD_VERSION covers)."""
    target = inspect.unwrap(getattr(function, "func", function))
    module = inspect.getmodule(target)
    if module is not None and module.__name__.startswith("vlmrl_pipeline."):
        return None
    try:
        return hashlib.sha256(pathlib.Path(inspect.getsourcefile(target)).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return "<source unavailable>"


def reward_set_version(rewards: RewardSet) -> str:
    """The version of what scores a completion under ``rewards``: :data:`REWARD_VERSION` when every function is this
    package's own; else REWARD_VERSION with the user's reward modules' source, names and weights, so editing a
    plugged-in reward makes its scores stale (12 hex characters either way)."""
    own = all(_source_digest(f) is None for f in rewards.functions)
    if own:
        return REWARD_VERSION
    digest = hashlib.sha256(REWARD_VERSION.encode())
    for function, weight in zip(rewards.functions, rewards.weights, strict=True):
        digest.update(f"{reward_name(function)}\0{weight}\0{_source_digest(function)}\0".encode())
    return digest.hexdigest()[:12]
