"""Both upstream dialects of every scenario give the client the same answer.

The fake upstream renders one script of messages into the legacy stream (whole messages) and
into the v1 stream (patches), in each v1 form (2025-2026 and early 2024). Whatever the network chunking, the gateway's conversion of both
must produce the same text, actions and outcome, whether the JSON escapes non-ASCII characters
(as the real upstream does) or carries them as raw UTF-8 that chunks can split. The loop runs over ``SCENARIOS`` itself, so a
scenario added later is covered without touching this file, and over ``RENDERERS``: a new
output mode (bot mode) only needs adding there.
"""


import pytest

from tests.helpers import feed_all
from pgw.converters.payload import upstream_message
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer, Reasoning
from fakeupstream.app import split
from fakeupstream.scenarios import SCENARIOS
from fakeupstream.script import RENDERERS as FORMS
from fakeupstream.script import legacy_events, v1_events

# name -> a fresh renderer for one answer (Gateway.renderer builds one of these per request)
RENDERERS = {
    "markdown": MarkdownRenderer,
    "bot-plain": BotRenderer,
    "bot-everything": lambda: BotRenderer(plugin_output=True, reference_output=True, plain_image_url=True),
}

SEEDS = range(6)


def convert(blob, renderer, seed):
    """The client-visible result of one upstream body cut into random network chunks."""
    conv = Conversion(renderer())
    items = feed_all(conv, split([blob], "random:%d:40" % seed))
    text = "".join(item if type(item) is str else "<Reasoning %r>" % (item,) if type(item) is Reasoning
                   else "<%s %s>" % (type(item).__name__, item.render("https://files.example/x"))
                   for item in items)
    reason, error = conv.outcome()
    return conv.dialect, text, reason, error and (error.status, error.code)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_legacy_and_v1_streams_convert_to_the_same_answer(scenario, renderer):
    user = [upstream_message("u-1", "user", "你好 /code /search")]
    script = SCENARIOS[scenario]("你好", "gpt-4")
    make = RENDERERS[renderer]
    expected = None
    for ascii in (True, False):
        script.ascii = ascii
        legacy = b"".join(legacy_events(script, "conv-1", user))
        expected = expected or convert(legacy, make, 0)
        assert expected[0] == "legacy"
        for seed in SEEDS:
            assert convert(legacy, make, seed) == expected, "scenario %s, ascii %s, seed %d" % (scenario, ascii, seed)
        # every v1 form the fake upstream speaks: 2025-2026 (the default) and early 2024
        for form in sorted(set(FORMS) - {"legacy"}):
            v1 = b"".join(FORMS[form](script, "conv-1", user))
            for seed in SEEDS:
                got = convert(v1, make, seed)
                assert got[0] == "v1"
                assert got[1:] == expected[1:], "scenario %s, form %s, ascii %s, seed %d" % (scenario, form, ascii, seed)


def test_the_v1_stream_is_smaller_for_long_answers():
    """The point of the v1 dialect: bytes grow with the answer, not with its square."""
    script = SCENARIOS["long"]("", "gpt-4")
    legacy = sum(map(len, legacy_events(script, "c", [])))
    v1 = sum(map(len, v1_events(script, "c", [])))
    assert v1 * 10 < legacy
