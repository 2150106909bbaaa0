"""Tool answers (code interpreter, browsing, DALL·E, charts, sandbox files) through the pure
pipeline: normal mode and every bot-mode switch combination, under several network chunkings.

Transcripts come from the fake upstream's scenarios (the same streams the e2e tests and the
demo get); expected texts are written out here by hand, piece by piece.
"""

import itertools

import pytest

from tests.helpers import feed_all
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, FetchImage, FetchSandboxFile, MarkdownRenderer
from fakeupstream import scenarios
from fakeupstream.app import split
from fakeupstream.script import legacy_events

URL11 = "https://www.tornadoweb.org/en/stable/releases/v6.4.0.html"
URL3 = "https://www.tornadoweb.org/en/stable/#installation"
URL7 = "https://tornado.readthedocs.io/"

CHUNKINGS = ["event", "whole", "random:1", "random:2", "bytes:5"]

# normal mode, then (plugin, references, markdown image, plain image url) for bot mode
MODES = [None] + list(itertools.product([False, True], repeat=4))


def mode_id(mode):
    if mode is None:
        return "normal"
    return "bot-" + "".join("1" if x else "0" for x in mode)


def renderer_for(mode):
    return MarkdownRenderer() if mode is None else BotRenderer(*mode)


def image_url(file_id):
    return "https://gw.example/images/" + file_id


def run(scenario, mode, chunking="event", fetched=True):
    """The answer's text with every action performed by a stand-in that 'saves' files at
    predictable URLs (``fetched=False``: every fetch fails); also the actions seen."""
    events = legacy_events(scenarios.SCENARIOS[scenario]("", "gpt-4"), "conv-1", [])
    conversion = Conversion(renderer_for(mode))
    items = feed_all(conversion, split(events, chunking))
    texts, actions = [], []
    for item in items:
        if type(item) is str:
            texts.append(item)
            continue
        actions.append(item)
        if type(item) is FetchImage:
            texts.append(item.render(image_url(item.image.file_id) if fetched else None))
        else:
            texts.append(item.render("https://gw.example/images/report.csv" if fetched else None))
    reason, error = conversion.outcome()
    assert error is None and reason == "stop"
    return "".join(texts), actions


def image_text(mode, url):
    if mode is None:
        return "![image](%s)\n[download](%s)\n" % (url, url)
    _plugin, _refs, markdown, plain = mode
    if plain:
        return url + "\n"
    if markdown:
        return "![image](%s)\n" % url
    return ""


def with_plugin(mode, blocks):
    """Tool material as each mode shows it: fenced for web UIs; in bot mode with plugin output
    the same lines without the fences (a chat app shows fences as text); otherwise nothing."""
    if mode is None:
        return blocks
    if not mode[0]:
        return ""
    return "".join(line for line in blocks.splitlines(keepends=True) if not line.startswith("```"))


def file_text(mode, label, url):
    """A file the code wrote, where its link ``[label](sandbox:...)`` stood."""
    if mode is not None and mode[3]:
        return "%s\n%s\n" % (label, url)  # bot mode, plain URLs: its name, then a bare URL on its own line
    return "[%s](%s)" % (label, url)


ALL = pytest.mark.parametrize("mode", MODES, ids=mode_id)
CHUNKED = pytest.mark.parametrize("chunking", CHUNKINGS)


@ALL
@CHUNKED
def test_code_interpreter_two_rounds(mode, chunking):
    blocks = ("```python\nx = 6 * 7\nprint(x)\n```\nResult:\n```\n42\n```\n"
              "```python\nprint(x + 1)\n```\nResult:\n```\n43\n```\n")
    text, actions = run("code_rounds", mode, chunking)
    assert text == with_plugin(mode, blocks) + "结果是 42 和 43。"
    assert actions == []


@ALL
@CHUNKED
def test_browsing_citations(mode, chunking):
    blocks = '```\nsearch("tornado 6.4 release date")\n```\n```\nmclick([0, 3])\n```\n'
    if mode is None:
        prose = ("Tornado 6.4 发布于 2023 年 11 月[[11](%s)]。它需要 Python 3.8+ [[3](%s)] 和 pip，"
                 "文档在 readthedocs[[7](%s)]。旧说法 已过时；括号【注】不是引用。" % (URL11, URL3, URL7))
    elif mode[1]:
        prose = ("Tornado 6.4 发布于 2023 年 11 月[11]。它需要 Python 3.8+ [3] 和 pip，"
                 "文档在 readthedocs[7]。旧说法 已过时；括号【注】不是引用。\n\n"
                 "[11] Tornado 6.4 released %s\n[3] Installation %s\n[7] Tornado docs %s" % (URL11, URL3, URL7))
    else:
        prose = "Tornado 6.4 发布于 2023 年 11 月。它需要 Python 3.8+ 和 pip，文档在 readthedocs。旧说法 已过时；括号【注】不是引用。"
    text, _ = run("browse", mode, chunking)
    assert text == with_plugin(mode, blocks) + prose


DALLE_BLOCK = '```json\n{"size": "1024x1024", "prompt": "A watercolor otter floating on calm water at sunset"}\n```\n'


@ALL
@CHUNKED
def test_dalle_one_image(mode, chunking):
    text, actions = run("dalle", mode, chunking)
    assert text == (with_plugin(mode, DALLE_BLOCK) + image_text(mode, image_url("file-dalle1png"))
                    + "这是你要的图片。")


@ALL
@CHUNKED
def test_dalle_two_images(mode, chunking):
    text, actions = run("dalle_two", mode, chunking)
    assert text == (with_plugin(mode, DALLE_BLOCK) + image_text(mode, image_url("file-dalle1png"))
                    + image_text(mode, image_url("file-dalle2webp")) + "这是你要的图片。")


@ALL
@pytest.mark.parametrize("chunking", ["event", "random:3"])
def test_dalle_images_carry_the_revised_prompt_and_are_only_fetched_when_shown(mode, chunking):
    _, actions = run("dalle_two", mode, chunking)
    shown = mode is None or mode[2] or mode[3]
    assert [(a.image.file_id, a.image.prompt) for a in actions] == (
        [("file-dalle1png", "A watercolor otter floating on calm water at sunset"),
         ("file-dalle2webp", "A watercolor otter floating on calm water at sunset")] if shown else [])


@ALL
@CHUNKED
def test_chart_from_code(mode, chunking):
    blocks = ("```python\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n```\n"
              "Result:\n```\n<<ImageDisplayed>>\n```\n")
    text, _ = run("chart", mode, chunking)
    assert text == with_plugin(mode, blocks) + image_text(mode, image_url("file-chart1png")) + "图表已经画好。"


@ALL
@CHUNKED
def test_sandbox_file_link(mode, chunking):
    blocks = "```python\nimport pandas as pd\npd.DataFrame({'a': [1, 2]}).to_csv('/mnt/data/report.csv')\n```\n"
    text, actions = run("sandbox_file", mode, chunking)
    assert text == (with_plugin(mode, blocks) + "文件在这里："
                    + file_text(mode, "report.csv", "https://gw.example/images/report.csv") + "，请下载。")
    assert len(actions) == 1 and type(actions[0]) is FetchSandboxFile
    assert actions[0].file.path == "/mnt/data/report.csv"


def test_sandbox_file_is_fetched_for_the_message_that_links_it():
    script = scenarios.sandbox_file("", "gpt-4")
    conversion = Conversion(MarkdownRenderer())
    items = conversion.feed(b"".join(legacy_events(script, "conv-1", []))) + conversion.close()
    [action] = [i for i in items if type(i) is FetchSandboxFile]
    assert action.file.message_id == script.messages[-1].id
    assert conversion.conversation_id == "conv-1"


@pytest.mark.parametrize("mode", [None, (False, False, True, False), (True, True, False, True)], ids=mode_id)
def test_failed_downloads_show_a_short_notice(mode):
    text, _ = run("dalle", mode, fetched=False)
    assert "(an image could not be fetched from the upstream)\n" in text
    assert text.endswith("这是你要的图片。")
    text, _ = run("sandbox_file", mode, fetched=False)
    if mode is not None and mode[3]:
        assert text.endswith("文件在这里：report.csv\n(a file could not be fetched from the upstream)\n，请下载。")
    else:
        assert text.endswith("文件在这里：[report.csv](#file-unavailable)，请下载。")
