"""SIGTERM and worker deaths against the real server.

A deploy stops the gateway with SIGTERM: answers that finish within SHUTDOWN_GRACE finish as
usual; the rest end with an error event and ``[DONE]`` (never a cut connection a bot cannot tell
from a network fault), their conversations are hidden as usual, and the process exits 0. With
PROCESS_WORKERS > 1 the parent passes the signal on and waits for its workers. A worker that
dies (killed, crashed) is restarted, however often it happens, and its death is logged.
"""

import json
import os
import signal
import socket
import time

import pytest

from tests import rawstream
from tests.e2e.test_workers import _alive, _children
from tests.helpers import http




# The upstream holds its answer at piece 20 (plan "gate"): past the first text in every dialect
# (today's v1 stream sends half a dozen events before it), well before the end.


def _open_stream(gw, key):
    """A stream whose first text has arrived: ``(socket, bytes read so far)``."""
    sock = rawstream.connect(gw.url)
    sock.sendall(rawstream.request_bytes(gw.url, key))
    head = rawstream.read_until(sock, rawstream.CONTENT)
    assert rawstream.CONTENT in head, head
    return sock, head


def _wait_exit(proc, timeout):
    try:
        return proc.wait(timeout)
    except Exception:
        proc.kill()
        raise


def _hidden(upstream, key):
    return [r for r in upstream.log(key) if r["method"] == "PATCH"]


def _shutdown_with_open_streams(gw, upstream, held_key, quick_key):
    # held: the upstream stops after some text and never goes on (gate); quick: a paced answer
    # that finishes within the grace period.
    upstream.plan(held_key, scenario="long", options={"chars": 400}, chunking="event", gate=20)
    upstream.plan(quick_key, scenario="long", options={"chars": 700}, chunking="event", pace_ms=10)
    held, held_head = _open_stream(gw, held_key)
    quick, quick_head = _open_stream(gw, quick_key)
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    quick_answer = rawstream.read_answer(quick, 15, quick_head)
    held_answer = rawstream.read_answer(held, 15, held_head)
    status = _wait_exit(gw.proc, 15)
    took = time.monotonic() - t0
    return quick_answer, held_answer, status, took


def _expected_long(chars):
    from fakeupstream import scenarios
    return scenarios.long("", "gpt-4", chars=chars).messages[0].text


def test_sigterm_lets_answers_finish_then_ends_the_rest_and_exits_0(gateway_factory, upstream):
    gw = gateway_factory(SHUTDOWN_GRACE=1.5)
    held_key, quick_key = "fk-held-%d" % time.time_ns(), "fk-quick-%d" % time.time_ns()
    quick, held, status, took = _shutdown_with_open_streams(gw, upstream, held_key, quick_key)

    assert quick.status == 200 and quick.done and quick.error is None
    assert quick.text == _expected_long(700)  # finished within the grace period, whole

    assert held.status == 200 and held.done and held.complete_body  # an end, not a cut
    assert held.error["code"] == "shutting_down" and "shutting down" in held.error["message"]
    assert held.text and _expected_long(400).startswith(held.text)

    assert status == 0
    assert 1.5 <= took < 10
    # both conversations hidden upstream as usual
    assert upstream.wait_log(held_key, lambda r: _hidden(upstream, held_key)) and _hidden(upstream, held_key)
    assert _hidden(upstream, quick_key)
    assert "ending 1 answers still open after SHUTDOWN_GRACE" in gw.log_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_after_the_signal_no_new_connections_are_accepted_and_a_waiting_collect_gets_a_503(
        gateway_factory, upstream, signum):
    gw = gateway_factory(SHUTDOWN_GRACE=1)
    key = "fk-held-%d" % time.time_ns()
    upstream.plan(key, scenario="long", options={"chars": 400}, chunking="event", gate=20)
    held, head = _open_stream(gw, key)
    collect = rawstream.connect(gw.url)
    collect.sendall(rawstream.request_bytes(gw.url, key, stream=False))
    upstream.wait_log(key, lambda r: len([x for x in r if x["method"] == "POST"]) == 2)
    gw.proc.send_signal(signum)
    deadline = time.monotonic() + 5
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            socket.create_connection(rawstream.address(gw.url), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    assert refused
    answer = rawstream.read_answer(held, 15, head)
    assert answer.done and answer.error["code"] == "shutting_down"
    collected = rawstream.read_answer(collect, 15)
    assert collected.status == 503 and collected.json()["error"]["code"] == "shutting_down"
    assert _wait_exit(gw.proc, 15) == 0


def test_sigterm_to_the_parent_of_two_workers_ends_every_stream(gateway_factory, upstream):
    gw = gateway_factory(SHUTDOWN_GRACE=1.5, PROCESS_WORKERS=2)
    workers = _workers(gw, 2)
    keys = ["fk-held-%d-%d" % (i, time.time_ns()) for i in range(4)]
    streams = []
    for key in keys:
        upstream.plan(key, scenario="long", options={"chars": 400}, chunking="event", gate=20)
        streams.append(_open_stream(gw, key))
    gw.proc.send_signal(signal.SIGTERM)
    for sock, head in streams:
        answer = rawstream.read_answer(sock, 15, head)
        assert answer.done and answer.error["code"] == "shutting_down"
    assert _wait_exit(gw.proc, 20) == 0
    assert not any(_alive(w) for w in workers)
    for key in keys:
        assert upstream.wait_log(key, lambda r: any(x["method"] == "PATCH" for x in r))


def _workers(gw, n, timeout=10, exclude=()):
    deadline = time.monotonic() + timeout
    found = [w for w in _children(gw.proc.pid) if w not in exclude]
    while len(found) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        found = [w for w in _children(gw.proc.pid) if w not in exclude and _alive(w)]
    assert len(found) >= n, found
    return found


def _serves(gw):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status, _, body = http("GET", gw.url + "/healthz", timeout=2)
            if status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_worker_deaths_never_end_the_service(gateway_factory, upstream, key):
    gw = gateway_factory(PROCESS_WORKERS=2)
    killed = []
    for round_ in range(4):  # 2 deaths per worker slot: back-off 0.5 s, then 1 s
        workers = _workers(gw, 2, exclude=killed)
        victim = workers[round_ % 2]
        os.kill(victim, signal.SIGSEGV if round_ == 2 else signal.SIGKILL)
        killed.append(victim)
        while _alive(victim):
            time.sleep(0.02)
        assert _serves(gw)  # the other worker answers meanwhile
    _workers(gw, 2, timeout=15, exclude=killed)  # both slots filled again
    assert gw.proc.poll() is None
    text = gw.log_text()
    assert text.count("was killed by SIGKILL; restarting it in") == 3
    assert text.count("was killed by SIGSEGV") == 1
    answer = rawstream.chat(gw.url, key)
    assert answer.status == 200 and answer.done and answer.error is None and answer.text


def test_healthz_counts_open_streams_and_connections(gateway_factory, upstream, key):
    gw = gateway_factory()
    upstream.plan(key, scenario="long", options={"chars": 400}, chunking="event", gate=20)
    streams = [_open_stream(gw, key) for _ in range(3)]
    status, _, body = http("GET", gw.url + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["open_streams"] == 3
    assert health["open_connections"] == 4  # three streams and this request
    for sock, _ in streams:
        sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        health = json.loads(http("GET", gw.url + "/healthz")[2])
        if health["open_streams"] == 0:
            break
        time.sleep(0.05)
    assert health["open_streams"] == 0 and health["open_connections"] == 1


def test_sigterm_ends_a_stream_still_queued_for_an_account_with_an_error_event(gateway_factory, upstream, tmp_path):
    """A stream waiting in the account queue already has its headers and keep-alives: at the end
    of SHUTDOWN_GRACE it gets an end too (the error event and [DONE]), never a cut connection."""
    from tests.e2e.test_pool import new_accounts, start_pool
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], scenario="long", options={"chars": 400}, chunking="event", gate=20)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], SHUTDOWN_GRACE=1)
    held, _ = _open_stream(gw, gw.access_key)  # holds the only account
    queued = rawstream.connect(gw.url)
    queued.sendall(rawstream.request_bytes(gw.url, gw.access_key))
    seen = rawstream.read_until(queued, b": keep-alive")  # queued, with headers (KEEPALIVE_INTERVAL 0.2)
    assert b": keep-alive" in seen and b"HTTP/1.1 200" in seen
    gw.proc.send_signal(signal.SIGTERM)
    answer = rawstream.read_answer(queued, 15, seen)
    assert answer.status == 200 and answer.done and answer.complete_body
    assert answer.error["code"] == "shutting_down"
    assert _wait_exit(gw.proc, 15) == 0
    held.close()
    queued.close()
