"""Rewards a user plugs in (``training_settings.reward_funcs``, import paths ``package.module:function``), and
calling any reward the way TRL calls it: resolved, checked on a sample before any model loads, and scored on
stored completions. The reward set itself is built in ``core.rewards`` (``gspo_reward_set``), which imports this.

>>> function = load_reward_function("vlmrl_pipeline.core.rewards:formatting_reward")
>>> reward_name(function), call_reward(function, as_completions(["<REASONING>r</REASONING><SOLUTION>3</SOLUTION>"]))
('formatting_reward', [2.0])
"""

from __future__ import annotations

import inspect
import math
import numbers
import pathlib
from collections.abc import Callable
from typing import Any

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


def score_with_reward_set(rewards: Any, texts: list[str], **kwargs: Any) -> tuple[dict[str, list], list]:
    """Under ``rewards`` (a ``core.rewards.RewardSet``; typed loosely since core.rewards imports this module), each
    reward function's values for ``texts`` (``{name: [value or None per text]}``) and their weighted total
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
