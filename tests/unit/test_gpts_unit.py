"""Unit tests of the GPTs file and the gizmo store's lazy retry (with a stand-in upstream)."""

import asyncio
import json

import pytest

from pgw import gizmos
from pgw.conf import gpts
from pgw.conf import settings as conf_settings
from pgw.conf.models import ModelTable


def write(tmp_path, obj):
    path = tmp_path / "gpts.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return str(path)


def test_config_is_read_as_name_to_id(tmp_path):
    path = write(tmp_path, {"gpt-4-classic": {"id": "g-YyyyMT9XH-chatgpt-classic"}, "pandora": {"id": "g-CFsX"}})
    assert gpts.read_config(path) == {"gpt-4-classic": "g-YyyyMT9XH-chatgpt-classic", "pandora": "g-CFsX"}
    assert gpts.read_config(str(tmp_path / "missing.json")) == {}


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not valid JSON"),
    ("[]", "must hold an object"),
    ('{"x": {"id": "abc"}}', "needs {\"id\": \"g-...\"}"),
    ('{"x": {"id": "g-../../conversation"}}', "needs {\"id\": \"g-...\"}"),
])
def test_bad_config_stops_start_up(tmp_path, content, words):
    with pytest.raises(conf_settings.SettingsError, match="GPTS_CONFIG") as e:
        gpts.read_config(write(tmp_path, content))
    assert words in str(e.value)


def test_gpt_names_clashing_with_aliases_stop_start_up(tmp_path):
    path = write(tmp_path, {"gpt-4-mobile": {"id": "g-abc"}})
    settings = conf_settings.load(environ={"GPTS_CONFIG": path})
    with pytest.raises(conf_settings.SettingsError) as e:
        gpts.build_models(settings)
    assert str(e.value) == ("GPTS_CONFIG %s: the GPT name 'gpt-4-mobile' is already a model alias; rename it "
                            "in the file or change the GPT_*_NEW_NAME settings" % path)


class StubUpstream:
    def __init__(self, answers):
        self.answers = answers   # list of (status, data)
        self.calls = []

    async def call(self, method, path, key, body=None, timeout=30):
        self.calls.append((method, path, key))
        status, data = self.answers.pop(0)
        return status, data, b"{}"


def test_failed_fetch_is_retried_on_first_use_then_backs_off():
    models = ModelTable(conf_settings.load(environ={}))
    models.add_gpt("helper", "g-abc")
    gizmo = {"gizmo": {"id": "g-abc", "display": {"name": "Helper"}}}
    up = StubUpstream([(500, None), (500, None), (200, gizmo)])
    now = [100.0]
    store = gizmos.GizmoStore(up, models, "info-key", 5, clock=lambda: now[0])
    route = models.resolve("helper")

    async def scenario():
        await store.fetch_all()                      # start-up: fails
        assert await store.gizmo(route) is None      # first use: retried, fails again
        assert await store.gizmo(route) is None      # backing off: no call
        now[0] += gizmos.RETRY_AFTER
        assert await store.gizmo(route) == gizmo     # later use: fetched
        assert await store.gizmo(route) == gizmo     # known: no call

    asyncio.run(scenario())
    assert up.calls == [("GET", "gizmos/g-abc", "info-key")] * 3
    assert route.display_name == "Helper"


def test_without_info_key_nothing_is_fetched():
    models = ModelTable(conf_settings.load(environ={}))
    models.add_gpt("helper", "g-abc")
    up = StubUpstream([])
    store = gizmos.GizmoStore(up, models, "", 5)

    async def scenario():
        await store.fetch_all()
        assert await store.gizmo(models.resolve("helper")) is None

    asyncio.run(scenario())
    assert up.calls == []
