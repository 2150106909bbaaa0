"""Hand-offs (upstream-protocol 5.6) end to end: the POST's SSE carries only a resume token and
``stream_handoff``; the gateway streams the rest from ``f/conversation/resume`` into the same
answer, or, when resume is refused, polls the conversation until the answer has finished."""

import re
import uuid

import openai
import pytest

from fakeupstream import scenarios

USER = [{"role": "user", "content": "想一想再回答"}]


@pytest.fixture(scope="module")
def gw(gateway_factory):
    return gateway_factory(IMAGE_POLL_INTERVAL="0.1", KEEPALIVE_INTERVAL="0.2")


def ask(client, stream):
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True))
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert len({c.id for c in chunks}) == 1  # one seamless stream
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    done = client.chat.completions.create(model="gpt-4-s", messages=USER)
    assert done.choices[0].finish_reason == "stop"
    return done.choices[0].message.content


def resumes(upstream, key):
    return [r for r in upstream.log(key) if r["path"].endswith("/f/conversation/resume")]


def polls(upstream, key):
    return [r for r in upstream.log(key) if r["method"] == "GET" and re.search(r"/conversation/[^/]+$", r["path"])]


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_handed_off_answer_is_resumed_exactly(gw, upstream, key, stream, encoding):
    upstream.plan(key, scenario="handoff", encoding=encoding, chunking="random:5")
    assert ask(gw.client(key), stream) == scenarios.HANDOFF_TEXT
    [resume] = resumes(upstream, key)
    cid = upstream.conversations(key)[0]["conversation_id"]
    assert resume["body"] == {"conversation_id": cid, "offset": 0}
    assert resume["conduit_token"].startswith("conduit-")
    assert resume["authorization"] == "Bearer " + key
    assert polls(upstream, key) == []


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_resume_falls_back_to_polling_until_the_answer_finished(gw, upstream, key, stream, encoding):
    upstream.plan(key, scenario="handoff_refused", options={"delay": 0.5}, encoding=encoding)
    assert ask(gw.client(key), stream) == scenarios.HANDOFF_TEXT
    assert len(resumes(upstream, key)) == 1
    assert len(polls(upstream, key)) >= 2  # the first polls saw the answer still in progress


@pytest.fixture(scope="module")
def impatient_gw(gateway_factory):
    return gateway_factory(IMAGE_POLL_INTERVAL="0.1", HANDOFF_WAIT_TIMEOUT="0.4")


def test_a_handed_off_answer_that_never_finishes_is_a_504(impatient_gw, upstream, key):
    upstream.plan(key, scenario="handoff_refused", options={"delay": 60})
    with pytest.raises(openai.APIStatusError) as err:
        impatient_gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    assert err.value.status_code == 504
    assert err.value.body["code"] == "handoff_timeout" and "HANDOFF_WAIT_TIMEOUT" in err.value.body["message"]


def test_a_team_key_resumes_and_polls_with_its_account(gw, upstream):
    token, account = "fk-team-" + uuid.uuid4().hex, "acct-" + uuid.uuid4().hex
    upstream.plan(token, scenario="handoff_refused", options={"delay": 0.3})
    assert ask(gw.client("%s,%s" % (token, account)), False) == scenarios.HANDOFF_TEXT
    calls = [r for r in upstream.log(token) if "/backend-api/" in r["path"]]
    assert resumes(upstream, token) and polls(upstream, token)
    assert {(r["authorization"], r["account_id"]) for r in calls} == {("Bearer " + token, account)}


def test_a_resumed_stream_is_bounded_by_the_total_limit(impatient_gw, upstream, key):
    upstream.plan(key, scenario="handoff", pace_ms=60)  # the resumed answer takes over a second
    text = []
    with pytest.raises(openai.APIError) as err:
        for chunk in impatient_gw.client(key).chat.completions.create(model="gpt-4-s", messages=USER, stream=True):
            text.append(chunk.choices[0].delta.content or "")
    assert "HANDOFF_WAIT_TIMEOUT" in err.value.message
    assert scenarios.HANDOFF_TEXT.startswith("".join(text)) and "".join(text) != scenarios.HANDOFF_TEXT
