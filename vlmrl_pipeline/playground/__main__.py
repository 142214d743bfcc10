"""``python -m vlmrl_pipeline.playground [--host 127.0.0.1] [--port 8765] [--data-dir DIR]``: serve the playground
and the pipeline's report page (``/reports/report.html``) until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal

from vlmrl_pipeline.core.experiment_specs import REPORT_ASSET
from vlmrl_pipeline.playground.server import DEFAULT_HOST, DEFAULT_PORT, PlaygroundServer


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, serve in the foreground, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vlmrl_pipeline.playground", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    parser.add_argument("--data-dir", default=None,
                        help=f"the pipeline's data folder, whose {REPORT_ASSET} this serves under /reports/ "
                             "(default: $VLMRL_DATA_DIR, else data/ in the checkout)")
    args = parser.parse_args(argv)
    from vlmrl_pipeline.resources import default_data_dir

    if not args.quiet:  # uvicorn's request and error lines on stderr
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = PlaygroundServer(args.host, args.port, quiet=args.quiet, data_dir=args.data_dir or default_data_dir())
    # Stop on SIGTERM even when the parent started us with it ignored (an inherited SIG_IGN would otherwise
    # leave a server that `kill`, a supervisor or a test's terminate() cannot stop).
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print(f"Reward playground on {server.url}/, the report on {server.url}/reports/report.html (Ctrl-C to stop)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
