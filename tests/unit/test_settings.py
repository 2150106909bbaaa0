"""Settings: defaults from conf/config.json, a user file, environment overrides, clear failures."""

import json

import pytest

from pgw.conf import settings as conf
from pgw.conf.models import ModelTable


def load(env=None, path=None):
    return conf.load(path, environ=env or {})


def test_defaults_match_the_documented_ones():
    s = load()
    assert (s.host, s.port, s.log_level, s.process_workers, s.keepalive_interval) == ("0.0.0.0", 33333, "INFO", 1, 1)
    assert s.need_delete_conversation_after_response is True
    assert s.need_log_to_file is False
    assert s.gpts_config == "./gpts.json"
    assert s.gpt_4_s_new_name == ["gpt-4-s"]


def test_every_setting_has_a_default_and_no_default_is_unknown():
    with open(conf.DEFAULTS_PATH) as f:
        assert set(json.load(f)) == set(conf.SPEC)


def test_environment_overrides_and_aliases():
    s = load({"PORT": "8080", "BASE_URL": "http://127.0.0.1:8181/", "GPT_4_S_New_Name": "gpt-4-s,gpt-4",
              "BOT_MODE_ENABLED": "true", "API_PREFIX": "/secret/"})
    assert s.port == 8080
    assert s.base_url == "http://127.0.0.1:8181"
    assert s.gpt_4_s_new_name == ["gpt-4-s", "gpt-4"]
    assert s.bot_mode is True
    assert s.api_prefix == "secret"


def test_user_file_then_environment(tmp_path):
    path = tmp_path / "my.json"
    path.write_text(json.dumps({"PORT": 1234, "LOG_LEVEL": "debug", "GPT_4_S_New_Name": "gpt-4", "BOT_MODE_ENABLED": True}))
    s = load({"PORT": "4321"}, str(path))
    assert (s.port, s.log_level, s.gpt_4_s_new_name, s.bot_mode) == (4321, "DEBUG", ["gpt-4"], True)


@pytest.mark.parametrize("env, named", [
    ({"PORT": "abc"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"BASE_URL": "127.0.0.1:8181"}, "BASE_URL"),
    ({"NEED_LOG_TO_FILE": "maybe"}, "NEED_LOG_TO_FILE"),
    ({"PROCESS_WORKERS": "0"}, "PROCESS_WORKERS"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"GPT_3_5_NEW_NAME": "gpt-4-s"}, "gpt-4-s"),
    ({"GPT_4_MOBILE_NEW_NAME": "a,a"}, "GPT_4_MOBILE_NEW_NAME"),
    ({"PROXY_API_PREFIX": "前缀"}, "PROXY_API_PREFIX"),
    ({"BASE_URL": "http://例子.cn"}, "BASE_URL"),
])
def test_bad_values_fail_with_a_message_naming_the_setting(env, named):
    with pytest.raises(conf.SettingsError) as e:
        load(env)
    assert named in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_a_user_file_is_refused(tmp_path):
    path = tmp_path / "my.json"
    path.write_text(json.dumps({"PROT": 1}))
    with pytest.raises(conf.SettingsError, match="PROT"):
        load(path=str(path))


def test_summary_masks_keys():
    s = load({"KEY_FOR_GPTS_INFO": "fk-1234567890abcdefXYZ"})
    line = [x for x in s.summary() if x.startswith("KEY_FOR_GPTS_INFO")][0]
    assert "1234567890abcdef" not in line and line.endswith("fk-1…fXYZ")


def test_model_table_maps_aliases_to_upstream_slugs():
    table = ModelTable(load({"GPT_4_S_NEW_NAME": "gpt-4-s,gpt-4", "GPT_3_5_NEW_NAME": "gpt-3.5-turbo"}))
    assert table.resolve("gpt-4").slug == "gpt-4"
    assert table.resolve("gpt-4-mobile").slug == "gpt-4-mobile"
    assert table.resolve("gpt-3.5-turbo").slug == "text-davinci-002-render-sha"
    assert [r.name for r in table.routes()][:4] == ["gpt-4-s", "gpt-4", "gpt-4-mobile", "gpt-3.5-turbo"]
