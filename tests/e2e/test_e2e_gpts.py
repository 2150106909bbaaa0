"""GPTs end to end: gpts.json names, the gizmo fetched at start (or lazily after a failure), the
payload the upstream gets, /v1/models, the direct gpt-4-gizmo-g-… form and a clashing name."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.helpers import ROOT, http

USER = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def gpts_setup(gateway_factory, upstream, tmp_path_factory):
    """A gateway with two GPTs; the info key's fetch of "flaky" fails once (at start-up)."""
    info_key = "fk-gpts-info-" + uuid.uuid4().hex
    upstream.plan(info_key, gizmos={"g-helper1": {"name": "Helper Display"}, "g-flaky1": {"name": "Flaky Display"}},
                  gizmo_fail={"g-flaky1": 1})
    path = tmp_path_factory.mktemp("gpts") / "gpts.json"
    path.write_text(json.dumps({"my-helper": {"id": "g-helper1"}, "flaky": {"id": "g-flaky1"}}), encoding="utf-8")
    gw = gateway_factory(GPTS_CONFIG=str(path), KEY_FOR_GPTS_INFO=info_key)
    # start-up fetches run in the background: wait until both have been tried
    upstream.wait_log(info_key, lambda rs: len([r for r in rs if "/gizmos/" in r["path"]]) >= 2)
    return gw, info_key, path


def gizmo_gets(upstream, info_key):
    return [r["path"].rsplit("/", 1)[1] for r in upstream.log(info_key) if "/gizmos/" in r["path"]]


def fake_gizmo(upstream, gizmo_id, key):
    status, _, body = http("GET", upstream.url + "/backend-api/gizmos/" + gizmo_id, headers={"Authorization": "Bearer " + key})
    assert status == 200
    return json.loads(body)


def models(gw):
    status, _, body = http("GET", gw.url + "/v1/models")
    assert status == 200
    return {m["id"]: m for m in json.loads(body)["data"]}


def test_gpt_chat_sends_gizmo_model_and_the_gizmo(gpts_setup, upstream, key):
    gw, info_key, _ = gpts_setup
    gw.client(key).chat.completions.create(model="my-helper", messages=USER)
    [conv] = upstream.conversations(key)
    assert conv["authorization"] == "Bearer " + key  # the user's key, not the info key
    assert conv["body"]["model"] == "gpt-4-gizmo"
    # the fake answers a planned gizmo the same way every time: compare with a fresh copy
    planned = "fk-gizmo-copy-" + uuid.uuid4().hex
    upstream.plan(planned, gizmos={"g-helper1": {"name": "Helper Display"}})
    assert conv["body"]["conversation_mode"] == {"kind": "gizmo_interaction", "gizmo_id": "g-helper1",
                                                 "gizmo": fake_gizmo(upstream, "g-helper1", planned)}


def test_models_list_gpts_with_display_names(gpts_setup):
    listed = models(gpts_setup[0])
    assert listed["my-helper"]["gizmo_id"] == "g-helper1"
    assert listed["my-helper"]["display_name"] == "Helper Display"
    assert listed["my-helper"]["owned_by"] == "gpts"
    assert "gpt-4-s" in listed and "gizmo_id" not in listed["gpt-4-s"]


def test_failed_fetch_is_retried_on_first_use(gpts_setup, upstream, key):
    gw, info_key, _ = gpts_setup
    assert gizmo_gets(upstream, info_key).count("g-flaky1") == 1   # the start-up fetch, which failed
    assert models(gw)["flaky"]["display_name"] == "flaky"        # not known yet: the name stands in
    gw.client(key).chat.completions.create(model="flaky", messages=USER)
    assert gizmo_gets(upstream, info_key).count("g-flaky1") == 2   # fetched again on first use
    [conv] = upstream.conversations(key)
    mode = conv["body"]["conversation_mode"]
    assert (mode["kind"], mode["gizmo_id"]) == ("gizmo_interaction", "g-flaky1")
    assert mode["gizmo"]["gizmo"]["display"]["name"] == "Flaky Display"
    assert models(gw)["flaky"]["display_name"] == "Flaky Display"
    gw.client(key).chat.completions.create(model="flaky", messages=USER)
    assert gizmo_gets(upstream, info_key).count("g-flaky1") == 2   # known now: no more fetches


def test_gpts_without_info_key_use_the_id_alone(gateway_factory, gpts_setup, upstream, key):
    gw = gateway_factory(GPTS_CONFIG=str(gpts_setup[2]))
    gw.client(key).chat.completions.create(model="my-helper", messages=USER)
    [conv] = upstream.conversations(key)
    assert conv["body"]["model"] == "gpt-4-gizmo"
    assert conv["body"]["conversation_mode"] == {"kind": "gizmo_interaction", "gizmo_id": "g-helper1"}
    assert models(gw)["my-helper"]["display_name"] == "my-helper"


def test_direct_gizmo_model_name_needs_no_configuration(gateway, upstream, key):
    done = gateway.client(key).chat.completions.create(model="gpt-4-gizmo-g-Direct42-some-gpt", messages=USER)
    assert done.model == "gpt-4-gizmo-g-Direct42-some-gpt"
    [conv] = upstream.conversations(key)
    assert conv["body"]["model"] == "gpt-4-gizmo"
    assert conv["body"]["conversation_mode"] == {"kind": "gizmo_interaction", "gizmo_id": "g-Direct42-some-gpt"}


def test_gpt_name_clashing_with_an_alias_stops_start_up(tmp_path):
    path = tmp_path / "gpts.json"
    path.write_text(json.dumps({"gpt-4-s": {"id": "g-abc"}}), encoding="utf-8")
    env = dict(os.environ, BASE_URL="http://127.0.0.1:9", GPTS_CONFIG=str(path), PORT="0", HOST="127.0.0.1")
    done = subprocess.run([sys.executable, "server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "settings: GPTS_CONFIG %s: the GPT name 'gpt-4-s' is already a model alias; rename it in the file "
        "or change the GPT_*_NEW_NAME settings" % path)
