"""Faults against the real server: slow and silent clients, upstreams that misbehave.

Each test is bounded in time (socket timeouts, bounded polls) and checks what a user or an
operator would notice: the text that arrived, the error that ended it, whether the upstream
transfer kept running, how much memory the gateway took.
"""

import json
import time

import pytest

from fakeupstream import scenarios
from fakeupstream.app import flood_text
from tests import rawstream
from tests.helpers import http

FLOOD = 30_000_000   # characters: far more than the socket buffers between the processes hold


def flood(chars):
    return b"".join(flood_text(i, min(100, chars - i)) for i in range(0, chars, 100)).decode()


@pytest.fixture(scope="module")
def slow_gw(gateway_factory):
    """Default flow control; a WRITE_TIMEOUT longer than the tests' waits."""
    return gateway_factory(WRITE_TIMEOUT=60, NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false")


@pytest.fixture(scope="module")
def gw(gateway_factory):
    return gateway_factory(WRITE_TIMEOUT=1, MAX_UPSTREAM_EVENT_BYTES=1 << 20, MAX_ANSWER_BYTES=1 << 20,
                           NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false")


def _record(upstream, key, predicate=lambda r: True, timeout=10):
    records = upstream.wait_log(key, lambda rs: any(r["path"].endswith("/conversation") and predicate(r)
                                                    for r in rs), timeout)
    convs = [r for r in records if r["path"].endswith("/conversation")]
    assert convs, records
    return convs[-1]


def test_a_client_that_does_not_read_pauses_the_upstream_and_memory_stays_bounded(slow_gw, upstream, key):
    upstream.plan(key, flood=FLOOD)
    base = rawstream.rss_kb(slow_gw.pid)
    sock = rawstream.connect(slow_gw.url, timeout=30)
    sock.sendall(rawstream.request_bytes(slow_gw.url, key))
    _record(upstream, key)
    time.sleep(2.5)  # at full speed the whole answer would have passed through by now (~1 s)
    grown = rawstream.rss_kb(slow_gw.pid) - base
    record = _record(upstream, key)
    health = json.loads(http("GET", slow_gw.url + "/healthz")[2])
    # Without flow control the gateway took the whole answer within 2 s: +100 MB RSS; with it
    # +8.5 MB (socket buffers of both sides hold the rest).
    assert grown < 32 * 1024, grown
    assert not record["completed"] and not record["aborted"]  # paused, not given up
    assert health["open_streams"] == 1

    answer = rawstream.read_answer(sock, 60)  # the client reads after all: the rest comes
    sock.close()
    assert answer.status == 200 and answer.done and answer.error is None
    assert answer.text == flood(FLOOD)
    assert _record(upstream, key)["completed"]


def test_a_client_that_takes_nothing_for_write_timeout_is_disconnected(gw, upstream, key):
    upstream.plan(key, flood=FLOOD)
    sock = rawstream.connect(gw.url, rcvbuf=4096, timeout=30)
    t0 = time.monotonic()
    sock.sendall(rawstream.request_bytes(gw.url, key))
    record = _record(upstream, key, lambda r: r["aborted"], timeout=10)
    took = time.monotonic() - t0
    assert record["aborted"] and not record["completed"]  # the upstream transfer was aborted
    assert 1 <= took < 8
    answer = rawstream.read_answer(sock, 20)
    sock.close()
    assert not answer.done and not answer.complete_body  # cut: that client was gone for good
    assert "took nothing of its answer for 1 s (WRITE_TIMEOUT)" in gw.log_text()


def test_without_flow_control_a_client_that_takes_nothing_is_still_disconnected(gateway_factory, upstream, key):
    # A mark no answer reaches: the transfer is never paused, the gateway writes the whole answer
    # and then waits for the client to take it; WRITE_TIMEOUT still ends that wait.
    gw = gateway_factory(WRITE_TIMEOUT=1, STREAM_BUFFER_BYTES=1 << 30, NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false")
    upstream.plan(key, flood=3_000_000)
    sock = rawstream.connect(gw.url, rcvbuf=4096, timeout=30)
    sock.sendall(rawstream.request_bytes(gw.url, key))
    deadline = time.monotonic() + 10
    while "(WRITE_TIMEOUT): disconnected" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "took nothing of its answer for 1 s (WRITE_TIMEOUT): disconnected" in gw.log_text()
    answer = rawstream.read_answer(sock, 20)
    sock.close()
    assert not answer.complete_body
    health = json.loads(http("GET", gw.url + "/healthz")[2])
    assert health["open_streams"] == 0 and health["open_connections"] == 1


def test_an_enormous_line_ends_the_stream_with_an_error_naming_the_limit(gw, upstream, key):
    upstream.plan(key, fault="enormous_line", fault_bytes=64 << 20)
    base = rawstream.rss_kb(gw.pid)
    answer = rawstream.chat(gw.url, key, timeout=20)
    # The line comes before the answer has said anything, so the stream has sent no byte yet:
    # the error is the response itself (an error event would follow a 200 once text was sent).
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_event_too_large"
    assert "MAX_UPSTREAM_EVENT_BYTES (1048576 bytes)" in error["message"]
    assert _record(upstream, key, lambda r: r["aborted"])["aborted"]  # not read to its end
    assert rawstream.rss_kb(gw.pid) - base < 32 * 1024


def test_an_enormous_line_in_a_collected_answer_is_a_502(gw, upstream, key):
    upstream.plan(key, fault="enormous_line", fault_bytes=64 << 20)
    answer = rawstream.chat(gw.url, key, timeout=20, stream=False)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_event_too_large" and "MAX_UPSTREAM_EVENT_BYTES" in error["message"]


def test_a_collected_answer_past_max_answer_bytes_is_a_502_and_a_stream_is_not_limited(gw, upstream, key):
    upstream.plan(key, flood=FLOOD)  # more than the socket buffers: the upstream is still sending
    answer = rawstream.chat(gw.url, key, timeout=20, stream=False)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "answer_too_large" and "MAX_ANSWER_BYTES (1048576 bytes)" in error["message"]
    assert _record(upstream, key, lambda r: r["aborted"])["aborted"]

    upstream.plan(key, flood=3_000_000)
    streamed = rawstream.chat(gw.url, key, timeout=30)
    assert streamed.done and streamed.error is None and streamed.text == flood(3_000_000)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_an_html_page_with_status_200_is_a_clean_502(gw, upstream, key, stream):
    upstream.plan(key, fault="html_200")
    answer = rawstream.chat(gw.url, key, timeout=10, stream=stream)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_not_event_stream" and "text/html" in error["message"]


def test_invalid_utf8_events_are_skipped_and_logged(gw, upstream, key):
    upstream.plan(key, scenario="long", options={"chars": 600}, fault="invalid_utf8", encoding="legacy")
    answer = rawstream.chat(gw.url, key, timeout=10)
    assert answer.done and answer.error is None
    # whole-message snapshots: the events after a broken one carry its text again
    assert answer.text == scenarios.long("", "gpt-4", chars=600).messages[0].text
    deadline = time.monotonic() + 5
    while "not UTF-8" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the upstream sent bytes that are not UTF-8" in gw.log_text()
