"""The gateway against an upstream that streams v1 deltas, through the official openai SDK.

What the user notices: the same answer whichever dialect the upstream speaks, stream or not,
and the gateway asking the upstream for exactly what UPSTREAM_ENCODING says.
"""

import time

import pytest

from pgw.conf.settings import SettingsError, load
from pgw.logs import mask

CODE_ANSWER = ("```python\nimport math\nprint(math.pi)\n```\n"
               "Result:\n```\n3.141592653589793\n```\n"
               "圆周率 π 约等于 3.14159。")


def ask(client, stream):
    kwargs = dict(model="gpt-4-s", messages=[{"role": "user", "content": "算一下 π"}])
    if not stream:
        done = client.chat.completions.create(**kwargs)
        return done.choices[0].message.content, done.choices[0].finish_reason
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_auto_gets_v1_and_answers_like_legacy(gateway, upstream, key, stream):
    client = gateway.client(key)
    upstream.plan(key, scenario="code", chunking="random:3")
    assert ask(client, stream) == (CODE_ANSWER, "stop")
    upstream.plan(key, scenario="code", chunking="random:3", encoding="legacy")
    assert ask(client, stream) == (CODE_ANSWER, "stop")
    first, second = upstream.conversations(key)
    assert first["body"]["supported_encodings"] == ["v1"]
    assert first["encoding"] == "v1"          # the fake really answered with patches
    assert second["encoding"] == "legacy"     # and here with whole messages, though v1 was asked for


def test_a_long_v1_answer_arrives_whole(gateway, upstream, key):
    upstream.plan(key, scenario="long", options={"chars": 20000}, chunking="random:11")
    client = gateway.client(key)
    text, reason = ask(client, True)
    assert len(text) == 20000 and reason == "stop"
    assert text.startswith("长回答 long answer 的一部分，mixed 中文 and ASCII. 长回答")
    assert ask(client, False) == (text, "stop")
    assert [r["encoding"] for r in upstream.conversations(key)] == ["v1", "v1"]


def test_legacy_setting_asks_for_no_encoding(gateway_factory, upstream, key):
    gw = gateway_factory(UPSTREAM_ENCODING="legacy")
    upstream.plan(key, scenario="code")
    assert ask(gw.client(key), True) == (CODE_ANSWER, "stop")
    (record,) = upstream.conversations(key)
    assert "supported_encodings" not in record["body"]
    assert record["encoding"] == "legacy"


def test_v1_setting_asks_for_v1(gateway_factory, upstream, key):
    gw = gateway_factory(UPSTREAM_ENCODING="v1")
    upstream.plan(key, scenario="code")
    assert ask(gw.client(key), False) == (CODE_ANSWER, "stop")
    (record,) = upstream.conversations(key)
    assert record["body"]["supported_encodings"] == ["v1"]
    assert record["encoding"] == "v1"


def test_a_bad_encoding_setting_is_refused_by_name():
    with pytest.raises(SettingsError, match="UPSTREAM_ENCODING must be one of auto, legacy, v1, got 'v2'"):
        load(environ={"UPSTREAM_ENCODING": "v2"})
    assert load(environ={"UPSTREAM_ENCODING": " V1 "}).upstream_encoding == "v1"
    assert load(environ={}).upstream_encoding == "auto"


def test_an_unknown_patch_is_skipped_and_logged_once(gateway, upstream, key):
    upstream.plan(key, scenario="code", future_patches=True)
    assert ask(gateway.client(key), True) == (CODE_ANSWER, "stop")
    assert upstream.conversations(key)[0]["encoding"] == "v1"
    line = "upstream stream for key %s: skipped 'future_op' at '/message/content/parts/0': unknown operation" % mask(key)
    log = gateway.log_text()
    for _ in range(50):  # the handler logs after the response is finished
        if line in log:
            break
        time.sleep(0.05)
        log = gateway.log_text()
    assert log.count(line) == 1
