"""Connection limits against the real server: slowloris sockets, idle keep-alive connections,
oversized headers, MAX_CONNECTIONS and running out of descriptors (pgw/listener.py).

Every wait here is bounded: sockets have timeouts, loops a deadline.
"""

import http.client as httpclient
import json
import os
import select
import socket
import sys
import time
import urllib.parse

import pytest

from devkit.procs import ROOT, ChildProcess
from tests.helpers import http


def _addr(gw):
    parts = urllib.parse.urlsplit(gw.url)
    return parts.hostname, parts.port


def _connect(gw, timeout=5):
    return socket.create_connection(_addr(gw), timeout=timeout)


def _closed_by_server(sock, deadline):
    """Whether the server closed ``sock`` before ``deadline`` (monotonic seconds)."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not data:
            return True
    return False


def _read_response(sock, limit=1 << 20):
    data = b""
    sock.settimeout(5)
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _models(gw, key="fk-limits-ok"):
    status, _, body = http("GET", gw.url + "/v1/models", headers={"Authorization": "Bearer " + key}, timeout=5)
    return status, body


def _error_of(response):
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)["error"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_slowloris_sockets_are_closed_after_header_timeout_while_others_are_served(gateway_factory, workers):
    gw = gateway_factory(HEADER_TIMEOUT="1", PROCESS_WORKERS=workers)
    slow = [_connect(gw) for _ in range(30)]
    for s in slow:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    # Others are served while the slow ones trickle header bytes.
    for i in range(3):
        for s in slow:
            try:
                s.sendall(b"X-Slow-%d: 1\r\n" % i)
            except OSError:
                pass
        assert _models(gw)[0] == 200
        time.sleep(0.2)
    deadline = started + 4
    assert all(_closed_by_server(s, deadline) for s in slow), "a slow header socket outlived HEADER_TIMEOUT"
    for s in slow:
        s.close()
    assert _models(gw)[0] == 200


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(gateway_factory):
    gw = gateway_factory(IDLE_CONNECTION_TIMEOUT="1", HEADER_TIMEOUT="30")
    conn = httpclient.HTTPConnection(*_addr(gw), timeout=5)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and not response.will_close
    # The same connection serves a second request straight away ...
    conn.request("GET", "/healthz")
    second = conn.getresponse()
    second.read()
    assert second.status == 200
    # ... but left idle it is closed by the gateway after IDLE_CONNECTION_TIMEOUT.
    assert _closed_by_server(conn.sock, time.monotonic() + 4)
    conn.close()


def test_a_body_that_trickles_in_is_cut_off_after_body_timeout(gateway_factory):
    gw = gateway_factory(BODY_TIMEOUT="1")
    sock = _connect(gw)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fk-x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    started = time.monotonic()
    closed = False
    while not closed and time.monotonic() - started < 4:
        try:
            sock.sendall(b" ")
        except OSError:
            closed = True
            break
        closed = _closed_by_server(sock, time.monotonic() + 0.2)
    sock.close()
    assert closed, "a body still arriving after BODY_TIMEOUT kept its connection"
    assert _models(gw)[0] == 200


def test_oversized_headers_get_431_naming_the_setting(gateway_factory):
    gw = gateway_factory(MAX_HEADER_BYTES="4096")
    sock = _connect(gw)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    status_line, error = _error_of(_read_response(sock))
    sock.close()
    assert status_line.startswith(b"HTTP/1.1 431")
    assert "MAX_HEADER_BYTES" in error["message"] and error["code"] == "headers_too_large"
    assert _models(gw)[0] == 200


def test_connections_beyond_max_connections_are_refused_with_503_then_served_again(gateway_factory):
    gw = gateway_factory(MAX_CONNECTIONS="5", HEADER_TIMEOUT="30")
    held = [_connect(gw) for _ in range(5)]
    for s in held:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # incomplete: each holds its connection
    time.sleep(0.2)  # let the loop accept them (bounded, not a correctness wait: the next check retries)
    refused = _connect(gw)
    status_line, error = _error_of(_read_response(refused))
    refused.close()
    assert status_line.startswith(b"HTTP/1.1 503")
    assert error["code"] == "too_many_connections" and "MAX_CONNECTIONS" in error["message"]
    for s in held:
        s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if _models(gw)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    assert _models(gw)[0] == 200


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LimitedGateway(ChildProcess):
    """server.py under ``prlimit --nofile=N:N``: the gateway cannot raise its descriptor limit."""

    def __init__(self, upstream_url, nofile, **settings):
        env = dict(os.environ, BASE_URL=upstream_url, PORT="0", HOST="127.0.0.1",
                   **{k: str(v) for k, v in settings.items()})
        super().__init__(["prlimit", "--nofile=%d:%d" % (nofile, nofile), sys.executable,
                          os.path.join(ROOT, "server.py")], env=env, prefix="gw-fd-")
        self.url = self.match.group(1)


def test_descriptor_exhaustion_refuses_cheaply_and_recovers(upstream, tmp_path):
    assert os.path.exists("/usr/bin/prlimit"), "needs prlimit (Debian package util-linux)"
    gw = LimitedGateway(upstream.url, 64, MAX_CONNECTIONS="10000", HEADER_TIMEOUT="30",
                        IMAGES_DIR=str(tmp_path))
    try:
        socks = []
        cpu_before = _cpu_seconds(gw.pid)
        for _ in range(120):  # more than the 64 descriptors the gateway may hold
            try:
                s = _connect(gw, timeout=2)
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
                socks.append(s)
            except OSError:
                break
        time.sleep(1.5)  # the gateway meets EMFILE with connections still waiting: it must not spin
        cpu = _cpu_seconds(gw.pid) - cpu_before
        refused = 0
        readable, _, _ = select.select(socks, [], [], 1)
        for s in readable:
            s.setblocking(False)
            try:
                if s.recv(4096).startswith(b"HTTP/1.1 503"):
                    refused += 1
            except OSError:
                pass
        for s in socks:
            s.close()
        log_text = gw.log_text()
        assert cpu < 1.0, "%.2f CPU seconds in 1.5 s: the accept loop spins" % cpu
        assert refused > 0, "no connection was refused with 503"
        assert 1 <= log_text.count("out of descriptors") <= 2 and "Traceback" not in log_text
        assert len(log_text) < 100_000
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = http("GET", gw.url + "/healthz", timeout=2)[0]
            except OSError:
                time.sleep(0.1)
        assert status == 200, "the gateway did not recover"
    finally:
        gw.stop()
