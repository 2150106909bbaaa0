"""Where clients fell off before: a base URL with a trailing slash, an agent's tool history,
OpenAI parameters the web backend has no use for."""

import json

import pytest

from tests.helpers import http

USER = [{"role": "user", "content": "你好"}]


def post(gw, path, body, key):
    return http("POST", gw.url + path, body, {"Authorization": "Bearer " + key, "Content-Type": "application/json"})


@pytest.mark.parametrize("path", ["/v1//chat/completions", "//v1/chat/completions", "/v1/chat/completions/",
                                  "/v1///chat//completions//"])
def test_doubled_and_trailing_slashes_reach_chat(gateway, upstream, key, path):
    status, _, body = post(gateway, path, {"model": "gpt-4o", "messages": USER}, key)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"].endswith("you said “你好”.")
    assert len(upstream.conversations(key)) == 1


@pytest.mark.parametrize("path", ["/v1//models", "/v1/models/", "//v1/models//gpt-4o"])
def test_doubled_and_trailing_slashes_reach_models(gateway, path):
    status, _, body = http("GET", gateway.url + path)
    assert status == 200, body


def test_slashes_under_an_api_prefix(gateway_factory, upstream, key):
    gw = gateway_factory(API_PREFIX="se.cret")
    assert post(gw, "/se.cret//v1//chat/completions", {"model": "gpt-4o", "messages": USER}, key)[0] == 200
    # the prefix is a literal: a dot is not "any character"
    assert post(gw, "/seXcret/v1/chat/completions", {"model": "gpt-4o", "messages": USER}, key)[0] == 404


def test_a_request_full_of_parameters_the_backend_ignores_is_answered(gateway, upstream, key):
    status, _, body = post(gateway, "/v1/chat/completions", {
        "model": "gpt-4o", "messages": USER, "user": "u-1", "logit_bias": {"1": 2}, "stop": "\n", "n": 1,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "response_format": {"type": "json_object"},
        "temperature": 2, "top_p": 0.1, "max_tokens": 1, "seed": 1, "logprobs": True, "store": True,
        "reasoning_effort": "minimal", "parallel_tool_calls": True, "metadata": {"k": "v"}}, key)
    assert status == 200, body
