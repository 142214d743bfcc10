"""Load on the reward playground's server, on 127.0.0.1: stalled connections, then many keep-alive clients.

    python benchmarks/playground_load.py [--stalled 70] [--clients 200] [--requests 20]

1. ``--stalled`` connections each send half a request line and stop; with them held open, one normal request is
   timed: its status and seconds (the stdlib server, one thread per connection and 64 at most, answered 503).
2. ``--clients`` threads, each on its own kept-alive connection, POST ``--requests`` scores one after another: the
   answers that were not a 200, and the requests per second.
The server runs in this process (``playground.server.serve``); the figures are for this machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time

from vlmrl_pipeline.playground.server import running_server

BODY = json.dumps({"completion": "<REASONING>r</REASONING><SOLUTION>3</SOLUTION>", "answer": "3"})


def behind_stalled(server, stalled: int) -> dict:
    host, port = server.server_address[:2]
    held = []
    try:
        for _ in range(stalled):
            sock = socket.create_connection((host, port), timeout=10)
            sock.sendall(b"GET /api/pre")  # half a request line, never finished
            held.append(sock)
        t0 = time.perf_counter()
        connection = http.client.HTTPConnection(host, port, timeout=60)
        connection.request("GET", "/api/presets")
        status = connection.getresponse().status
        connection.close()
        return {"stalled": stalled, "status": status, "seconds": round(time.perf_counter() - t0, 4)}
    finally:
        for sock in held:
            sock.close()


def many_clients(server, clients: int, requests: int) -> dict:
    host, port = server.server_address[:2]
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            connection.connect()  # all clients connected before any sends: 200 connections open at once
        except OSError as exc:
            with lock:
                failures.append(type(exc).__name__)
        start.wait()
        for _ in range(requests):
            try:
                connection.request("POST", "/api/score", body=BODY, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    with lock:
                        failures.append(str(response.status))
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(type(exc).__name__)
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - t0
    kinds = {k: failures.count(k) for k in sorted(set(failures))}
    return {"clients": clients, "requests": clients * requests, "failed": len(failures), "failures": kinds,
            "seconds": round(seconds, 2), "requests_per_s": round(clients * requests / seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stalled", type=int, default=70)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args(argv)
    with running_server() as server:
        print(json.dumps({"behind_stalled": behind_stalled(server, args.stalled),
                          "many_clients": many_clients(server, args.clients, args.requests)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
