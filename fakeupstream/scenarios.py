"""Named answers of the demo upstream.

A demo user picks one with a word in the message (``/code``, ``/search``, ``/long``...); a
test picks one for its key through ``POST /_fake/plan``. Each builds a ``Script`` from the
request so answers can quote what was asked.
"""

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


SCENARIOS = {
    "hello": hello, "long": long, "empty": empty, "stream_error": stream_error, "drop": drop,
    "max_tokens": max_tokens, "blocked": blocked, "code": code, "search": search,
}

# words a demo user can put in a message to pick a scenario
KEYWORDS = {"/code": "code", "/search": "search", "/long": "long", "/error": "stream_error"}


def pick(ask):
    for word, name in KEYWORDS.items():
        if word in ask:
            return name
    return "hello"
