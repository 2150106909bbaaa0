"""Hostile request bodies against the real server: a million messages, deep nesting, invalid
UTF-8 and CESU-8 surrogates, and random JSON of any shape: always a 4xx OpenAI error, quickly,
with bounded memory, and the server keeps serving."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import http


def _post(gw, body, key="fk-limits-requests", path="/v1/chat/completions", timeout=20):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", gw.url + path, data, {"Authorization": "Bearer " + key,
                                               "Content-Type": "application/json"}, timeout=timeout)


def _error(response, status=400):
    got, _, body = response
    error = json.loads(body)["error"]
    assert got == status, body[:300]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    return error


def _peak_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_a_million_messages_get_a_400_quickly_with_bounded_memory(gateway):
    body = json.dumps({"model": "gpt-3.5-turbo",
                       "messages": [{"role": "user", "content": "hi"}] * 1_000_000}, separators=(",", ":")).encode()
    assert len(body) < 33554432  # under MAX_REQUEST_BODY: the body is read, then refused
    _post(gateway, {"model": "gpt-3.5-turbo", "messages": "warm-up"})
    before = _peak_rss_kb(gateway.pid)
    t0 = time.monotonic()
    error = _error(_post(gateway, body))
    elapsed = time.monotonic() - t0
    assert error["code"] == "json_too_large" and "MAX_JSON_CONTAINERS" in error["message"]
    growth_mb = (_peak_rss_kb(gateway.pid) - before) / 1024
    # The body is 31 MB and is held while it is read; decoding it would take ~400 MB more.
    assert growth_mb < 3 * len(body) / 1e6, "peak RSS grew %.0f MB" % growth_mb
    assert elapsed < 10
    assert http("GET", gateway.url + "/healthz")[0] == 200


def test_many_messages_under_the_object_limit_meet_max_messages(gateway_factory):
    gw = gateway_factory(MAX_MESSAGES="100")
    error = _error(_post(gw, {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}] * 101}))
    assert error["code"] == "too_many_messages" and "MAX_MESSAGES" in error["message"]


def test_deep_nesting_is_a_400_at_any_depth(gateway):
    for depth in (65, 1000, 1025, 50_000):
        body = b'{"model": "x", "messages": ' + b"[" * depth + b"]" * depth + b"}"
        error = _error(_post(gateway, body))
        assert error["code"] == "json_too_deep" and "MAX_JSON_DEPTH" in error["message"], depth
    ok = b'{"model": "x", "messages": ' + b"[" * 60 + b"]" * 60 + b"}"
    assert _error(_post(gateway, ok))["code"] != "json_too_deep"


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "\xed\xa0\xbd\xed\xb8\x80"}]}',  # CESU-8
    b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # a lone one
    b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',  # overlong
    b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "\xe4\xbd"}]}',  # cut short
    b'{"mod\xedel": 1}',
    b"\xef\xbb\xbf{}",
])
def test_invalid_byte_sequences_are_a_400(gateway, raw):
    _error(_post(gateway, raw))
    assert _error(_post(gateway, raw, path="/v1/images/generations"))


def test_lone_surrogate_escapes_are_repaired_not_refused(gateway, upstream, key):
    status, _, body = _post(gateway, b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", '
                                     b'"content": "half \\ud83d of an emoji"}]}', key=key)
    assert status == 200, body


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "file", "audio"])},
                             optional={"text": JSON, "image_url": st.fixed_dictionaries({"url": JSON}) | JSON,
                                       "file": JSON})
BODY = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["gpt-3.5-turbo", "gpt-4", "nope"]) | JSON,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool", "x"]) | JSON},
                                               optional={"content": st.text(max_size=20) | st.lists(PART, max_size=3)
                                                         | JSON}), max_size=3) | JSON,
    "stream": JSON, "n": JSON, "prompt": JSON, "size": JSON, "response_format": JSON, "stream_options": JSON})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=BODY | JSON, path=st.sampled_from(["/v1/chat/completions", "/v1/images/generations"]))
def test_random_json_never_gives_a_5xx_from_the_live_server(gateway, body, path):
    # "nope" keys: the fake upstream answers any key, so a well-formed body may reach it; the
    # model names that exist answer quickly from the fake's default scenario.
    status, _, raw = _post(gateway, json.dumps(body).encode(), path=path, timeout=20)
    assert status < 500, raw[:300]
    if status >= 400:
        _error((status, None, raw), status)


def _raw_exchange(gw, head, body_parts, timeout=10):
    """Send a request head and body parts over a raw socket; return everything the server sent
    until it closed the connection (or ``timeout``)."""
    import socket
    import urllib.parse
    u = urllib.parse.urlsplit(gw.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    try:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:
                break  # the server answered and closed: it reads no more
        got = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            got += data
        return got
    finally:
        sock.close()


@pytest.fixture(scope="module")
def small_body_gw(gateway_factory):
    return gateway_factory(MAX_REQUEST_BODY="4096")


def test_a_body_declared_far_too_large_is_a_413_without_being_read(small_body_gw):
    """A Content-Length of 1 GB (beyond Tornado's own cap, which answered a bare 400) is refused
    at once with the OpenAI error naming the limit; the client never has to send the body."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fk-big\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
    got = _raw_exchange(small_body_gw, head, [b"{"])
    status_line, _, rest = got.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), got[:200]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_too_large" and "MAX_REQUEST_BODY" in error["message"]
    assert got.count(b"HTTP/1.1 ") == 1  # one answer, not a 400 appended to it


def test_a_chunked_body_past_the_limit_is_a_413_as_soon_as_it_passes(small_body_gw):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fk-big\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 64  # 64 KB, far past 4096: never all needed
    got = _raw_exchange(small_body_gw, head, chunks)
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    body = got.partition(b"\r\n\r\n")[2]
    assert b"request_too_large" in body and b"MAX_REQUEST_BODY" in body
    status, _, _ = _post(small_body_gw, {"model": "gpt-4-s", "messages": [{"role": "user", "content": "hi"}]})
    assert status != 500  # the server keeps serving
