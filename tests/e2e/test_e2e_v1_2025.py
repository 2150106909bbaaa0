"""The gateway against the 2025-2026 v1 stream (the fake upstream's default for v1).

What the user notices: the same answers as with the older forms, typed frames never in the
text, and an account's usage cap reported as a rate limit with the upstream's words.
"""

import openai
import pytest

from fakeupstream.scenarios import HELLO, usage_limit

USAGE_LIMIT = usage_limit("", "gpt-4o").error

ASK = [{"role": "user", "content": "你好"}]


@pytest.mark.parametrize("form", ["v1", "v1-2024", "legacy"])
def test_every_form_gives_the_same_answer(gateway, upstream, key, form):
    upstream.plan(key, scenario="hello", chunking="random:5", encoding=form)
    client = gateway.client(key)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == HELLO + "you said “你好”."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.conversations(key)[0]["encoding"] == form


def test_usage_limit_before_any_text_is_a_429_with_the_upstream_message(gateway, upstream, key):
    upstream.plan(key, scenario="usage_limit")
    client = gateway.client(key)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert e.value.status_code == 429
    assert e.value.body["message"] == USAGE_LIMIT
    assert e.value.body["code"] == "rate_limit_exceeded"
    assert upstream.conversations(key)[0]["encoding"] == "v1"


def test_usage_limit_in_a_stream_is_the_stream_error_event(gateway, upstream, key):
    upstream.plan(key, scenario="usage_limit")
    client = gateway.client(key)
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True))
    assert USAGE_LIMIT in str(e.value)
