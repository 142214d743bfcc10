"""The reward playground's server (one page and two JSON endpoints) and the report page, on uvicorn.

Routes: ``GET /`` (the page), ``GET /api/presets``, ``POST /api/score`` (see
:func:`vlmrl_pipeline.playground.scoring.score_payload`), and ``GET /reports/<file>``: the ``eval_diff_report``
asset's files from the data folder the server was given, so the Dagster UI can link the report over http (a
browser does not open a ``file://`` link from an ``http://`` page). Every answer other than a page is JSON, errors
included (``{"error": "..."}``), and no input may take the server down: the body size is checked from its
``Content-Length`` before any of it is read, JSON and field errors are 400s, malformed HTTP is a JSON 400 too,
and anything unexpected inside a handler becomes a 500 JSON answer while the server keeps serving.

uvicorn (which ``dagster-webserver`` already brings) serves it on one asyncio event loop: a connection that stalls
holds a few kilobytes, not a thread, so slow or many clients wait their turn instead of locking others out (the
stdlib's thread-per-connection server answered 503 for 30 s behind 70 stalled connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vlmrl_pipeline.core.experiment_specs import EXPERIMENTS_DIR, REPORT_ASSET, report_dir
from vlmrl_pipeline.core.experiment_specs import NAME as EXPERIMENT_NAME
from vlmrl_pipeline.core.rewards import REWARD_VERSION
from vlmrl_pipeline.playground.i18n import STRINGS
from vlmrl_pipeline.playground.presets import PRESETS
from vlmrl_pipeline.playground.scoring import RequestError, score_payload

MAX_BODY_BYTES = 64 * 1024
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# Routes and the methods each accepts; any other method on a known path is a 405 with this Allow list.
_ROUTES = {"/": ("GET", "HEAD"), "/index.html": ("GET", "HEAD"), "/api/presets": ("GET", "HEAD"),
           "/api/score": ("POST",)}

# The page is self-contained (inline script and style) and talks only to this server.
_PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
             "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_DATA_MARKER = "__PLAYGROUND_DATA__"

REPORTS_PREFIX = "/reports/"
EXPERIMENT_REPORTS = re.compile(f"^/{EXPERIMENTS_DIR}/({EXPERIMENT_NAME})/reports/([^/]+)$")
"""An experiment's report (``core.experiment_specs``): its folder is ``experiments/<name>/`` under the data folder."""
REPORT_FILES = {"report.html": "text/html; charset=utf-8", "before_after.png": "image/png",
                "training_curves.png": "image/png",
                "report.json": "application/json; charset=utf-8", "report.md": "text/markdown; charset=utf-8"}
"""The only names served: a fixed list, so no path can reach outside the report's folder."""


def _json_for_script(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no "<" can end the element or open a comment."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def page_html() -> str:
    """The playground page with its strings, presets and limits embedded (no second request on load)."""
    template = resources.files("vlmrl_pipeline.playground").joinpath("page.html").read_text(encoding="utf-8")
    data = {"strings": STRINGS, "presets": list(PRESETS), "max_body_bytes": MAX_BODY_BYTES,
            "reward_version": REWARD_VERSION}
    return template.replace(_DATA_MARKER, _json_for_script(data))


KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
"""Methods answered with 405 on a known path that takes others; any other method is a 501."""


class _Answer(Exception):
    """An answer decided before the handler's end: a JSON error with its status and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.headers, self.close = status, message, headers or {}, close


def _json_body(payload: Any) -> bytes:
    return json.dumps(payload, allow_nan=False).encode("ascii")  # ensure_ascii: lone surrogates survive


class PlaygroundApp:
    """The ASGI application: routing, the body limit, JSON errors. ``data_dir`` holds the reports served."""

    def __init__(self, data_dir: Path | None = None, log: logging.Logger | None = None):
        self.data_dir = data_dir
        self.log = log or logging.getLogger("vlmrl.playground")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declares_body = "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"
        # A body nobody reads would be parsed as the next request on this connection: close after answering.
        close = declares_body and (path, method) != ("/api/score", "POST")
        try:
            status, body, content_type, extra = await self._dispatch(method, path, headers, receive)
        except _Answer as answer:
            status, body, content_type, extra = (answer.status, _json_body({"error": answer.message}),
                                                 "application/json; charset=utf-8", answer.headers)
            close = close or answer.close
        except Exception as exc:  # noqa: BLE001 - never let one request take the server down
            self.log.error("internal error: %r", exc)
            status, body, content_type, extra = (500, _json_body({"error": f"internal error: {type(exc).__name__}"}),
                                                 "application/json; charset=utf-8", {})
            close = True
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"), *extra.items()]
        if close:
            head.append(("Connection", "close"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], receive):
        is_report = path.startswith(REPORTS_PREFIX) or EXPERIMENT_REPORTS.match(path)
        allowed = ("GET", "HEAD") if is_report else _ROUTES.get(path)
        if method not in KNOWN_METHODS:
            raise _Answer(501, f"{method} is not a method this server knows", close=True)
        if allowed is None:
            raise _Answer(404, f"no such path: {path}")
        if method not in allowed:
            raise _Answer(405, f"{method} is not allowed here; use {' or '.join(allowed)}",
                          {"Allow": ", ".join(allowed)})
        json_type = "application/json; charset=utf-8"
        if path.startswith(REPORTS_PREFIX):
            return self._report_file(path[len(REPORTS_PREFIX):])
        if match := EXPERIMENT_REPORTS.match(path):
            return self._report_file(match.group(2), match.group(1))
        if path == "/api/score":
            return 200, _json_body(await self._score(headers, receive)), json_type, {}
        if path == "/api/presets":
            return 200, _json_body({"presets": list(PRESETS)}), json_type, {}
        return (200, page_html().encode("utf-8"), "text/html; charset=utf-8",
                {"Content-Security-Policy": _PAGE_CSP, "Referrer-Policy": "no-referrer"})

    def _report_file(self, name: str, experiment: str | None = None):
        """File ``name`` of the report (``core.experiment_specs.report_dir``: the main one, or ``experiment``'s)."""
        folder = report_dir(self.data_dir, experiment) if self.data_dir is not None else None
        if name not in REPORT_FILES:
            raise _Answer(404, f"no such report file: {name!r}; served: {sorted(REPORT_FILES)}")
        if folder is None:
            raise _Answer(404, "this server has no data folder: start it with --data-dir (the pipeline's data folder)")
        if not (folder / name).is_file():
            raise _Answer(404, f"no {name} in {folder}: materialize {REPORT_ASSET} first")
        return 200, (folder / name).read_bytes(), REPORT_FILES[name], {"Referrer-Policy": "no-referrer"}

    @staticmethod
    async def _read_body(headers: dict[str, str], receive) -> bytes:
        """The request body; an error answer when its length is missing, invalid or too large (refused before any
        of it is read: the unread body goes with the connection)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _Answer(411, "send the body with a Content-Length, not chunked", close=True)
        raw = headers.get("content-length")
        if raw is None:
            raise _Answer(411, "Content-Length is required", close=True)
        length = int(raw.strip())  # h11 has refused a length that is not a non-negative integer
        if length > MAX_BODY_BYTES:
            raise _Answer(413, f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}", close=True)
        chunks, size = [], 0
        while size < length:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Answer(400, "request body ended early", close=True)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if len(body) < length:
            raise _Answer(400, "request body ended early", close=True)
        return body

    async def _score(self, headers: dict[str, str], receive) -> Any:
        body = await self._read_body(headers, receive)
        try:
            payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise _Answer(400, "request body is not UTF-8") from None
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise _Answer(400, f"request body is not valid JSON: {str(exc)[:200]}") from None
        try:
            return score_payload(payload)
        except RequestError as exc:
            raise _Answer(400, str(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error answer with a JSON body, for the protocol level (before the application runs)."""
    body = _json_body({"error": message})
    phrase = HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii") + body


def _protocol_class(max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the playground's answers where uvicorn's own would be plain text: malformed
    HTTP (a JSON 400), connections beyond ``max_connections`` (a JSON 503 at once), and a client that half-closes
    after its request (it still gets its answer; asyncio would close the connection on the first EOF)."""

    class PlaygroundProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            # uvicorn writes headers and body separately: without TCP_NODELAY the body waits for the client's
            # delayed ACK (Nagle), ~40 ms on every kept-alive request.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.connections) > max_connections:
                transport.write(_error_bytes(503, "the server is busy (too many connections); try again"))
                transport.close()

        def send_400_response(self, msg: str) -> None:
            incomplete_body = self.conn.their_state is h11.SEND_BODY
            message = "request body ended early" if incomplete_body else f"malformed HTTP request: {msg}"
            with contextlib.suppress(Exception):
                self.transport.write(_error_bytes(400, message))
            self.transport.close()

        def eof_received(self) -> bool:
            # The client is done sending. Nothing in flight: let the connection close. A body cut short: the 400
            # above. A whole request still being answered: keep the connection open for the answer, then close.
            if self.cycle is None or self.cycle.response_complete:
                return False
            if self.conn.their_state is h11.SEND_BODY:
                self.send_400_response("")
                return True
            self._client_done = True
            return True

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if getattr(self, "_client_done", False) and not self.transport.is_closing():
                self.transport.close()

    return PlaygroundProtocol


class PlaygroundServer:
    """The playground on uvicorn, listening from construction on: ``url``, ``start()`` (a background thread),
    ``serve_forever()`` (this thread, stopped by SIGINT/SIGTERM) and ``stop()``."""

    request_queue_size = 2048
    """listen() backlog: a burst of connections queues instead of being reset (the stdlib's default is 5)."""

    max_connections = 1024
    """Connections open at once; more get a JSON 503 at once. Each costs a few kilobytes, not a thread."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, quiet: bool = False,
                 max_connections: int | None = None, data_dir: str | Path | None = None) -> None:
        self.quiet = quiet
        self.data_dir = Path(data_dir) if data_dir is not None else None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(self.request_queue_size)
        except OSError:
            self.socket.close()
            raise
        config = uvicorn.Config(
            PlaygroundApp(self.data_dir), http=_protocol_class(max_connections or self.max_connections),
            loop="asyncio", lifespan="off", ws="none", access_log=not quiet, log_config=None,
            log_level="warning" if quiet else "info", server_header=False, date_header=False,
            timeout_keep_alive=30, timeout_graceful_shutdown=5, backlog=self.request_queue_size)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple:
        return self.socket.getsockname()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (the real port when started on port 0)."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM (uvicorn's handlers, set even where they were ignored)."""
        self._server.run(sockets=[self.socket])

    def start(self) -> PlaygroundServer:
        """Serve in a daemon thread and return once the server accepts connections."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self.socket])),
                                        name="vlmrl-playground", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the playground server did not start")
            time.sleep(0.01)
        return self

    @property
    def open_connections(self) -> list:
        """The protocols of the connections open now (each one's ``transport``)."""
        return list(self._server.server_state.connections)

    def stop(self) -> None:
        """Stop serving (when started) and close the socket."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._thread = None
        self.socket.close()

    server_close = stop


def serve(host: str = DEFAULT_HOST, port: int = 0, *, quiet: bool = True, max_connections: int | None = None,
          data_dir: str | Path | None = None) -> PlaygroundServer:
    """Start the playground in a background thread and return the running server (``.url``, ``.stop()``).

    ``port=0`` picks a free port, which is what tests want.
    """
    return PlaygroundServer(host, port, quiet=quiet, max_connections=max_connections, data_dir=data_dir).start()


@contextlib.contextmanager
def running_server(host: str = DEFAULT_HOST, port: int = 0, *, quiet: bool = True,
                   max_connections: int | None = None, data_dir: str | Path | None = None
                   ) -> Iterator[PlaygroundServer]:
    """Context manager around :func:`serve`: the server runs inside the ``with`` block and stops after it."""
    server = serve(host, port, quiet=quiet, max_connections=max_connections, data_dir=data_dir)
    try:
        yield server
    finally:
        server.stop()
