"""BOT_MODE's renderer stage on hand-made calls: what a chat-app user would read.

A test writes what the answer stage would pass on as a list: a ``str`` is prose, ``Cite``,
``Image`` and ``SandboxFile`` values are themselves, and ``BlockOpen`` / ``BlockText`` /
``BlockClose`` stand for the block calls. ``render`` makes the calls and reads the result.
"""

from pgw.converters.events import Cite, Image, SandboxFile
from pgw.converters.render import BotRenderer, FetchImage, MarkdownRenderer


def BlockOpen(kind, language=None):
    return lambda r: r.block_open(kind, language)


def BlockText(text):
    return lambda r: r.block_text(text)


def BlockClose(kind):
    return lambda r: r.block_close(kind)


_CALL = {str: "prose", Cite: "cite", Image: "image", SandboxFile: "sandbox_file"}


def play(renderer, calls):
    """Make the calls on ``renderer`` and take what it wrote."""
    for c in calls:
        if callable(c):
            c(renderer)
        else:
            getattr(renderer, _CALL[type(c)])(c)
    return renderer.take()


def render(renderer, calls, url="https://gw/images/a.png"):
    out = play(renderer, calls)
    renderer.close()
    out += renderer.take()
    return "".join(x if type(x) is str else x.render(url) for x in out)


def test_plugin_output_off_drops_tool_material_and_its_fences():
    segs = [BlockOpen("code", "python"), BlockText("print(1)"), BlockClose("code"),
            BlockOpen("output"), BlockText("1"), BlockClose("output"), "答案是 1。"]
    assert render(BotRenderer(), segs) == "答案是 1。"


def test_plugin_output_on_is_plain_text_without_fences():
    segs = ["我来算一下。", BlockOpen("code", "python"), BlockText("print(1)"), BlockClose("code"),
            BlockOpen("output"), BlockText("1"), BlockClose("output"), "答案是 1。"]
    assert render(BotRenderer(plugin_output=True), segs) == "我来算一下。\nprint(1)\nResult:\n1\n答案是 1。"
    assert render(MarkdownRenderer(), segs) == "我来算一下。\n```python\nprint(1)\n```\nResult:\n```\n1\n```\n答案是 1。"


def test_vanishing_markers_leave_no_double_spaces():
    segs = ["see ", Cite(1, "A", "https://a"), " and ", Cite(2, "B", "https://b"), " ",
            Cite(3, None, None), " done", Cite(4, "D", "https://d"), "."]
    assert render(BotRenderer(), segs) == "see and done."


def test_references_are_numbered_and_listed_once_at_the_end():
    segs = ["a", Cite(11, "Title A", "https://a"), " b", Cite(2, "", "https://b"),
            " again", Cite(11, "Title A", "https://a"), " gone ", Cite(9, None, None), " end"]
    assert render(BotRenderer(reference_output=True), segs) == (
        "a[11] b[2] again[11] gone end\n\n[11] Title A https://a\n[2] https://b")


def test_no_source_list_without_citations():
    assert render(BotRenderer(reference_output=True), ["plain answer\n"]) == "plain answer\n"


def test_image_switches():
    segs = ["look:", Image("file-1"), "nice"]
    assert render(BotRenderer(markdown_image=True), segs) == "look:\n![image](https://gw/images/a.png)\nnice"
    assert render(BotRenderer(markdown_image=False, plain_image_url=True), segs) == "look:\nhttps://gw/images/a.png\nnice"
    assert render(BotRenderer(markdown_image=True, plain_image_url=True), segs) == "look:\nhttps://gw/images/a.png\nnice"
    assert render(BotRenderer(markdown_image=False, plain_image_url=False), segs) == "look:nice"


def test_no_image_output_means_nothing_to_fetch():
    out = play(BotRenderer(markdown_image=False, plain_image_url=False), [Image("file-1")])
    assert out == []
    out = play(BotRenderer(), [Image("file-1")])
    assert [type(x) for x in out] == [FetchImage]


def test_failed_image_is_a_short_notice_in_bot_mode_too():
    assert render(BotRenderer(), [Image("file-1")], url=None) == "(an image could not be fetched from the upstream)\n"


def test_sandbox_links_keep_working_in_bot_mode():
    segs = ["文件：[x.csv]", SandboxFile("/mnt/data/x.csv", "m1"), "，请下载。"]
    assert render(BotRenderer(), segs, url="https://gw/images/x.csv") == "文件：[x.csv](https://gw/images/x.csv)，请下载。"


def test_files_the_code_wrote_are_bare_urls_when_plain_image_urls_are_on():
    segs = ["文件：[x.csv]", SandboxFile("/mnt/data/x.csv", "m1"), "，请下载。"]
    got = render(BotRenderer(markdown_image=False, plain_image_url=True), segs, url="https://gw/images/x.csv")
    assert got == "文件：[x.csv]\nhttps://gw/images/x.csv\n，请下载。"
    got = render(BotRenderer(plain_image_url=True), ["File: ", SandboxFile("/mnt/data/x.csv", "m1")], url=None)
    assert got == "File: \n(a file could not be fetched from the upstream)\n"


def test_markdown_renderer_drops_source_less_markers_without_double_spaces():
    segs = ["old ", Cite(9, None, None), " claim", Cite(1, "", ""), Cite(2, "t", "https://b")]
    assert render(MarkdownRenderer(), segs) == "old claim[1][[2](https://b)]"


def test_prose_around_a_hidden_tool_run_does_not_run_together():
    segs = ["我来算一下。", BlockOpen("code", "python"), BlockText("6*7"), BlockClose("code"),
            BlockOpen("output"), BlockText("42"), BlockClose("output"), "结果是 42。"]
    assert render(BotRenderer(), segs) == "我来算一下。\n结果是 42。"
    # already on a new line: no extra blank line
    assert render(BotRenderer(), ["Let me check.\n"] + segs[1:]) == "Let me check.\n结果是 42。"
