"""Two transcripts written by hand from the 2025-2026 stream (docs/upstream.md, form 3).

``hello_en_v1_2025.sse`` (English, CRLF, ``\\uXXXX`` escapes): a hidden system root, the user's
echo, python code and its output, then the answer, whose text a patch list appends and takes
back, a bare ``{"v": [...]}``, a metadata-only and a status-only patch before the end; typed
frames between. ``hello_zh_v1_2025.sse`` (Chinese, LF, raw UTF-8 so that splits cut characters):
roots in all three forms (``p``/``o``, ``o`` only, neither), text already in the root, a bare
``{"v": {...}}`` continuing a metadata append. What each renderer shows is written by hand.
"""

import pytest

from tests.helpers import feed_all, read_fixture
from fakeupstream.app import split
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer

EN_ANSWER = '6 × 7 is **42**, as "The Hitchhiker\'s Guide" says.\nAnything else?'
EN = {"markdown": "```python\nprint(6 * 7)\n```\nResult:\n```\n42\n```\n" + EN_ANSWER,
      "bot": EN_ANSWER,
      "bot-plugins": "print(6 * 7)\nResult:\n42\n" + EN_ANSWER}  # bot mode is plain text: no fences
ZH_ANSWER = "你好！我是助手。有什么可以帮你？😊"
ZH = {"markdown": ZH_ANSWER, "bot": ZH_ANSWER, "bot-plugins": ZH_ANSWER}

RENDERERS = {"markdown": MarkdownRenderer, "bot": BotRenderer, "bot-plugins": lambda: BotRenderer(plugin_output=True)}
CASES = [("hello_en_v1_2025.sse", EN), ("hello_zh_v1_2025.sse", ZH)]


def convert(pieces, renderer="markdown"):
    conv = Conversion(RENDERERS[renderer]())
    out = feed_all(conv, pieces)
    assert all(type(x) is str for x in out)
    return "".join(out), conv


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("name, expected", CASES)
def test_transcript_under_random_chunkings(name, expected, renderer):
    data = read_fixture(name)
    for seed in range(40):
        text, conv = convert(split([data], "random:%d:64" % seed), renderer)
        assert text == expected[renderer], seed
        assert conv.outcome() == ("stop", None)
        assert conv.dialect == "v1"
        assert conv.warnings == []


@pytest.mark.parametrize("renderer", ["markdown", "bot"])
@pytest.mark.parametrize("name, expected", CASES)
def test_every_single_byte_split(name, expected, renderer):
    data = read_fixture(name)
    for i in range(len(data) + 1):
        assert convert([data[:i], data[i:]], renderer)[0] == expected[renderer], i


@pytest.mark.parametrize("name, expected", CASES)
def test_byte_by_byte(name, expected):
    text, conv = convert([bytes([b]) for b in read_fixture(name)])
    assert text == expected["markdown"]
    assert conv.conversation_id in ("68a1-en", "7b2c-zh")
