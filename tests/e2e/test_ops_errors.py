"""Errors that point at the fix, as an SDK user sees them (real server, fake upstream)."""

import re
import json
import socket

import openai
import pytest

from tests.helpers import http

USER = [{"role": "user", "content": "hi"}]
NGINX_404 = "<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center></body></html>"


def chat(gateway, key, **extra):
    body = {"model": "gpt-4-s", "messages": USER}
    body.update(extra)
    return http("POST", gateway.url + "/v1/chat/completions", body,
                {"Authorization": "Bearer " + key, "Content-Type": "application/json"})


@pytest.mark.parametrize("stream", [False, True])
def test_a_wrong_base_url_page_is_a_502_naming_the_settings_not_a_not_found(gateway, upstream, key, stream):
    upstream.plan(key, status=404, page=NGINX_404)
    with pytest.raises(openai.APIStatusError) as e:
        gateway.client(key).chat.completions.create(model="gpt-4-s", messages=USER, stream=stream)
    assert not isinstance(e.value, openai.NotFoundError)
    assert e.value.status_code == 502
    assert "BASE_URL" in e.value.message and "PROXY_API_PREFIX" in e.value.message
    assert "<" not in e.value.message


def test_a_usage_cap_tells_sdks_when_to_come_back_and_not_to_retry_now(gateway, upstream, key):
    upstream.plan(key, status=429, detail={"code": "model_cap_exceeded", "message": "You have sent too many messages",
                                           "clears_in": 252})
    status, headers, raw = chat(gateway, key)
    assert status == 429 and headers["Retry-After"] == "252" and headers["x-should-retry"] == "false"
    assert json.loads(raw)["error"]["code"] == "model_cap_exceeded"
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=2, timeout=20)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4-s", messages=USER)
    assert len(upstream.conversations(key)) == 2  # one from the plain call, one from the SDK: no retries


def test_the_upstreams_retry_after_header_is_passed_on(gateway, upstream, key):
    upstream.plan(key, status=429, detail="Only one message at a time.", headers={"Retry-After": "7"})
    status, headers, _ = chat(gateway, key)
    assert status == 429 and headers["Retry-After"] == "7" and "x-should-retry" not in headers


def test_an_upstream_that_takes_the_request_and_says_nothing_is_a_timeout_not_unreachable(gateway_factory, upstream,
                                                                                           key):
    gw = gateway_factory(UPSTREAM_IDLE_TIMEOUT="1")
    upstream.plan(key, hold_s=4)
    status, _, raw = chat(gw, key)
    error = json.loads(raw)["error"]
    assert status == 504 and "sent nothing for 1 s" in error["message"]
    assert "could not be reached" not in error["message"]


def test_an_unreachable_upstream_names_base_url_and_no_internal_code(gateway_factory, key):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gw = gateway_factory(BASE_URL="http://127.0.0.1:%d" % port)
    status, _, raw = chat(gw, key)
    message = json.loads(raw)["error"]["message"]
    assert status == 502 and "could not be reached" in message and "BASE_URL" in message
    assert not re.search(r"\b599\b", message)  # a port such as 59995 may hold the digits
