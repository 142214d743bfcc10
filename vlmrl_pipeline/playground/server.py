"""A small stdlib HTTP server for the reward playground (one page and two JSON endpoints) and the report page.

Routes: ``GET /`` (the page), ``GET /api/presets``, ``POST /api/score`` (see
:func:`vlmrl_pipeline.playground.scoring.score_payload`), and ``GET /reports/<file>``: the ``eval_diff_report``
asset's files from the data folder the server was given, so the Dagster UI can link the report over http (a
browser does not open a ``file://`` link from an ``http://`` page). Every answer other than a page is JSON, errors
included (``{"error": "..."}``), and no input may take the server down: the body size is checked from its
``Content-Length`` before any of it is read, JSON and field errors are 400s, and anything unexpected inside a
handler becomes a 500 JSON answer while the server keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from vlmrl_pipeline.core.experiments import EXPERIMENTS_DIR, REPORT_ASSET, report_dir
from vlmrl_pipeline.core.experiments import NAME as EXPERIMENT_NAME
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
"""An experiment's report (``core.experiments``): its folder is ``experiments/<name>/`` under the data folder."""
REPORT_FILES = {"report.html": "text/html; charset=utf-8", "before_after.png": "image/png",
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


class PlaygroundHandler(BaseHTTPRequestHandler):
    """Request handler; one instance per request, run in the server's worker threads."""

    server_version = "vlmrl-playground"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped

    def setup(self) -> None:
        super().setup()
        # Every answer is one complete write (see _send), so nothing is gained by delaying small packets.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        """The Server header: the name only, not the Python version."""
        return self.server_version

    # --- responses -------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: two small writes on a kept-alive connection meet Nagle's algorithm and
        # the client's delayed ACK, a ~40 ms stall per request.
        if self.request_version != "HTTP/0.9":  # 0.9 has no headers (the stdlib keeps no buffer for it)
            self._headers_buffer.append(b"\r\n")
        head = b"".join(getattr(self, "_headers_buffer", []))
        self._headers_buffer = []
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, allow_nan=False).encode("ascii")  # ensure_ascii: lone surrogates survive
        self._send(status, body, "application/json; charset=utf-8", extra)

    def _error(self, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message}, extra)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of the stdlib's HTML error page, also for errors raised while parsing the request line."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        if not hasattr(self, "command"):  # the request line itself was unreadable
            self.command = ""
        self._error(code, message or phrase)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's parameter name
        if not getattr(self.server, "quiet", False):
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    # --- dispatch --------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            path = self.path.split("?", 1)[0]
            is_report = path.startswith(REPORTS_PREFIX) or EXPERIMENT_REPORTS.match(path)
            allowed = ("GET", "HEAD") if is_report else _ROUTES.get(path)
            declares_body = "Transfer-Encoding" in self.headers or (
                self.headers.get("Content-Length", "0").strip() != "0"
            )
            if declares_body and (path, self.command) != ("/api/score", "POST"):
                # A body nobody reads would be parsed as the next request on this connection.
                self.close_connection = True
            if allowed is None:
                self._error(404, f"no such path: {path}")
            elif self.command not in allowed:
                self._error(405, f"{self.command} is not allowed here; use {' or '.join(allowed)}",
                            {"Allow": ", ".join(allowed)})
            elif path.startswith(REPORTS_PREFIX):
                self._report_file(path[len(REPORTS_PREFIX):])
            elif match := EXPERIMENT_REPORTS.match(path):
                self._report_file(match.group(2), match.group(1))
            elif path == "/api/score":
                self._score()
            elif path == "/api/presets":
                self._send_json(200, {"presets": list(PRESETS)})
            else:
                self._send(200, page_html().encode("utf-8"), "text/html; charset=utf-8",
                           {"Content-Security-Policy": _PAGE_CSP, "Referrer-Policy": "no-referrer"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to answer
        except Exception as exc:  # noqa: BLE001 - never let one request take the server down
            self.close_connection = True
            self.log_error("internal error: %r", exc)
            with contextlib.suppress(Exception):
                self._error(500, f"internal error: {type(exc).__name__}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _report_file(self, name: str, experiment: str | None = None) -> None:
        """File ``name`` of the report (``core.experiments.report_dir``: the main one, or ``experiment``'s)."""
        data_dir = getattr(self.server, "data_dir", None)
        folder = report_dir(data_dir, experiment) if data_dir is not None else None
        if name not in REPORT_FILES:
            self._error(404, f"no such report file: {name!r}; served: {sorted(REPORT_FILES)}")
        elif folder is None:
            self._error(404, "this server has no data folder: start it with --data-dir (the pipeline's data folder)")
        elif not (folder / name).is_file():
            self._error(404, f"no {name} in {folder}: materialize {REPORT_ASSET} first")
        else:
            self._send(200, (folder / name).read_bytes(), REPORT_FILES[name], {"Referrer-Policy": "no-referrer"})

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering an error (length missing, invalid or too large)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._error(411, "send the body with a Content-Length, not chunked")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            self._error(411, "Content-Length is required")
            return None
        try:
            length = int(raw.strip())
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._error(400, "Content-Length must be a non-negative integer")
            return None
        if length > MAX_BODY_BYTES:
            # Refuse before reading: the unread body is dropped with the connection.
            self.close_connection = True
            self._error(413, f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            self._error(400, "request body ended early")
            return None
        return body

    def _score(self) -> None:
        body = self._read_body()
        if body is None:
            return
        try:
            payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            self._error(400, "request body is not UTF-8")
            return
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            self._error(400, f"request body is not valid JSON: {str(exc)[:200]}")
            return
        try:
            result = score_payload(payload)
        except RequestError as exc:
            self._error(400, str(exc))
            return
        self._send_json(200, result)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_BUSY_BODY = b'{"error": "the server is busy (too many connections); try again"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
         b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
         + _BUSY_BODY)


class PlaygroundServer(ThreadingHTTPServer):
    """The threading HTTP server with the playground's handler, plus its URL and a one-call stop."""

    daemon_threads = True  # a stalled client must not keep the process alive at exit
    # listen() backlog: the stdlib's 5 resets connections beyond it when a page opens several at once.
    request_queue_size = 128

    max_connections = 64
    """Connections served at once (one thread each); more are answered 503 at once instead of piling up threads."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, quiet: bool = False,
                 max_connections: int | None = None, data_dir: str | Path | None = None) -> None:
        self.quiet = quiet
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(max_connections or self.max_connections)
        super().__init__((host, port), PlaygroundHandler)

    def process_request(self, request, client_address) -> None:
        # Never block here: this runs in the accept loop, and shutdown() waits for that loop.
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (the real port when started on port 0)."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def start(self) -> PlaygroundServer:
        """Serve in a daemon thread and return at once."""
        self._thread = threading.Thread(target=self.serve_forever, name="vlmrl-playground", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (when started) and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


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
