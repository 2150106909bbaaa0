"""What an operator sees: the access log line, /readyz, links behind a reverse proxy, the demo's own log."""

import json
import re
import socket
import sys
import time

import pytest

from tests.helpers import ROOT, ChildProcess, http

DRAW = [{"role": "user", "content": "please /draw a cat"}]


def chat(gw, key, body, headers=None):
    h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    h.update(headers or {})
    return http("POST", gw.url + "/v1/chat/completions", body, h, timeout=20)


def access_lines(gw, needle, count=1, timeout=5):
    """The access-log lines containing ``needle``, once ``count`` of them are there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in gw.log_text().splitlines() if "gateway.access:" in line and needle in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_one_access_line_per_request_with_what_an_operator_asks(gateway, key):
    status, _, raw = chat(gateway, key, {"model": "gpt-4-s", "stream": True, "messages": [
        {"role": "user", "content": "hi"}]})
    assert status == 200
    masked = key[:4] + "…" + key[-4:]
    (line,) = access_lines(gateway, "key=" + masked)
    assert " INFO " in line
    fields = dict(f.split("=", 1) for f in line.split("gateway.access: ", 1)[1].split()[3:] if "=" in f)
    assert line.split("gateway.access: ", 1)[1].startswith("POST /v1/chat/completions 200 ")
    assert fields["model"] == "gpt-4-s" and fields["stream"] == "true" and fields["upstream"] == "200"
    assert int(fields["bytes"]) == len(raw)
    assert 0 <= float(fields["ttfb"]) <= float(fields["total"])
    assert key not in gateway.log_text()


def test_a_refused_request_is_logged_with_the_upstream_status(gateway, upstream, key):
    upstream.plan(key, status=429)
    status, _, _ = chat(gateway, key, {"model": "gpt-4-s", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 429
    (line,) = access_lines(gateway, "key=%s…%s" % (key[:4], key[-4:]))
    assert " 429 " in line and "stream=false" in line and "upstream=429" in line


def test_health_probes_stay_out_of_the_info_log(gateway):
    assert http("GET", gateway.url + "/healthz")[0] == 200
    assert http("GET", gateway.url + "/readyz")[0] == 200
    time.sleep(0.2)
    assert not [line for line in gateway.log_text().splitlines() if "GET /healthz" in line or "GET /readyz" in line]


def test_readyz_says_the_upstream_answers(gateway):
    status, _, raw = http("GET", gateway.url + "/readyz")
    body = json.loads(raw)
    assert status == 200 and body["status"] == "ok" and body["upstream"]["answers"] is True


def _dead_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_readyz_is_503_while_the_upstream_does_not_answer_and_start_up_warns(gateway_factory):
    gw = gateway_factory(BASE_URL="http://127.0.0.1:%d" % _dead_port())
    assert http("GET", gw.url + "/healthz")[0] == 200  # alive: no reason to restart it
    status, _, raw = http("GET", gw.url + "/readyz")
    body = json.loads(raw)
    assert status == 503 and body["status"] == "unavailable" and body["upstream"]["answers"] is False
    assert body["upstream"]["error"] and not re.search(r"\b599\b", body["upstream"]["error"])
    warning = gw.wait_for(r"WARNING .*BASE_URL http://127\.0\.0\.1:\d+ does not answer[^\n]*")
    assert "PROXY_API_PREFIX" in warning.group(0)


@pytest.fixture(scope="module")
def proxied(gateway_factory):
    """Behind nginx on the same machine: its forwarded headers are believed (TRUSTED_PROXIES)."""
    return gateway_factory(TRUSTED_PROXIES="127.0.0.1")


def test_image_links_behind_a_reverse_proxy_use_the_forwarded_host_and_scheme(proxied, key):
    status, _, raw = chat(proxied, key, {"model": "gpt-4-s", "messages": DRAW},
                          {"X-Forwarded-Host": "chat.example.com", "X-Forwarded-Proto": "https"})
    assert status == 200
    text = json.loads(raw)["choices"][0]["message"]["content"]
    assert re.search(r"https://chat\.example\.com/images/image_\w+\.png", text), text


def test_a_forwarded_host_that_is_not_a_host_is_ignored(proxied, key):
    status, _, raw = chat(proxied, key, {"model": "gpt-4-s", "messages": DRAW},
                          {"X-Forwarded-Host": "evil.example/<script>"})
    text = json.loads(raw)["choices"][0]["message"]["content"]
    assert status == 200 and "evil" not in text and proxied.url.split("//")[1] + "/images/" in text


def test_the_demo_upstream_logs_under_its_own_name(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PORT": "0", "HOST": "127.0.0.1", "LOG_LEVEL": "DEBUG",
           "IMAGES_DIR": str(tmp_path / "images")}
    demo = ChildProcess([sys.executable, "server.py", "--demo"], env=env, cwd=ROOT, prefix="demo-",
                        pattern=r"gateway: listening on (http://\S+)")
    try:
        url = demo.match.group(1)
        status, _, _ = http("POST", url + "/v1/chat/completions",
                            {"model": "gpt-4-s", "messages": [{"role": "user", "content": "hi"}]},
                            {"Authorization": "Bearer any-key-at-all", "Content-Type": "application/json"})
        assert status == 200
        demo.wait_for(r"fakeupstream\.access: POST /backend-api/conversation 200")
        demo.wait_for(r"gateway\.access: POST /v1/chat/completions 200")
        names_of = {}
        for line in demo.log_text().splitlines():
            m = re.search(r"\] (\S+): (.*)", line)
            if m:
                names_of.setdefault(m.group(1), []).append(m.group(2))
        assert "tornado.access" not in names_of
        assert not [m for name, ms in names_of.items() if name.startswith("gateway") for m in ms if "backend-api" in m]
    finally:
        demo.stop()


def test_a_client_that_leaves_mid_stream_still_gets_its_access_line(gateway, upstream, key):
    upstream.plan(key, gate=2)  # the stream waits after its first pieces
    host, port = gateway.url.split("//")[1].split(":")
    body = json.dumps({"model": "gpt-4-s", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    try:
        (line,) = access_lines(gateway, "key=%s…%s" % (key[:4], key[-4:]))
        assert " 200 " in line and line.endswith(" client_gone")
    finally:
        upstream.release(key)
