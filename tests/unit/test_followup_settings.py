"""The settings of answers that finish elsewhere: defaults as documented, bad values refused."""

import pytest

from pgw.conf import settings as conf


def test_defaults_are_the_documented_ones():
    s = conf.load(None, environ={})
    assert (s.image_model, s.image_poll_interval, s.image_wait_timeout) == ("gpt-4o", 3, 180)
    assert (s.handoff_wait_timeout, s.auto_continue) == (600, 3)


def test_short_intervals_for_tests_and_0_turns_continue_off():
    s = conf.load(None, environ={"IMAGE_POLL_INTERVAL": "0.1", "IMAGE_WAIT_TIMEOUT": "0.5", "AUTO_CONTINUE": "0"})
    assert (s.image_poll_interval, s.image_wait_timeout, s.auto_continue) == (0.1, 0.5, 0)


@pytest.mark.parametrize("env, named", [
    ({"IMAGE_MODEL": "  "}, "IMAGE_MODEL"),
    ({"IMAGE_POLL_INTERVAL": "0"}, "IMAGE_POLL_INTERVAL"),
    ({"IMAGE_WAIT_TIMEOUT": "soon"}, "IMAGE_WAIT_TIMEOUT"),
    ({"HANDOFF_WAIT_TIMEOUT": "-1"}, "HANDOFF_WAIT_TIMEOUT"),
    ({"AUTO_CONTINUE": "1.5"}, "AUTO_CONTINUE"),
    ({"AUTO_CONTINUE": "99"}, "AUTO_CONTINUE"),
])
def test_bad_values_name_the_setting(env, named):
    with pytest.raises(conf.SettingsError) as e:
        conf.load(None, environ=env)
    assert named in str(e.value)
