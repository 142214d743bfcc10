"""Rewards a user plugs in (``training_settings.reward_funcs``, import paths ``package.module:function``) and the
reward set training and the records both score with: resolved in one place, checked on a sample before any model
loads, called the way TRL calls them, and versioned by their source.

>>> rewards = training_reward_set("tags")
>>> [reward_name(f) for f in rewards.functions], rewards.weights
(['formatting_reward', 'correctness_reward'], (0.3, 1.0))
"""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
import pathlib
from collections.abc import Callable
from typing import Any

from vlmrl_pipeline.core.rewards import REWARD_VERSION, RewardSet, boxed_reward_valued, reward_set

REWARD_PATH_SEPARATOR = ":"


def load_reward_function(path: str) -> Callable[..., Any]:
    """The function an import path ``package.module:function`` names (``training_settings.reward_funcs``).

    Raises ValueError naming the path when it is not of that form, its module does not import, or what it names
    is missing or not callable.

    >>> load_reward_function("vlmrl_pipeline.core.rewards:boxed_reward").__name__
    'boxed_reward'
    >>> load_reward_function("vlmrl_pipeline.core.rewards")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: training_settings.reward_funcs entry 'vlmrl_pipeline.core.rewards' is not ...
    """
    import importlib

    module_name, sep, attribute = str(path).partition(REWARD_PATH_SEPARATOR)
    if not sep or not module_name.strip() or not attribute.strip():
        raise ValueError(f"training_settings.reward_funcs entry {path!r} is not an import path of the form "
                         "'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name.strip())
    except Exception as exc:  # noqa: BLE001 - any error while importing the user's module is a setting problem
        raise ValueError(f"training_settings.reward_funcs entry {path!r}: module {module_name!r} does not import "
                         f"({type(exc).__name__}: {exc}); is its folder on sys.path / PYTHONPATH?") from exc
    for part in attribute.strip().split("."):
        if not hasattr(target, part):
            raise ValueError(f"training_settings.reward_funcs entry {path!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"training_settings.reward_funcs entry {path!r} names a {type(target).__name__}, not a "
                         "function")
    return target


def reward_name(function: Callable[..., Any]) -> str:
    """The name TRL logs a reward function under (``rewards/<name>/mean``)."""
    return getattr(function, "__name__", None) or type(function).__name__


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
    """:func:`training_reward_set` from a ``GSPOSettings`` (or anything with its reward fields)."""
    return training_reward_set(answer_format, tuple(getattr(gspo, "reward_funcs", ()) or ()),
                               tuple(getattr(gspo, "reward_weights", ()) or ()), gspo.reward_max_val,
                               gspo.reward_min_val, gspo.rehearsal_reward_weight)


def reward_kwargs_for_rows(rows: Any, style: Any) -> dict[str, Any]:
    """What TRL passes a reward function besides the completions, for ``rows`` (a manifest frame): ``prompts``
    (the chat prompts) and every dataset column (``core.samples.trl_dataset``'s, images decoded), as lists."""
    from vlmrl_pipeline.core.samples import trl_dataset

    dataset = trl_dataset(rows, style)
    columns = {name: list(dataset[name]) for name in dataset.column_names if name != "prompt"}
    return {"prompts": list(dataset["prompt"]), **columns}


def call_reward(function: Callable[..., Any], completions: list, **kwargs: Any) -> list:
    """Call one reward function as TRL's trainer does (``completion_ids``, ``trainer_state``, ``log_extra``,
    ``log_metric`` included; an ``async`` one run to completion) and return its list."""
    import asyncio

    kwargs = {"completion_ids": [[] for _ in completions], "trainer_state": None,
              "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None, **kwargs}
    result = function(completions=completions, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    return list(result) if result is not None else []


def as_completions(texts: list[str]) -> list[list[dict[str, str]]]:
    """Completion texts in the conversational shape TRL hands reward functions for chat prompts."""
    return [[{"role": "assistant", "content": text}] for text in texts]


def score_with_reward_set(rewards: RewardSet, texts: list[str], **kwargs: Any) -> tuple[dict[str, list], list]:
    """Each reward function's values for ``texts`` (``{name: [value or None per text]}``) and their weighted total
    per text, None counting as nothing (TRL's ``nansum`` over functions)."""
    completions = as_completions(list(texts))
    values: dict[str, list] = {}
    for function in rewards.functions:
        scores = call_reward(function, completions, **kwargs)
        if len(scores) != len(completions):
            raise ValueError(f"reward {reward_name(function)} returned {len(scores)} values for {len(completions)} "
                             "completions")
        values[reward_name(function)] = [None if v is None else float(v) for v in scores]
    totals = []
    for i in range(len(completions)):
        parts = [w * values[reward_name(f)][i] for f, w in zip(rewards.functions, rewards.weights, strict=True)
                 if values[reward_name(f)][i] is not None and math.isfinite(values[reward_name(f)][i])]
        totals.append(float(sum(parts)))
    return values, totals


SAMPLE_COMPLETIONS = ("<REASONING>The bar is 3 tall.</REASONING><SOLUTION>3</SOLUTION>", r"The answer is \boxed{4}.")
"""The two completions a user's reward is tried on before any model loads (one right, one wrong, two formats)."""


def reward_problems(reward_funcs: tuple[str, ...], sample: dict[str, Any] | None = None) -> list[str]:
    """Why a ``training_settings.reward_funcs`` entry cannot train (one line each; empty when all can): it does not
    import, is not callable, or on one sample with two completions does not return one finite number (or None) per
    completion. ``sample`` is what TRL would pass besides the completions (:func:`reward_kwargs_for_rows` of one
    training row); the default is one made-up row answering 3."""
    if sample is None:
        from PIL import Image

        sample = {"prompts": [[{"role": "user", "content": [{"type": "image"},
                                                             {"type": "text", "text": "How tall is the bar?"}]}]],
                  "image": [Image.new("RGB", (8, 8))], "answer": ["3"], "pid": ["sample"],
                  "question_type": ["free_form"], "choices": [[]]}
    n = len(SAMPLE_COMPLETIONS)
    batch = {key: [value[0]] * n for key, value in sample.items()}  # one prompt's group of n completions
    problems = []
    for path in reward_funcs:
        try:
            function = load_reward_function(path)
            values = call_reward(function, as_completions(list(SAMPLE_COMPLETIONS)), **batch)
        except Exception as exc:  # noqa: BLE001 - whatever the user's code raises is reported, naming it
            problems.append(str(exc) if isinstance(exc, ValueError) and "reward_funcs" in str(exc) else
                            f"training_settings.reward_funcs entry {path!r} raised on a sample batch: "
                            f"{type(exc).__name__}: {exc}")
            continue
        bad = [v for v in values if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(float(v)))]
        if len(values) != n or bad:
            problems.append(f"training_settings.reward_funcs entry {path!r} must return one finite number (or None) "
                            f"per completion: for {n} completions it returned {values!r}")
    return problems


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


def reward_import_roots(reward_funcs: tuple[str, ...]) -> list[str]:
    """The sys.path folders the plugged-in reward modules were imported from, for a child process's PYTHONPATH."""
    import importlib

    roots = []
    for path in reward_funcs:
        module_name = str(path).partition(REWARD_PATH_SEPARATOR)[0].strip()
        module = importlib.import_module(module_name)
        file = getattr(module, "__file__", None)
        if not file:
            continue
        root = pathlib.Path(file).resolve().parent
        for _ in range(module_name.count(".") + (1 if pathlib.Path(file).name == "__init__.py" else 0)):
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return roots
