"""Model names end to end: today's names reach their slugs upstream, /v1/models lists them,
MODEL_MAP and PASS_THROUGH_MODELS add names, and a typo's 404 says what was meant."""

import json
import os
import subprocess
import sys

import openai
import pytest

from tests.helpers import ROOT, http

USER = [{"role": "user", "content": "你好"}]


def listed(gw):
    status, _, body = http("GET", gw.url + "/v1/models")
    assert status == 200
    return [m["id"] for m in json.loads(body)["data"]]


@pytest.mark.parametrize("name, slug", [("gpt-5.2-thinking", "gpt-5-2-thinking"), ("gpt-4o", "gpt-4o"),
                                        ("o3", "o3"), ("auto", "auto"), ("gpt-4", "gpt-4"), ("gpt-4-s", "gpt-4"),
                                        ("gpt-3.5-turbo", "text-davinci-002-render-sha")])
def test_names_reach_their_slugs(gateway, upstream, key, name, slug):
    answer = gateway.client(key).chat.completions.create(model=name, messages=USER)
    assert answer.model == name
    assert [c["body"]["model"] for c in upstream.conversations(key)] == [slug]


def test_models_list_has_todays_and_the_seeds_names(gateway):
    names = listed(gateway)
    assert {"gpt-4-s", "gpt-4-mobile", "gpt-3.5-turbo", "gpt-4", "auto", "gpt-4o", "gpt-4.1", "o3", "o4-mini-high",
            "gpt-5", "gpt-5.1-thinking", "gpt-5.2"} <= set(names)
    assert len(names) == len(set(names))
    status, _, body = http("GET", gateway.url + "/v1/models/gpt-5.2")
    assert status == 200 and json.loads(body)["id"] == "gpt-5.2"


def test_a_typo_gets_a_404_naming_the_closest(gateway, key):
    with pytest.raises(openai.NotFoundError) as e:
        gateway.client(key).chat.completions.create(model="gpt-5.2-thinkin", messages=USER)
    assert e.value.code == "model_not_found" and "`gpt-5.2-thinking`" in e.value.message
    status, _, body = http("GET", gateway.url + "/v1/models/gpt-4o-minii")
    assert status == 404 and "`gpt-4o-mini`" in json.loads(body)["error"]["message"]


def test_model_map_and_pass_through(gateway_factory, upstream, key):
    gw = gateway_factory(MODEL_MAP="gpt-4-turbo=gpt-4o,我的模型=gpt-5-2", PASS_THROUGH_MODELS="true")
    client = gw.client(key)
    for name in ("gpt-4-turbo", "我的模型", "gpt-6.5-preview"):
        client.chat.completions.create(model=name, messages=USER)
    assert [c["body"]["model"] for c in upstream.conversations(key)] == ["gpt-4o", "gpt-5-2", "gpt-6-5-preview"]
    assert {"gpt-4-turbo", "我的模型"} <= set(listed(gw))


def test_a_broken_models_file_stops_start_up_with_one_line(tmp_path):
    path = tmp_path / "models.json"
    path.write_text('{"models": {"gpt-4o": {"draw": true}}}')
    env = dict(os.environ, BASE_URL="http://127.0.0.1:9", PORT="0", MODELS_CONFIG=str(path))
    done = subprocess.run([sys.executable, "server.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=15)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after the effective settings, one line says why
    assert "MODELS_CONFIG" in last and str(path) in last, done.stderr


def test_reasoning_effort_reaches_a_thinking_model_as_thinking_effort(gateway, upstream, key):
    client = gateway.client(key)
    client.chat.completions.create(model="gpt-5.2-thinking", messages=USER, reasoning_effort="high")
    client.chat.completions.create(model="gpt-4o", messages=USER, reasoning_effort="high")
    bodies = [c["body"] for c in upstream.conversations(key)]
    assert bodies[0]["thinking_effort"] == "extended" and "thinking_effort" not in bodies[1]
