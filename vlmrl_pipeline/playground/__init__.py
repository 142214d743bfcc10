"""Reward playground: a local web page that scores a completion with the project's own rewards as you type.

Run ``python -m vlmrl_pipeline.playground`` and open the printed URL. The page posts what you type to
``/api/score``, which calls :mod:`vlmrl_pipeline.core.rewards` and :mod:`vlmrl_pipeline.core.answers`, so the
rules exist once, in Python. Tests start it with :func:`serve` or :func:`running_server` on a free port.
"""

from vlmrl_pipeline.playground.presets import PRESETS
from vlmrl_pipeline.playground.scoring import RequestError, parse_request, score_payload, score_request
from vlmrl_pipeline.playground.server import (
    MAX_BODY_BYTES,
    PlaygroundApp,
    PlaygroundServer,
    page_html,
    running_server,
    serve,
)

__all__ = [
    "MAX_BODY_BYTES",
    "PRESETS",
    "PlaygroundApp",
    "PlaygroundServer",
    "RequestError",
    "page_html",
    "parse_request",
    "running_server",
    "score_payload",
    "score_request",
    "serve",
]
