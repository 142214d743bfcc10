"""The reward playground without a browser: request checks, scores against the real rewards, presets, HTTP."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlmrl_pipeline.core import rewards
from vlmrl_pipeline.core.answers import score_completion
from vlmrl_pipeline.core.rewards import reward_breakdown
from vlmrl_pipeline.playground import (
    MAX_BODY_BYTES,
    PRESETS,
    RequestError,
    page_html,
    parse_request,
    running_server,
    score_payload,
)
from vlmrl_pipeline.playground.i18n import LANGUAGES, STRINGS
from vlmrl_pipeline.playground.presets import preset
from vlmrl_pipeline.playground.scoring import MAX_CHOICES, MAX_EDIT_CELLS

GOOD = "<REASONING>r</REASONING>\n<SOLUTION>{}</SOLUTION>"

# What each preset must teach: (format, correctness, total, correctness rule).
PRESET_EXPECTATIONS = {
    "exact": (2.0, 2.0, 2.6, "exact"),
    "numeric": (2.0, 1.5, 2.1, "numeric"),
    "missing_tags": (1.0, 0.0, 0.3, "no_solution"),
    "spam": (-2.0, 0.0, -0.6, "no_solution"),
    "boxed": (0.0, 1.0, 1.0, "exact"),
    "option_letter": (2.0, 2.0, 2.6, "option_letter"),
}


# --- scoring: the endpoint's numbers are the project's rewards ----------------------------------------------


@pytest.mark.parametrize(
    "request_body",
    [
        {"completion": GOOD.format("991"), "answer": "991"},
        {"completion": GOOD.format("991.0"), "answer": "991", "answer_type": "integer"},
        {"completion": "no tags at all", "answer": "991"},
        {"completion": GOOD.format("3.7"), "answer": "3", "answer_type": "integer"},
        {"completion": GOOD.format("1.24"), "answer": "1.2", "answer_type": "float", "precision": 1},
        {"completion": GOOD.format("145"), "answer": "145°", "question_type": "multi_choice",
         "choices": ["135°", "140°", "145°", "150°"]},
        {"completion": "so \\boxed{\\frac{1}{2}}", "answer": "\\boxed{\\frac{1}{2}}", "answer_format": "boxed"},
        {"completion": "addCriterion\n" * 5, "answer": ""},
    ],
)
def test_score_is_reward_breakdown_and_score_completion(request_body):
    result = score_payload(request_body)
    options = {"choices": request_body.get("choices"), "question_type": request_body.get("question_type")}
    fmt = request_body.get("answer_format", "tags")
    expected = reward_breakdown(request_body["completion"], request_body["answer"], answer_format=fmt, **options)
    assert {k: result[k] for k in expected} == expected
    verdicts = score_completion(request_body["completion"], request_body["answer"], answer_format=fmt,
                                answer_type=request_body.get("answer_type"),
                                precision=request_body.get("precision"), **options)
    assert result["pred"] == verdicts["pred"]
    assert result["verdicts"] == {k: verdicts[k] for k in ("correct", "correct_numeric", "correct_mathvista",
                                                           "format_ok")}
    weights = result["weights"]
    assert result["weighted"]["format"] == pytest.approx(weights["format"] * result["format_reward"])
    assert result["weighted"]["correctness"] == pytest.approx(weights["correctness"] * result["correctness_reward"])
    assert result["total_reward"] == pytest.approx(result["weighted"]["format"] + result["weighted"]["correctness"])
    assert result["reward_version"] == rewards.REWARD_VERSION
    json.dumps(result, allow_nan=False)  # what the server sends must be plain JSON


def test_weights_are_the_reward_modules_constants():
    tags = score_payload({"completion": "", "answer": "1"})["weights"]
    boxed = score_payload({"completion": "", "answer": "1", "answer_format": "boxed"})["weights"]
    assert tags == {"format": rewards.FORMAT_WEIGHT, "correctness": rewards.CORRECTNESS_WEIGHT} == {
        "format": 0.3, "correctness": 1.0}
    assert boxed == {"format": 0.0, "correctness": rewards.BOXED_WEIGHT}


def test_details_explain_the_format_score():
    doubled = score_payload({"completion": GOOD.format("1") + GOOD.format("1"), "answer": "1"})
    assert doubled["details"]["reasoning_blocks"] == 2 and doubled["details"]["solution_blocks"] == 2
    assert doubled["format_reward"] == 0.0
    spam = score_payload({"completion": "<SOLUTION>1</SOLUTION>" + "addCriterion\n" * 10, "answer": "1"})
    assert spam["details"]["addcriterion_spam"] is True and spam["details"]["spam_share"] >= 0.5
    assert spam["format_reward"] == 1.0 - 2.0


@pytest.mark.parametrize(
    ("request_body", "rule"),
    [
        ({"completion": GOOD.format("7"), "answer": "991"}, "mismatch"),
        ({"completion": GOOD.format("7"), "answer": "   "}, "no_gold"),
        ({"completion": "7", "answer": "7"}, "no_solution"),
        ({"completion": "\\boxed{12.0}", "answer": "12", "answer_format": "boxed"}, "numeric"),
        ({"completion": "\\boxed{13}", "answer": "12", "answer_format": "boxed"}, "mismatch"),
        ({"completion": "\\boxed{12", "answer": "12", "answer_format": "boxed"}, "no_box"),
        ({"completion": "\\boxed{12}", "answer": "", "answer_format": "boxed"}, "no_gold"),
    ],
)
def test_correctness_rule_names_why(request_body, rule):
    assert score_payload(request_body)["details"]["correctness_rule"] == rule


# --- request validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "JSON object"),
        ("text", "JSON object"),
        ({"answer": "1"}, "missing field 'completion'"),
        ({"completion": "x"}, "missing field 'answer'"),
        ({"completion": 1, "answer": "1"}, "'completion' must be a string"),
        ({"completion": "x", "answer": 991}, "'answer' must be a string"),
        ({"completion": "x", "answer": "1", "anwser": "1"}, "unknown field(s): anwser"),
        ({"completion": "x", "answer": "1", "answer_format": "latex"}, "'answer_format'"),
        ({"completion": "x", "answer": "1", "answer_format": ["tags"]}, "'answer_format'"),
        ({"completion": "x", "answer": "1", "question_type": "essay"}, "'question_type'"),
        ({"completion": "x", "answer": "1", "answer_type": 3}, "'answer_type'"),
        ({"completion": "x", "answer": "1", "choices": "A,B"}, "'choices'"),
        ({"completion": "x", "answer": "1", "choices": ["A", 2]}, "'choices'"),
        ({"completion": "x", "answer": "1", "choices": ["x"] * (MAX_CHOICES + 1)}, "at most"),
        ({"completion": "x", "answer": "1", "choices": ["x" * 1000]}, "at most"),
        ({"completion": "x", "answer": "1", "precision": True}, "'precision'"),
        ({"completion": "x", "answer": "1", "precision": "2"}, "'precision'"),
        ({"completion": "x", "answer": "1", "precision": 1e300}, "between"),
    ],
)
def test_malformed_requests_are_named(payload, message):
    with pytest.raises(RequestError, match=re.escape(message)):
        parse_request(payload)


def test_defaults_and_empty_optionals():
    request = parse_request({"completion": "x", "answer": "1", "question_type": "", "answer_type": None,
                             "choices": [], "precision": 2})
    assert request == {"completion": "x", "answer": "1", "answer_format": "tags", "question_type": None,
                       "choices": None, "answer_type": None, "precision": 2.0}


def test_multiple_choice_edit_distance_work_is_bounded():
    choices = ["y" * 200] * 26
    too_long = "x" * (MAX_EDIT_CELLS // (200 * 26) + 1)
    with pytest.raises(RequestError, match="too long"):
        parse_request({"completion": f"<SOLUTION>{too_long}</SOLUTION>", "answer": "y", "choices": choices,
                       "question_type": "multi_choice"})
    # the same text is fine outside multiple choice, where no edit distance is computed
    parse_request({"completion": f"<SOLUTION>{too_long}</SOLUTION>", "answer": "y"})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_FIELDS = st.sampled_from(["completion", "answer", "answer_format", "question_type", "choices", "answer_type",
                           "precision"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_FIELDS, _JSON | st.sampled_from(["tags", "boxed", "multi_choice", "integer", "float"])))
def test_scoring_only_ever_raises_request_error(payload):
    try:
        result = score_payload(payload)
    except RequestError:
        return
    json.dumps(result, allow_nan=False)


# --- presets and translations ------------------------------------------------------------------------------


def test_presets_cover_the_rewards_edges():
    assert set(PRESET_EXPECTATIONS) == {p["id"] for p in PRESETS}
    for item in PRESETS:
        fmt, correctness, total, rule = PRESET_EXPECTATIONS[item["id"]]
        r = item["request"]
        computed = reward_breakdown(r["completion"], r["answer"], answer_format=r.get("answer_format", "tags"),
                                    choices=r.get("choices"), question_type=r.get("question_type"))
        assert computed == pytest.approx({"format_reward": fmt, "correctness_reward": correctness,
                                          "total_reward": total}), item["id"]
        assert score_payload(r)["details"]["correctness_rule"] == rule, item["id"]


def test_numeric_preset_is_numeric_not_strict():
    result = score_payload(preset("numeric")["request"])
    assert result["correctness_reward"] == 1.5  # 1.5, not the exact match's 2.0
    assert result["verdicts"]["correct"] is False and result["verdicts"]["correct_numeric"] is True


def test_spam_preset_takes_the_penalty():
    details = score_payload(preset("spam")["request"])["details"]
    assert details["addcriterion_spam"] is True


# Which computed parts each preset's explanation quotes (formatted as the text writes them).
QUOTED_PARTS = {
    "exact": ("format_reward", "correctness_reward", "total_reward"),
    "numeric": ("correctness_reward", "total_reward"),
    "missing_tags": ("format_reward", "total_reward"),
    "spam": ("total_reward",),
    "boxed": (),
    "option_letter": ("correctness_reward",),
}


def test_preset_explanations_quote_the_real_numbers():
    for item in PRESETS:
        computed = score_payload(item["request"])
        for part in QUOTED_PARTS[item["id"]]:
            quoted = f"{computed[part]:.1f}".replace("-", "−")  # the texts use a real minus sign
            for language in LANGUAGES:
                assert quoted in item["explanation"][language], (item["id"], part, language)


def test_every_preset_and_string_exists_in_both_languages():
    assert set(STRINGS) == set(LANGUAGES)
    assert set(STRINGS["en"]) == set(STRINGS["zh"])
    for key in STRINGS["en"]:
        # the same {placeholders}, so the page fills both languages the same way
        assert set(re.findall(r"\{(\w+)\}", STRINGS["en"][key])) == set(re.findall(r"\{(\w+)\}", STRINGS["zh"][key]))
        assert STRINGS["en"][key] != STRINGS["zh"][key] or key in {"format_tags", "format_boxed"}, key
    for item in PRESETS:
        assert set(item["name"]) == set(item["explanation"]) == set(LANGUAGES)
    assert re.search(r"[\u4e00-\u9fff]", STRINGS["zh"]["title"])


def test_page_embeds_its_data_safely_and_uses_known_strings():
    page = page_html()
    match = re.search(r'<script id="playground-data" type="application/json">(.*?)</script>', page, re.S)
    data = json.loads(match.group(1))
    assert data["strings"] == STRINGS and data["max_body_bytes"] == MAX_BODY_BYTES
    assert [p["id"] for p in data["presets"]] == [p["id"] for p in PRESETS]
    assert "<" not in match.group(1)  # "</script>" inside a preset could not end the element
    used = set(re.findall(r'data-i18n="(\w+)"', page))
    assert used and used <= set(STRINGS["en"])
    # every key the script builds at run time exists too
    for prefix in ("r_tags_", "r_boxed_"):
        assert any(k.startswith(prefix) for k in STRINGS["en"])
    for rule in ("exact", "option_letter", "numeric", "mismatch", "no_solution", "no_gold"):
        assert f"r_tags_{rule}" in STRINGS["en"]
    for rule in ("exact", "numeric", "mismatch", "no_box", "no_gold"):
        assert f"r_boxed_{rule}" in STRINGS["en"]
    assert "https://" not in page and "http://" not in page  # self-contained


# --- the HTTP server -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with running_server() as running:
        yield running


def _request(server, method, path, body=None, headers=None):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _post_json(server, payload):
    status, headers, body = _request(server, "POST", "/api/score", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    assert headers["Content-Type"].startswith("application/json")
    return status, json.loads(body)


def test_score_endpoint(server):
    status, result = _post_json(server, {"completion": GOOD.format("991.0"), "answer": "991"})
    assert status == 200
    assert result["total_reward"] == pytest.approx(0.3 * 2.0 + 1.0 * 1.5)
    assert result["pred"] == "991.0"


def test_page_and_presets(server):
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "Reward playground" in body.decode("utf-8")
    status, headers, body = _request(server, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, _, body = _request(server, "GET", "/api/presets")
    assert status == 200 and [p["id"] for p in json.loads(body)["presets"]] == [p["id"] for p in PRESETS]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"completion": NaN, "answer": "1"}', "not valid JSON"),
        (b"[" * 20000 + b"]" * 20000, "not valid JSON"),
        (b'{"completion": "x"}', "missing field 'answer'"),
        (b'{"completion": 5, "answer": "1"}', "'completion' must be a string"),
        (b"", "not valid JSON"),
    ],
)
def test_bad_requests_get_400_with_a_json_error(server, body, fragment):
    status, headers, raw = _request(server, "POST", "/api/score", body)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert fragment in json.loads(raw)["error"]


def test_unknown_paths_and_wrong_methods(server):
    status, _, raw = _request(server, "GET", "/nope")
    assert status == 404 and "no such path" in json.loads(raw)["error"]
    status, _, raw = _request(server, "POST", "/nope", b"{}")
    assert status == 404
    status, headers, raw = _request(server, "GET", "/api/score")
    assert status == 405 and headers["Allow"] == "POST" and "error" in json.loads(raw)
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = _request(server, method, "/api/score")
        assert status == 405, method
    status, headers, _ = _request(server, "POST", "/")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, raw = _request(server, "BREW", "/")  # a method the stdlib does not know: 501, still JSON
    assert status == 501 and "error" in json.loads(raw)


def _raw_exchange(server, data: bytes) -> bytes:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # done sending: a server waiting for more body sees the end
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_body_is_refused_before_it_is_read(server):
    # Only the headers are sent: the 413 must come back without the server waiting for the body.
    head = (f"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    reply = _raw_exchange(server, head)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413")
    assert "limit" in json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    # a body of exactly the limit is read and judged on its content
    status, _, _ = _request(server, "POST", "/api/score", b" " * MAX_BODY_BYTES)
    assert status == 400


def test_length_is_required_and_must_be_valid(server):
    reply = _raw_exchange(server, b"POST /api/score HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")
    reply = _raw_exchange(server, b"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    reply = _raw_exchange(server, b"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 400") and b"ended early" in reply
    reply = _raw_exchange(server, b"POST /api/score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")


def test_garbage_request_lines_do_not_stop_the_server(server):
    for junk in (b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"A" * 70000 + b"\r\n\r\n"):
        _raw_exchange(server, junk)
    status, _ = _post_json(server, {"completion": "x", "answer": "1"})
    assert status == 200


def test_an_unexpected_exception_is_a_500_json_error(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(rewards, "reward_breakdown", broken)
    status, result = _post_json(server, {"completion": "x", "answer": "1"})
    assert status == 500 and result == {"error": "internal error: RuntimeError"}
    monkeypatch.undo()
    assert _post_json(server, {"completion": "x", "answer": "1"})[0] == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_JSON | st.dictionaries(_FIELDS, _JSON))
def test_any_json_gets_a_json_answer(server, payload):
    status, result = _post_json(server, payload)
    assert status in (200, 400)
    assert ("error" in result) == (status == 400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2048), path=st.sampled_from(["/api/score", "/", "/api/presets", "/x"]))
def test_any_bytes_get_a_json_answer_and_the_server_keeps_going(server, body, path):
    status, headers, raw = _request(server, "POST", path, body)
    assert headers["Content-Type"].startswith("application/json")
    assert status in ((200, 400) if path == "/api/score" else (404, 405))
    json.loads(raw)
    assert _request(server, "GET", "/api/presets")[0] == 200


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@pytest.mark.parametrize("sigterm_ignored_by_parent", [False, True])
def test_command_line_serves_and_stops(sigterm_ignored_by_parent):
    # A child inherits an ignored SIGTERM (nohup-like shells, some CI runners): the server must still stop on it,
    # and the test must never leave a server running, whatever happens.
    process = subprocess.Popen(
        [sys.executable, "-m", "vlmrl_pipeline.playground", "--host", "127.0.0.1", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, text=True, preexec_fn=_ignore_sigterm if sigterm_ignored_by_parent else None,
    )
    stopped_by_sigterm = False
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert url, line
        connection = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
        process.terminate()
        process.wait(timeout=10)
        stopped_by_sigterm = True
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
    assert stopped_by_sigterm and process.returncode == 0


def test_keep_alive_answers_are_not_held_back_by_nagle(server):
    # Headers and body leave in two writes; without TCP_NODELAY the second waits for the client's delayed ACK, a
    # ~40 ms stall per kept-alive request. The server sets TCP_NODELAY on each connection: checked on the one
    # this client keeps alive for three requests.
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for _ in range(3):
            connection.request("POST", "/api/score", body=json.dumps({"completion": GOOD.format("3"), "answer": "3"}),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["total_reward"] == pytest.approx(2.6)
        client_port = connection.sock.getsockname()[1]
        [mine] = [p for p in server.open_connections if p.client and p.client[1] == client_port]
        sock = mine.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        connection.close()


def test_a_burst_of_connections_is_queued_not_reset(server):
    assert server.request_queue_size >= 100  # the listen() backlog (the stdlib's default is 5)
    host, port = server.server_address[:2]
    # the case: 50 at once (19 were reset with the stdlib's backlog of 5)
    sockets = [socket.create_connection((host, port), timeout=10) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /api/presets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for sock in sockets:
            assert sock.recv(64).startswith(b"HTTP/1.1 200"), "connection reset or refused"
    finally:
        for sock in sockets:
            sock.close()


def test_the_largest_hostile_request_is_scored(server):
    # The case: 64 KiB of unclosed <SOLUTION> was 5.8 s through the playground (quadratic block search).
    completion = "<SOLUTION>" * ((MAX_BODY_BYTES - 200) // len("<SOLUTION>"))
    status, result = _post_json(server, {"completion": completion, "answer": "3"})
    assert status == 200 and result["format_reward"] == 0.0 and result["correctness_reward"] == 0.0


def test_connections_beyond_the_cap_get_a_503_at_once_and_free_slots_are_reused():
    with running_server(max_connections=2) as small:
        host, port = small.server_address[:2]
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]  # hold both threads
        try:
            refused = b""
            for _ in range(50):  # the two idle ones are accepted first; then every new one is turned away
                with socket.create_connection((host, port), timeout=10) as extra:
                    extra.sendall(b"GET /api/presets HTTP/1.1\r\nHost: x\r\n\r\n")
                    refused = extra.recv(65536)
                if refused.startswith(b"HTTP/1.1 503"):
                    break
            assert refused.startswith(b"HTTP/1.1 503") and b'"error"' in refused
        finally:
            for sock in idle:
                sock.close()
        for _ in range(100):  # the closed connections' threads end and give their slots back
            status, _, _ = _request(small, "GET", "/api/presets")
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200


def test_the_report_is_served_over_http_from_the_data_folder(tmp_path):
    """What the UI's ``report_page`` link opens: the eval_diff_report asset's files, and nothing else."""
    folder = tmp_path / "eval_diff_report"
    folder.mkdir()
    (folder / "report.html").write_text("<!doctype html><title>r</title>", encoding="utf-8")
    (folder / "before_after.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "secret.txt").write_text("not for the web")
    with running_server(data_dir=tmp_path) as served:
        status, headers, body = _request(served, "GET", "/reports/report.html")
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert body == (folder / "report.html").read_bytes()
        status, headers, body = _request(served, "GET", "/reports/before_after.png")
        assert status == 200 and headers["Content-Type"] == "image/png" and body == b"\x89PNG fake"
        status, _, raw = _request(served, "GET", "/reports/report.json")  # a served name, not written yet
        assert status == 404 and "materialize eval_diff_report first" in json.loads(raw)["error"]
        for path in ("/reports/../secret.txt", "/reports/%2e%2e/secret.txt", "/reports/", "/reports/x/report.html"):
            status, _, raw = _request(served, "GET", path)
            assert status == 404 and "no such report file" in json.loads(raw)["error"], path
        status, headers, _ = _request(served, "POST", "/reports/report.html", b"{}")
        assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_an_experiments_report_is_served_from_its_own_folder(tmp_path):
    folder = tmp_path / "experiments" / "small_eval" / "eval_diff_report"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<!doctype html><title>small</title>", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("not for the web")
    with running_server(data_dir=tmp_path) as served:
        status, _, body = _request(served, "GET", "/experiments/small_eval/reports/report.html")
        assert status == 200 and b"small" in body
        status, _, raw = _request(served, "GET", "/experiments/other/reports/report.html")
        assert status == 404 and "materialize eval_diff_report first" in json.loads(raw)["error"]
        for path in ("/experiments/../reports/report.html", "/experiments/small_eval/reports/../../secret.txt",
                     "/experiments/small_eval/reports/secret.txt", "/experiments/.x/reports/report.html"):
            status, _, _ = _request(served, "GET", path)
            assert status == 404, path


def test_without_a_data_folder_the_report_route_says_how_to_start(server):
    status, _, raw = _request(server, "GET", "/reports/report.html")
    assert status == 404 and "--data-dir" in json.loads(raw)["error"]


def _load_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "playground_load.py"
    spec = importlib.util.spec_from_file_location("playground_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stalled_and_many_clients_wait_their_turn_instead_of_locking_others_out():
    """The issue's two cases, bounded (``benchmarks/playground_load.py`` runs them at full size): behind 70
    connections that stall mid-request line a normal request is answered (the thread-per-connection server gave a
    503), and 200 clients holding kept-alive connections at once all get their answers (it failed 161 of 4000)."""
    load = _load_benchmark()
    with running_server() as server:
        assert load.behind_stalled(server, 70)["status"] == 200
        result = load.many_clients(server, 200, 3)
        assert result["failed"] == 0, result
        assert _request(server, "GET", "/api/presets")[0] == 200
