"""Named answers of the demo upstream.

A demo user picks one with a word in the message (``/code``, ``/code2``, ``/search``,
``/browse``, ``/draw``, ``/draw2``, ``/chart``, ``/file``, ``/long``, ``/error``, ``/think``
and ``/o1`` (a thinking model, 2025-2026 and 2025 forms), ``/cite`` (2025-2026 citations),
``/blocked``, ``/limit``, ``/image`` (the 2025 image tool: the picture comes seconds after the
stream), ``/handoff`` (the answer is handed off to the resume endpoint), ``/cut`` (an answer cut
at max_tokens that continues); a request that mentions DALL·E, as the images endpoint's does,
draws; one with ``system_hints: ["picture_v2"]`` and nothing else uses the image tool); a
test picks one for its key through ``POST /_fake/plan``. Each builds a ``Script`` from the
request so answers can quote what was asked.
"""

import re
import uuid

from fakeupstream.files import MISSING_PREFIX
from fakeupstream.script import Msg, Script

HELLO = "你好！这是演示上游的回答。Hello from the demo upstream: "


def hello(ask, model):
    return Script([Msg(HELLO + "you said “%s”." % ask, step=3)], model)


def long(ask, model, chars=4000):
    base = "长回答 long answer 的一部分，mixed 中文 and ASCII. "
    text = (base * (chars // len(base) + 1))[:chars]
    return Script([Msg(text, step=7)], model)


def empty(ask, model):
    return Script([Msg("", step=1)], model)


def stream_error(ask, model):
    return Script([Msg("我正在回答，但是", step=2, status="in_progress")], model,
                  error="Something went wrong while generating the response.", done=True)


def drop(ask, model):
    """Text, then the connection drops (the app stops before the end)."""
    return Script([Msg("这段回答会在中途断开 and never finishes", step=3, status="in_progress")], model, done=False)


def max_tokens(ask, model):
    return Script([Msg("这段回答被截断了 because it hit the limit",
                       metadata={"finish_details": {"type": "max_tokens"}, "is_complete": False})], model)


def blocked(ask, model):
    return Script([Msg("这段回答被审核拦截。")], model, blocked=True)


def code(ask, model):
    return Script([
        Msg("import math\nprint(math.pi)", recipient="python", content_type="code", step=5),
        Msg("3.141592653589793", role="tool", name="python", content_type="execution_output", step=50,
            metadata={"aggregate_result": {"status": "success", "code": "import math\nprint(math.pi)",
                                           "messages": [], "final_expression_output": None}}),
        Msg("圆周率 π 约等于 3.14159。", step=4, end_turn=True),
    ], model)


def search(ask, model):
    answer = "Tornado 6.4 发布于 2023 年 11 月【11†source】。"
    start = answer.index("【")
    return Script([
        Msg('search("tornado 6.4 release date")', recipient="browser", content_type="code", step=6),
        Msg("# 【0†Tornado 6.4 released†www.tornadoweb.org】\nTornado 6.4 was released...", role="tool",
            name="browser", content_type="tether_browsing_display", step=100),
        Msg(answer, step=3, end_turn=True, metadata={"citations": [{
            "start_ix": start, "end_ix": len(answer) - 1, "citation_format_type": "tether_og",
            "metadata": {"type": "webpage", "title": "Tornado 6.4 released",
                         "url": "https://www.tornadoweb.org/en/stable/releases/v6.4.0.html",
                         "text": "", "pub_date": None,
                         "extra": {"cited_message_idx": 11, "evidence_text": "source"}}}]}),
    ], model)


def code_rounds(ask, model):
    """Code interpreter with two code/run rounds before the answer."""
    return Script([
        Msg("x = 6 * 7\nprint(x)", recipient="python", content_type="code", step=5),
        Msg("42", role="tool", name="python", content_type="execution_output", step=50,
            metadata={"aggregate_result": {"status": "success", "messages": []}}),
        Msg("print(x + 1)", recipient="python", content_type="code", step=4),
        Msg("43", role="tool", name="python", content_type="execution_output", step=50,
            metadata={"aggregate_result": {"status": "success", "messages": []}}),
        Msg("结果是 42 和 43。", step=3, end_turn=True),
    ], model)


def _citation(text, marker, number, title, url):
    start = text.index(marker)
    return {"start_ix": start, "end_ix": start + len(marker), "citation_format_type": "tether_og",
            "metadata": {"type": "webpage", "title": title, "url": url, "text": "", "pub_date": None,
                         "extra": {"cited_message_idx": number, "evidence_text": "source"}}}


BROWSE_ANSWER = ("Tornado 6.4 发布于 2023 年 11 月【11†source】。它需要 Python 3.8+ 【3†来源】 和 pip，"
                 "文档在 readthedocs【7†source】。旧说法 【9†source】 已过时；括号【注】不是引用。")


def browse(ask, model):
    """Browsing with three citations: 【3†来源】 arrives over three events, 【9†source】 has no
    source, and 【注】 is an ordinary bracket."""
    text = BROWSE_ANSWER
    citations = [
        _citation(text, "【11†source】", 11, "Tornado 6.4 released", "https://www.tornadoweb.org/en/stable/releases/v6.4.0.html"),
        _citation(text, "【3†来源】", 3, "Installation", "https://www.tornadoweb.org/en/stable/#installation"),
        _citation(text, "【7†source】", 7, "Tornado docs", "https://tornado.readthedocs.io/"),
    ]
    split = text.index("【3†来源】")
    cuts = sorted(set(list(range(5, split, 5)) + [split + 2, split + 4]
                      + list(range(split + 8, len(text), 6))))
    return Script([
        Msg('search("tornado 6.4 release date")', recipient="browser", content_type="code", step=6),
        Msg("# 【0†Tornado 6.4 released†www.tornadoweb.org】\nTornado 6.4 was released...", role="tool",
            name="browser", content_type="tether_browsing_display", step=100),
        Msg("mclick([0, 3])", recipient="browser", content_type="code", step=6),
        Msg("Tornado 6.4 requires Python 3.8", role="tool", name="browser", content_type="tether_quote",
            step=100, extra_content={"url": "https://www.tornadoweb.org/", "domain": "www.tornadoweb.org",
                                     "title": "Tornado"}),
        Msg(text, cuts=cuts, end_turn=True, metadata={"citations": citations}),
    ], model)


def _image_part(file_id, prompt):
    return {"content_type": "image_asset_pointer", "asset_pointer": "file-service://" + file_id,
            "size_bytes": 74, "width": 8, "height": 8, "fovea": 512,
            "metadata": {"dalle": {"gen_id": "gen-" + file_id[-6:], "prompt": prompt, "seed": 42,
                                   "serialization_title": "DALL-E generation metadata"}}}


DALLE_FILES = ("file-dalle1png", "file-dalle2webp", "file-dalle3png", "file-dalle4png")
REVISED = "A watercolor otter floating on calm water at sunset"


def dalle(ask, model, images=None, missing=False):
    """DALL·E: the prompt JSON, the tool's note then its images, then the assistant's words.

    The number of images is ``images``, else what the request asks for ("Number of images: N"),
    else one. ``missing``: the first image's file cannot be downloaded."""
    if images is None:
        m = re.search(r"Number of images: ([1-4])", ask)
        images = int(m.group(1)) if m else 1
    files = list(DALLE_FILES[:images])
    if missing:
        files[0] = MISSING_PREFIX + "dalle"
    prompt = '{"size": "1024x1024", "prompt": "%s"}' % REVISED
    return Script([
        Msg(prompt, recipient="dalle.text2im", content_type="code", step=9),
        Msg("DALL·E displayed %d images." % images, role="tool", name="dalle.text2im",
            content_type="multimodal_text", step=100,
            final_parts=[_image_part(f, REVISED) for f in files]),
        Msg("这是你要的图片。", step=3, end_turn=True),
    ], model)


def dalle_two(ask, model):
    return dalle(ask, model, images=2)


def dalle_missing(ask, model):
    return dalle(ask, model, images=1, missing=True)


def no_image(ask, model):
    """Asked to draw, the model declines in words."""
    return Script([Msg("抱歉，我不能画这个。I can't draw that.", step=4, end_turn=True)], model)


CHART_FILE = "file-chart1png"


def chart(ask, model):
    """Code that displays a chart: the image comes in aggregate_result."""
    code_text = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    return Script([
        Msg(code_text, recipient="python", content_type="code", step=8),
        Msg("<<ImageDisplayed>>", role="tool", name="python", content_type="execution_output", step=50,
            metadata={"aggregate_result": {"status": "success", "code": code_text, "messages": [
                {"message_type": "image", "time": 1703062015.5, "sender": "server",
                 "image_url": "file-service://" + CHART_FILE, "width": 8, "height": 8}]}}),
        Msg("图表已经画好。", step=3, end_turn=True),
    ], model)


def sandbox_file(ask, model):
    """Code that writes a file, linked in the answer as (sandbox:/mnt/data/report.csv)."""
    code_text = "import pandas as pd\npd.DataFrame({'a': [1, 2]}).to_csv('/mnt/data/report.csv')"
    return Script([
        Msg(code_text, recipient="python", content_type="code", step=10),
        Msg("", role="tool", name="python", content_type="execution_output", step=50,
            metadata={"aggregate_result": {"status": "success", "messages": []}}),
        Msg("文件在这里：[report.csv](sandbox:/mnt/data/report.csv)，请下载。", step=4, end_turn=True),
    ], model)


# Thinking models (docs/upstream-protocol.md 5.3)

THINK_PREAMBLE = "我先核对一下数字。"
THINK_THOUGHTS = [("分析问题", "用户问 6×7 等于多少。"),
                  ("Computing the product", "6 × 7 = 42; checking: 42 / 7 = 6.")]
THINK_RECAP = "已思考 15 秒"
THINK_ANSWER = "6 × 7 = 42。The answer is 42."


def think(ask, model):
    """gpt-5 thinking (mid-2025 on): a commentary preamble, a thoughts message filled by
    patches, the recap, then the answer on the final channel."""
    return Script([
        Msg(THINK_PREAMBLE, channel="commentary", step=4, start_metadata={"is_thinking_preamble_message": True}),
        Msg(thoughts=THINK_THOUGHTS, step=6, start_metadata={"reasoning_status": "is_reasoning"}),
        Msg(THINK_RECAP, content_type="reasoning_recap", step=100,
            start_metadata={"reasoning_status": "reasoning_ended"}),
        Msg(THINK_ANSWER, channel="final", step=5, end_turn=True),
    ], model)


O1_REASONING = "**Planning the answer**\n\nThe user greets me in two languages; a short reply in both fits."
O1_FINISHED = "Reasoned for 7 seconds"
O1_ANSWER = "Hello! 你好！很高兴见到你。"


def o1(ask, model):
    """o1 / o3-mini (2025): a reasoning tool message before the answer."""
    return Script([
        Msg(O1_REASONING, role="tool", name="a8km123", step=8, start_metadata={"initial_text": "Reasoning"},
            metadata={"finished_text": O1_FINISHED, "finished_duration_sec": 7}),
        Msg(O1_ANSWER, step=4, end_turn=True),
    ], model)


# 2025-2026 citations (docs/upstream-protocol.md 5.4)

CITE_URL0 = "https://www.tornadoweb.org/en/stable/releases/v6.4.0.html"
CITE_URL1 = "https://www.tornadoweb.org/en/stable/#installation"
CITE_URL2 = "https://tornado.readthedocs.io/"
CITE_TEXT = ("Tornado 6.4 于 2023 年 11 月发布。\ue200cite\ue202turn0search0\ue201 它运行在 "
             "\ue200entity\ue202[\"software\",\"Python\",\"programming language\"]\ue201 上，"
             "\ue203也支持 asyncio\ue204\ue200cite\ue202turn0search1\ue202turn0news2\ue201。"
             "旧说法\ue200cite\ue202turn0search9\ue201已过时。\ue206")
CITE_REFERENCES = [
    {"marker": "\ue200cite\ue202turn0search0\ue201", "type": "grouped_webpages",
     "items": [{"title": "Tornado 6.4 released", "url": CITE_URL0, "attribution": "tornadoweb.org",
                "pub_date": None, "refs": [{"turn_index": 0, "ref_type": "search", "ref_index": 0}]}],
     "alt": "([tornadoweb.org](%s))" % CITE_URL0, "safe_urls": [CITE_URL0]},
    {"marker": "\ue200entity\ue202[\"software\",\"Python\",\"programming language\"]\ue201", "type": "entity",
     "alt": "Python", "name": "Python"},
    {"marker": "\ue200cite\ue202turn0search1\ue202turn0news2\ue201", "type": "grouped_webpages",
     "items": [{"title": "Installation", "url": CITE_URL1, "attribution": "Tornado"},
               {"title": "Tornado docs", "url": CITE_URL2, "attribution": "Read the Docs"}]},
    {"marker": "\ue200cite\ue202turn0search9\ue201", "type": "hidden"},
    {"type": "sources_footnote", "sources": [
        {"title": "Tornado 6.4 released", "url": CITE_URL0, "attribution": "tornadoweb.org"},
        {"title": "Tornado docs", "url": CITE_URL2, "attribution": "Read the Docs"}]},
]


def cite(ask, model, lag=9, live=True, step=5):
    """A search answer with a citation, an entity, a citation of two sources, a hidden one and a
    source list; markers split over events (``step``); each reference filled in ``lag``
    characters after its marker ends (negative: before the marker arrives)."""
    return Script([
        Msg('{"search_query": [{"q": "tornado 6.4 release"}]}', recipient="web.run", content_type="code", step=9),
        Msg("", role="tool", name="web.run", step=50, metadata={"search_result_groups": [
            {"domain": "tornadoweb.org", "entries": [
                {"url": CITE_URL0, "title": "Tornado 6.4 released", "snippet": "Tornado 6.4.0 ...",
                 "attribution": "tornadoweb.org"}]}]}),
        Msg(CITE_TEXT, step=step, end_turn=True, references=CITE_REFERENCES, refs_lag=lag, refs_live=live),
    ], model)


def cite_same_list(ask, model):
    """References patched in the same list as the marker's last character."""
    return cite(ask, model, lag=0, live=True, step=3)


def cite_before(ask, model):
    """References known before their markers arrive."""
    return cite(ask, model, lag=-40, live=False, step=7)


def usage_limit(ask, model):
    """The account's cap is hit: an in-stream error with error_code usage_limit (5.2)."""
    return Script([], model, error="You've reached our limit of messages per hour. Please try again later.",
                  error_code="usage_limit")


# The 2025 image tool (gpt-4o / gpt-image, docs/upstream-protocol.md 5.5). Its pictures live at
# sediment:// pointers fetched through the conversation; a fresh id per answer, so two answers'
# pictures differ (fakeupstream/files.py colours a PNG by its id).
IMAGE_TOOL = "t2uay3k.sj1i4kz"
IMAGE_PROMPT = "A watercolor otter floating on calm water at sunset, 1024x1024"
IMAGE_QUOTA_TEXT = ("You've hit the Free plan limit for image generation requests. You can create more images "
                    "when the limit resets in 23 hours and 59 minutes.")
IMAGE_DONE_TEXT = "图片画好了。Here is your otter."


def _sediment_part(file_id):
    return {"content_type": "image_asset_pointer", "asset_pointer": "sediment://" + file_id,
            "size_bytes": 74, "width": 8, "height": 8,
            "metadata": {"dalle": None, "generation": {"gen_id": "gen-" + file_id[-6:], "orientation": "square"}}}


def _image_call():
    return Msg('{"prompt": "%s", "size": "1024x1024", "n": 1}' % IMAGE_PROMPT, recipient=IMAGE_TOOL,
               content_type="code", step=9)


def _placeholder(task):
    return Msg("Processing image\n\nLots of people are creating images right now, so this might take a bit.",
               role="tool", name=IMAGE_TOOL, content_type="text", step=200,
               metadata={"image_gen_async": True, "image_gen_task_id": task, "async_task_type": "image_gen"})


def image_gen(ask, model, delay=5.0, text_after=True, pictures=1, dropped=False):
    """The image tool, as live accounts answer: the SSE ends at the placeholder; the picture
    shows up in ``GET conversation/{id}`` ``delay`` seconds later as an update of the placeholder
    (``script.later``), followed by the assistant's words when ``text_after``. ``dropped``: the
    connection drops before the stream's end."""
    task = "task_" + uuid.uuid4().hex[:12]
    placeholder = _placeholder(task)
    script = Script([_image_call(), placeholder], model, done=not dropped)
    done = Msg("", role="tool", name=IMAGE_TOOL, content_type="multimodal_text",
               final_parts=[_sediment_part("file_0000%s" % uuid.uuid4().hex[:24]) for _ in range(pictures)],
               metadata={"image_gen_async": True, "image_gen_task_id": task, "async_task_type": "image_gen",
                         "image_gen_title": "Otter at sunset"})
    done.id = placeholder.id
    later = [done]
    if text_after:
        later.append(Msg(IMAGE_DONE_TEXT, end_turn=True))
    script.later = {"delay": float(delay), "messages": later}
    return script


def image_gen_inline(ask, model):
    """The image tool's picture patched into the placeholder inside the SSE itself."""
    task = "task_" + uuid.uuid4().hex[:12]
    return Script([
        _image_call(),
        Msg("", role="tool", name=IMAGE_TOOL, content_type="multimodal_text",
            final_parts=[_sediment_part("file_0000%s" % uuid.uuid4().hex[:24])],
            metadata={"image_gen_async": True, "image_gen_task_id": task, "async_task_type": "image_gen"}),
        Msg(IMAGE_DONE_TEXT, step=4, end_turn=True),
    ], model)


def image_quota(ask, model):
    """An account out of image quota: the tool answers with a system_error."""
    return Script([
        _image_call(),
        Msg(IMAGE_QUOTA_TEXT, role="tool", name=IMAGE_TOOL, content_type="system_error", step=200,
            extra_content={"name": "ChatGPTAgentToolRateLimitException"}),
        Msg("I can't create more images right now.", step=5, end_turn=True),
    ], model)


HANDOFF_TEXT = "这是交给另一端点完成的回答。The answer came from the resumed stream, whole and exact."


def handoff(ask, model, resume=True, delay=1.0):
    """A turn handed off (5.6): the POST's SSE carries only the resume token and
    ``stream_handoff``; ``POST f/conversation/resume`` streams the answer (``resume=False``:
    it is refused, and the answer only shows up finished in ``GET conversation/{id}`` after
    ``delay`` seconds)."""
    script = Script([Msg(HANDOFF_TEXT, step=6, end_turn=True)], model)
    script.handoff = {"resume": bool(resume), "delay": float(delay)}
    return script


def handoff_refused(ask, model, delay=1.0):
    return handoff(ask, model, resume=False, delay=delay)


CUT_PARTS = ("第一段：这个回答很长，", "第二段：被截断后继续，", "第三段：终于写完了。The end.")


def cut(ask, model, same_id=True, parts=CUT_PARTS):
    """An answer cut at max_tokens that ``"action": "continue"`` carries on, part by part
    (``script.continuations``); ``same_id``: the continuation streams the same message again
    (its whole text so far, then more), else a new message with only the new text."""
    last = len(parts) == 1
    first = Msg(parts[0], step=4, end_turn=True if last else None,
                metadata={} if last else {"finish_details": {"type": "max_tokens"}, "is_complete": False})
    script = Script([first], model)
    script.continuations = {"parts": list(parts[1:]), "same_id": bool(same_id)}
    return script


def cut_new_id(ask, model):
    return cut(ask, model, same_id=False)


SCENARIOS = {
    "hello": hello, "long": long, "empty": empty, "stream_error": stream_error, "drop": drop,
    "max_tokens": max_tokens, "blocked": blocked, "code": code, "search": search,
    "code_rounds": code_rounds, "browse": browse, "dalle": dalle, "dalle_two": dalle_two,
    "dalle_missing": dalle_missing, "no_image": no_image, "chart": chart, "sandbox_file": sandbox_file,
    "think": think, "o1": o1, "cite": cite, "cite_same_list": cite_same_list, "cite_before": cite_before,
    "usage_limit": usage_limit,
    "image_gen": image_gen, "image_gen_inline": image_gen_inline, "image_quota": image_quota,
    "handoff": handoff, "handoff_refused": handoff_refused, "cut": cut, "cut_new_id": cut_new_id,
}

# words a demo user can put in a message to pick a scenario (longer words first: "/code2"
# contains "/code")
KEYWORDS = {"/code2": "code_rounds", "/code": "code", "/search": "search", "/browse": "browse",
            "/draw2": "dalle_two", "/draw": "dalle", "/chart": "chart", "/file": "sandbox_file",
            "/long": "long", "/error": "stream_error", "/think": "think", "/o1": "o1", "/cite": "cite",
            "/blocked": "blocked", "/limit": "usage_limit", "/image": "image_gen", "/handoff": "handoff",
            "/cut": "cut"}


def pick(ask, hints=()):
    for word, name in KEYWORDS.items():
        if word in ask:
            return name
    if "dall" in ask.lower():
        return "dalle"  # asked to draw (the images endpoint says DALL·E in its prompt)
    if "picture_v2" in hints:
        return "image_gen"  # the image tool asked for (gpt-image-* at the images endpoint)
    return "hello"
