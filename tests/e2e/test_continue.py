"""Answers cut at max_tokens, continued (``"action": "continue"``) into the same answer."""

import pytest

from fakeupstream import scenarios

USER = [{"role": "user", "content": "写一篇长文"}]
WHOLE = "".join(scenarios.CUT_PARTS)


def ask(client, stream):
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].choices[0].finish_reason
    done = client.chat.completions.create(model="gpt-4-s", messages=USER)
    return done.choices[0].message.content, done.choices[0].finish_reason


def continues(upstream, key):
    return [r["body"] for r in upstream.conversations(key) if r["body"].get("action") == "continue"]


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
@pytest.mark.parametrize("scenario", ["cut", "cut_new_id"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_answer_is_continued_into_one_whole_text(gateway, upstream, key, stream, scenario, encoding):
    upstream.plan(key, scenario=scenario, encoding=encoding, chunking="random:7")
    assert ask(gateway.client(key), stream) == (WHOLE, "stop")
    first, *more = upstream.conversations(key)
    bodies = continues(upstream, key)
    assert len(bodies) == 2 == len(more)
    for body in bodies:
        assert body["conversation_id"] == first["conversation_id"]
        assert body["model"] == first["body"]["model"] and "messages" not in body
    # (the fake refuses a continue whose parent_message_id is not the cut message: the whole
    # text arriving shows each one continued after the answer's last assistant message)


@pytest.fixture(scope="module")
def no_continue_gw(gateway_factory):
    return gateway_factory(AUTO_CONTINUE="0")


def test_auto_continue_0_leaves_the_answer_cut(no_continue_gw, upstream, key):
    upstream.plan(key, scenario="cut")
    assert ask(no_continue_gw.client(key), False) == (scenarios.CUT_PARTS[0], "length")
    assert continues(upstream, key) == []


@pytest.mark.parametrize("stream", [False, True])
def test_after_auto_continue_continuations_the_answer_finishes_with_length(gateway, upstream, key, stream):
    upstream.plan(key, scenario="max_tokens")
    text, reason = ask(gateway.client(key), stream)
    assert reason == "length"
    assert text == scenarios.max_tokens("", "gpt-4").messages[0].text + "（继续）" * 3
    assert len(continues(upstream, key)) == 3


def test_a_refused_continuation_keeps_the_cut_answer(gateway, upstream, key):
    upstream.plan(key, scenario="cut", continue_status=500)
    assert ask(gateway.client(key), True) == (scenarios.CUT_PARTS[0], "length")
    assert len(continues(upstream, key)) == 1
