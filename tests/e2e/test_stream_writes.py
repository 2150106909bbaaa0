"""The stream write path (pgw/runtime.py StreamSink, WriteBatch; pgw/upstream.py QueuedBuffer):
chunks of many streams leave once per loop turn, framed by the gateway and handed to the socket
directly on HTTP/1.1, queued behind Tornado's buffer when the socket is full. What a client
notices: every text exact and in order whatever the HTTP version, the reading speed, the
number of streams at once, or the event loop."""

import json
import socket
import threading
import time
import urllib.parse

import pytest

from fakeupstream import scenarios
from pgw.converters.sse import SSEDecoder

LONG = scenarios.long(None, "gpt-4", chars=6000).messages[0].text


def request(gw, key, version="1.1"):
    body = json.dumps({"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode()
    host = urllib.parse.urlsplit(gw.url).netloc
    return (b"POST /v1/chat/completions HTTP/%s\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (version.encode(), host.encode(), key.encode(), len(body), body))


def dechunk(body):
    out, i = [], 0
    while True:
        end = body.index(b"\r\n", i)
        size = int(body[i:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2:end + 2 + size])
        assert body[end + 2 + size:end + 4 + size] == b"\r\n"
        i = end + 4 + size


def texts(sse_bytes):
    got, finished = [], []
    for ev in SSEDecoder().feed(sse_bytes):
        if ev.data == b"[DONE]":
            finished.append(True)
            continue
        for choice in json.loads(ev.data)["choices"]:
            got.append(choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                finished.append(choice["finish_reason"])
    return "".join(got), finished


def fetch(gw, key, version="1.1", read_size=65536, rcvbuf=None, first_pause=0.0):
    """One raw stream: (status line, headers, decoded SSE bytes)."""
    host, port = urllib.parse.urlsplit(gw.url).netloc.rsplit(":", 1)
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect((host, int(port)))
    s.sendall(request(gw, key, version))
    raw = b""
    while True:
        data = s.recv(read_size)
        if not data:
            break
        raw += data
        if version == "1.1" and raw.endswith(b"\r\n0\r\n\r\n"):
            break
        if first_pause:
            time.sleep(first_pause)
            first_pause = 0.0
    s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return lines[0], headers, body


def test_http11_stream_is_exact_and_properly_chunked(gateway, upstream, key):
    upstream.plan(key, scenario="long", options={"chars": 6000}, chunking="random:5")
    status, headers, body = fetch(gateway, key)
    assert status.startswith("HTTP/1.1 200")
    assert headers["transfer-encoding"] == "chunked"
    text, finished = texts(body)
    assert text == LONG
    assert finished == ["stop", True]


def test_http10_client_gets_the_same_text_without_chunking(gateway, upstream, key):
    upstream.plan(key, scenario="long", options={"chars": 6000})
    status, headers, body = fetch(gateway, key, version="1.0")
    assert status.startswith("HTTP/1.1 200")
    assert "transfer-encoding" not in headers
    text, finished = texts(body)
    assert text == LONG
    assert finished == ["stop", True]


def test_a_client_that_stops_reading_for_a_while_gets_everything_in_order(gateway, upstream, key):
    # The client reads nothing for a second while the upstream sends at full speed: the socket
    # fills, sends are partial or refused, and the rest waits in Tornado's buffer behind them.
    text = scenarios.long(None, "gpt-4", chars=150000).messages[0].text
    upstream.plan(key, scenario="long", options={"chars": 150000}, encoding="v1", chunking="event")
    _, _, body = fetch(gateway, key, rcvbuf=4096, first_pause=1.0)
    got, finished = texts(body)
    assert len(got) == len(text) and got == text
    assert finished == ["stop", True]


def test_many_paced_streams_at_once_each_get_their_own_text(gateway, upstream):
    keys = ["fk-writes-%02d-0000000000" % i for i in range(40)]
    for i, k in enumerate(keys):
        upstream.plan(k, scenario="long", options={"chars": 300 + 7 * i}, pace_ms=2)
    results = {}

    def one(k):
        results[k] = texts(fetch(gateway, k)[2])

    threads = [threading.Thread(target=one, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, k in enumerate(keys):
        assert results[k] == (scenarios.long(None, "gpt-4", chars=300 + 7 * i).messages[0].text, ["stop", True])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_event_loop_streams_exactly(gateway_factory, upstream, key, loop):
    gw = gateway_factory(EVENT_LOOP=loop)
    upstream.plan(key, scenario="long", options={"chars": 6000}, chunking="random:3")
    text, finished = texts(fetch(gw, key)[2])
    assert text == LONG
    assert finished == ["stop", True]
