"""No key in any log line, at DEBUG: every path runs with distinctive keys (shaped like
PandoraNext's fk- tokens and shaped like nothing), including keys the upstream echoes in its
error details, keys in query strings and in malformed Authorization headers; then the whole log
is searched. Also: X-Forwarded-* only from TRUSTED_PROXIES, image links and the Host header."""

import base64
import json
import uuid

import pytest

from fakeupstream.files import png
from tests.helpers import http


def _keys(n):
    # Half shaped like nothing a pattern could know (an opaque access token), half like fk- tokens.
    return ["Zq9" + uuid.uuid4().hex + uuid.uuid4().hex if i % 2 else "fk-" + uuid.uuid4().hex for i in range(n)]


def _hidden(key):
    """The middle of ``key``: what a masked key never shows."""
    return key[5:-5]


def _json(gw, path, key, body, headers=None, method="POST"):
    h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    h.update(headers or {})
    return http(method, gw.url + path, None if body is None else json.dumps(body).encode(), h, timeout=20)


def test_no_key_reaches_any_log_line_at_debug(gateway_factory, upstream, tmp_path):
    keys = _keys(16)
    info_key = keys[15]
    upstream.plan(info_key, gizmos={"g-secret1": {"name": "Secret GPT"}}, gizmo_fail={"g-secret1": 1})
    gpts = tmp_path / "gpts.json"
    gpts.write_text(json.dumps({"secret-gpt": {"id": "g-secret1"}}), encoding="utf-8")
    gw = gateway_factory(LOG_LEVEL="DEBUG", GPTS_CONFIG=str(gpts), KEY_FOR_GPTS_INFO=info_key,
                         FILE_FETCH_ALLOW="127.0.0.1")
    chat = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hello"}]}
    # chat, non-stream and stream
    assert _json(gw, "/v1/chat/completions", keys[0], chat)[0] == 200
    assert _json(gw, "/v1/chat/completions", keys[1], dict(chat, stream=True))[0] == 200
    # images
    assert _json(gw, "/v1/images/generations", keys[2], {"prompt": "an otter"})[0] == 200
    # files: a data URL and a fetched one
    image = "data:image/png;base64," + base64.b64encode(png(4, 4, (1, 2, 3))).decode()
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": image}},
             {"type": "image_url", "image_url": {"url": upstream.url + "/_fake/bytes?n=10&type=text/plain"}}]
    assert _json(gw, "/v1/chat/completions", keys[3], {"model": "gpt-4-s", "messages": [
        {"role": "user", "content": parts}]})[0] == 200
    # upstream errors that echo the key, in a conversation and in an upload step
    for i, status in ((4, 401), (5, 500), (6, 403)):
        upstream.plan(keys[i], status=status, detail="token %s is not valid here" % keys[i])
        assert _json(gw, "/v1/chat/completions", keys[i], chat)[0] >= 400
    upstream.plan(keys[7], upload_fail={"step": "put", "status": 500})
    assert _json(gw, "/v1/chat/completions", keys[7], {"model": "gpt-4-s", "messages": [
        {"role": "user", "content": parts[:2]}]})[0] >= 400
    # 401s: a key without "Bearer", with another scheme
    assert http("GET", gw.url + "/v1/models", headers={"Authorization": keys[8]})[0] in (200, 401)
    assert _json(gw, "/v1/chat/completions", "", chat, {"Authorization": "Basic " + keys[9]})[0] == 401
    # keys in query strings, on a real endpoint, an unknown one and a 401
    http("GET", gw.url + "/v1/models?api_key=" + keys[10])
    http("POST", gw.url + "/v1/chat/completions?key=" + keys[11], b"{}")
    http("GET", gw.url + "/v1/nothing-here?token=" + keys[12])
    # GPT details (fetched with KEY_FOR_GPTS_INFO; the first fetch fails and is logged) and a GPT chat
    assert _json(gw, "/v1/chat/completions", keys[13], dict(chat, model="secret-gpt"))[0] == 200
    # a malformed body and a stream the upstream cuts
    assert _json(gw, "/v1/chat/completions", keys[14], {"model": 1})[0] == 400
    upstream.wait_log(info_key, lambda rs: len([r for r in rs if "/gizmos/" in r["path"]]) >= 2)

    text = gw.log_text()
    assert " DEBUG " in text  # the log really was at DEBUG
    for key in keys:
        assert key not in text and _hidden(key) not in text, "key %s… is in the log" % key[:6]
    assert "…" in text  # masked keys are there to tell requests apart


@pytest.fixture(scope="module")
def proxied(gateway_factory):
    return gateway_factory(TRUSTED_PROXIES="10.9.0.0/16")


def test_forwarded_headers_from_untrusted_peers_are_ignored(proxied, upstream, key):
    """The test client (127.0.0.1) is not in TRUSTED_PROXIES: X-Forwarded-Proto must not turn
    the image links to https, X-Real-Ip must not change the logged address."""
    upstream.plan(key, scenario="dalle")
    status, _, body = _json(proxied, "/v1/images/generations", key, {"prompt": "an otter"},
                            {"X-Forwarded-Proto": "https", "X-Real-Ip": "6.6.6.6", "X-Forwarded-For": "6.6.6.6"})
    assert status == 200, body
    url = json.loads(body)["data"][0]["url"]
    assert url.startswith(proxied.url + "/images/"), url
    assert "6.6.6.6" not in proxied.log_text()


def test_forwarded_headers_from_a_trusted_proxy_are_used(gateway_factory, upstream, key):
    gw = gateway_factory(TRUSTED_PROXIES="127.0.0.1")
    upstream.plan(key, scenario="dalle")
    status, _, body = _json(gw, "/v1/images/generations", key, {"prompt": "an otter"},
                            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.com"})
    assert status == 200, body
    assert json.loads(body)["data"][0]["url"].startswith("https://chat.example.com/images/")


def test_image_links_never_reflect_the_host_header_when_upload_base_url_is_set(gateway_factory, upstream, key):
    gw = gateway_factory(UPLOAD_BASE_URL="https://img.example.org/", TRUSTED_PROXIES="127.0.0.1")
    upstream.plan(key, scenario="dalle")
    status, _, body = _json(gw, "/v1/images/generations", key, {"prompt": "an otter"},
                            {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"})
    assert status == 200, body
    assert json.loads(body)["data"][0]["url"].startswith("https://img.example.org/images/")
