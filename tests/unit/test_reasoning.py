"""Reasoning (docs/upstream-protocol.md 5.3) through the pure pipeline: never part of the answer's
content; as ``Reasoning`` values, in ``<think>`` tags, as plain text in bot mode, or hidden.

The transcripts are written here by hand from section 5 (2025-2026 framing: a root per message,
patches, typed frames), in Chinese and English; the expected texts are written out by hand.
"""

import json
import random

import pytest

from tests.helpers import feed_all
from pgw.converters.events import content_text
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer, Reasoning
from pgw.usage import TokenCounter


def delta(obj):
    return b"event: delta\ndata: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def frame(obj):
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def root(mid, c, content, role="assistant", name=None, metadata=None, channel=None, status="in_progress"):
    message = {"id": mid, "author": {"role": role, "name": name, "metadata": {}}, "create_time": 1.0,
               "content": content, "status": status, "end_turn": None, "weight": 1.0,
               "metadata": metadata or {}, "recipient": "all"}
    if channel:
        message["channel"] = channel
    doc = {"message": message, "conversation_id": "c1", "error": None, "error_code": None}
    # 2025-2026 (5.1): the first root is an add at "", later ones come without p and o
    return delta({"p": "", "o": "add", "v": doc, "c": c} if c == 0 else {"v": doc, "c": c})


def end(*ops):
    return delta({"p": "", "o": "patch", "v": list(ops) + [
        {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
        {"p": "/message/end_turn", "o": "replace", "v": True},
        {"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}, "is_complete": True}}]})


HEAD = [b'event: delta_encoding\ndata: "v1"\n\n',
        frame({"type": "resume_conversation_token", "kind": "conduit", "token": "eyJ.x.y", "conversation_id": "c1"}),
        frame({"type": "input_message", "input_message": {"id": "u1", "author": {"role": "user"},
                                                          "content": {"content_type": "text", "parts": ["6×7?"]}},
               "conversation_id": "c1"})]
TAIL = [frame({"type": "message_marker", "conversation_id": "c1", "message_id": "a1", "marker": "last_token",
               "event": "last"}),
        frame({"type": "message_stream_complete", "conversation_id": "c1"}),
        frame({"type": "title_generation", "title": "乘法", "conversation_id": "c1"}),
        b"data: [DONE]\n\n"]

# gpt-5 thinking, 2026: a preamble, thoughts filled by patches, the recap, the answer.
THOUGHTS = HEAD + [
    root("p1", 0, {"content_type": "text", "parts": [""]}, channel="commentary",
         metadata={"is_thinking_preamble_message": True}),
    delta({"p": "/message/content/parts/0", "o": "append", "v": "我先核对"}),
    delta({"v": "一下。"}),
    end(),
    root("t1", 1, {"content_type": "thoughts", "thoughts": [], "source_analysis_msg_id": "s1"},
         metadata={"reasoning_status": "is_reasoning"}),
    delta({"p": "/message/content/thoughts", "o": "append",
           "v": [{"summary": "计算乘积", "content": "", "chunks": [], "finished": False}]}),
    delta({"p": "/message/content/thoughts/0/content", "o": "append", "v": "6×7"}),
    delta({"v": " = 42。"}),
    delta({"p": "/message/content/thoughts", "o": "append",
           "v": [{"summary": "Checking", "content": "", "chunks": [], "finished": False}]}),
    delta({"p": "/message/content/thoughts/1/content", "o": "append", "v": "42 / 7 = 6, right."}),
    delta({"p": "", "o": "patch", "v": [{"p": "/message/status", "o": "replace", "v": "finished_successfully"}]}),
    root("r1", 2, {"content_type": "reasoning_recap", "content": "已思考 15 秒"},
         metadata={"reasoning_status": "reasoning_ended"}, status="finished_successfully"),
    root("a1", 3, {"content_type": "text", "parts": [""]}, channel="final"),
    delta({"p": "/message/content/parts/0", "o": "append", "v": "答案是 42。"}),
    delta({"v": " The answer is 42."}),
    end(),
] + TAIL
THOUGHTS_REASONING = "我先核对一下。\n\n计算乘积\n\n6×7 = 42。\n\nChecking\n\n42 / 7 = 6, right.\n已思考 15 秒"
THOUGHTS_ANSWER = "答案是 42。 The answer is 42."

# o1 / o3-mini, 2025: a reasoning tool message before the answer.
O1 = HEAD + [
    root("t1", 0, {"content_type": "text", "parts": [""]}, role="tool", name="a8km123",
         metadata={"initial_text": "Reasoning"}),
    delta({"p": "/message/content/parts/0", "o": "append", "v": "**Multiplying**\n\nSix sevens"}),
    delta({"v": " make 42."}),
    delta({"p": "", "o": "patch", "v": [
        {"p": "/message/metadata", "o": "append", "v": {"finished_text": "Reasoned for 7 seconds",
                                                        "finished_duration_sec": 7}},
        {"p": "/message/status", "o": "replace", "v": "finished_successfully"}]}),
    root("a1", 1, {"content_type": "text", "parts": [""]}),
    delta({"p": "/message/content/parts/0", "o": "append", "v": "It is 42."}),
    end(),
] + TAIL
O1_REASONING = "**Multiplying**\n\nSix sevens make 42.\nReasoned for 7 seconds"
O1_ANSWER = "It is 42."

TRANSCRIPTS = {"thoughts": (THOUGHTS, THOUGHTS_REASONING, THOUGHTS_ANSWER), "o1": (O1, O1_REASONING, O1_ANSWER)}


def contents(items):
    """(what the client reads as content, what it reads as reasoning_content, the reasoning counted)."""
    content = "".join(i if type(i) is str else i.text if type(i) is Reasoning and i.inline else "" for i in items)
    field = "".join(i.text for i in items if type(i) is Reasoning and not i.inline)
    counted = "".join(i.text for i in items if type(i) is Reasoning)
    assert all(type(i) in (str, Reasoning) for i in items), items
    return content, field, counted


def convert(events, renderer, pieces=None):
    conv = Conversion(renderer)
    items = feed_all(conv, pieces if pieces is not None else events)
    reason, error = conv.outcome()
    assert error is None and reason == "stop"
    return contents(items)


def expected(mode, reasoning, answer):
    """What a client gets, by renderer mode: (content, reasoning_content, counted reasoning)."""
    if mode == "reasoning_content":
        return answer, reasoning, reasoning
    if mode == "think":
        return "<think>\n%s\n</think>\n\n%s" % (reasoning, answer), "", reasoning
    if mode == "bot-reasoning":  # plain text: no markdown bold either
        plain = reasoning.replace("**", "")
        return "%s\n\n%s" % (plain, answer), "", plain
    return answer, "", ""  # hidden, and bot mode by default


RENDERERS = {
    "reasoning_content": lambda: MarkdownRenderer(),
    "think": lambda: MarkdownRenderer("think"),
    "hidden": lambda: MarkdownRenderer("hidden"),
    "bot": lambda: BotRenderer(),
    "bot-reasoning": lambda: BotRenderer(reasoning_output=True),
}
MODES = pytest.mark.parametrize("mode", sorted(RENDERERS))
NAMES = pytest.mark.parametrize("name", sorted(TRANSCRIPTS))


@MODES
@NAMES
def test_reasoning_goes_where_the_mode_says_and_never_into_the_answer(name, mode):
    events, reasoning, answer = TRANSCRIPTS[name]
    assert convert(events, RENDERERS[mode]()) == expected(mode, reasoning, answer)


@MODES
@NAMES
@pytest.mark.parametrize("seed", range(8))
def test_random_chunkings_give_the_same(name, mode, seed):
    events, reasoning, answer = TRANSCRIPTS[name]
    blob = b"".join(events)
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(blob):
        n = rng.randint(1, 40)
        pieces.append(blob[i:i + n])
        i += n
    assert convert(events, RENDERERS[mode](), pieces) == expected(mode, reasoning, answer)


@pytest.mark.parametrize("mode", ["reasoning_content", "think", "bot-reasoning"])
def test_every_single_byte_split_of_the_o1_transcript(mode):
    events, reasoning, answer = TRANSCRIPTS["o1"]
    blob = b"".join(events)
    for cut in range(1, len(blob)):
        got = convert(events, RENDERERS[mode](), [blob[:cut], blob[cut:]])
        assert got == expected(mode, reasoning, answer), cut


def test_reasoning_arrives_as_it_streams_not_at_the_end():
    conv = Conversion(MarkdownRenderer())
    firsts = []
    for ev in THOUGHTS:
        got = [i for i in conv.feed(ev) if type(i) is Reasoning]
        firsts.extend(i.text for i in got)
    assert firsts[:4] == ["我先核对", "一下。", "\n\n计算乘积", "\n\n6×7"]


def test_thoughts_text_only_grows_at_its_end():
    """The order the upstream fills thoughts in: each state's text is a prefix of the next."""
    states = [[], [{"summary": "计算", "content": ""}], [{"summary": "计算乘积", "content": ""}],
              [{"summary": "计算乘积", "content": "6×7"}], [{"summary": "计算乘积", "content": "6×7 = 42"}],
              [{"summary": "计算乘积", "content": "6×7 = 42"}, {"summary": "", "content": ""}],
              [{"summary": "计算乘积", "content": "6×7 = 42"}, {"summary": "Check", "content": ""}],
              [{"summary": "计算乘积", "content": "6×7 = 42"}, {"summary": "Check", "content": "ok"}]]
    texts = [content_text({"content_type": "thoughts", "thoughts": s}) for s in states]
    for a, b in zip(texts[:-1], texts[1:], strict=True):
        assert b.startswith(a)
    assert texts[-1] == "计算乘积\n\n6×7 = 42\n\nCheck\n\nok"
    assert content_text({"content_type": "reasoning_recap", "content": "Thought for 15s"}) == "Thought for 15s"


def test_an_answer_that_only_thinks_is_empty_when_reasoning_is_hidden():
    events = HEAD + THOUGHTS[3 + 4:3 + 11] + TAIL
    conv = Conversion(MarkdownRenderer("hidden"))
    assert feed_all(conv, events) == []
    reason, error = conv.outcome()
    assert error is not None and error.code == "empty_answer"


def test_think_tags_close_even_when_the_answer_never_comes():
    events = HEAD + THOUGHTS[3 + 4:3 + 11] + TAIL
    content, _, _ = convert(events, MarkdownRenderer("think"))
    assert content == "<think>\n计算乘积\n\n6×7 = 42。\n\nChecking\n\n42 / 7 = 6, right.\n</think>"


def test_private_use_markers_in_reasoning_are_removed():
    events = HEAD + [
        root("t1", 0, {"content_type": "text", "parts": [""]}, role="tool", name="a8km123",
             metadata={"initial_text": "Reasoning"}),
        delta({"p": "/message/content/parts/0", "o": "append", "v": "Docs say so\ue200cite\ue202tu"}),
        delta({"v": "rn0search0\ue201 clearly\ue206."}),
        delta({"p": "/message/status", "o": "replace", "v": "finished_successfully"}),
        root("a1", 1, {"content_type": "text", "parts": [""]}),
        delta({"p": "/message/content/parts/0", "o": "append", "v": "Yes."}),
        end(),
    ] + TAIL
    assert convert(events, MarkdownRenderer()) == ("Yes.", "Docs say so clearly.", "Docs say so clearly.")


def test_reasoning_tokens_are_part_of_the_completion_tokens():
    tokens = TokenCounter()
    usage = tokens.usage([("user", "6×7?")], "It is 42.", "Six sevens make 42.")
    assert usage["completion_tokens_details"] == {"reasoning_tokens": tokens.count("Six sevens make 42.")}
    assert usage["completion_tokens"] == tokens.count("It is 42.") + tokens.count("Six sevens make 42.")
    inline = tokens.usage([("user", "6×7?")], "<think>\nSix sevens make 42.\n</think>\n\nIt is 42.",
                          "Six sevens make 42.", reasoning_in_completion=True)
    assert inline["completion_tokens"] == tokens.count("<think>\nSix sevens make 42.\n</think>\n\nIt is 42.")
    assert inline["completion_tokens_details"]["reasoning_tokens"] == tokens.count("Six sevens make 42.")
    assert tokens.usage([], "hi")["completion_tokens_details"] == {"reasoning_tokens": 0}


def render_calls(renderer, calls):
    for name, *args in calls:
        getattr(renderer, name)(*args)
    renderer.close()
    return contents(renderer.take())


# thinking, a tool run's words, thinking again, the answer (gpt-5 thinks between tool calls)
TWICE = [("reasoning_break",), ("reasoning", "先搜索。"), ("prose", "Let me look."), ("reasoning_break",),
         ("reasoning", "Found it."), ("reasoning_break", True), ("reasoning", "Thought for 3s"), ("prose", "答案。")]


def test_reasoning_that_resumes_after_the_answer_began():
    assert render_calls(MarkdownRenderer(), TWICE) == (
        "Let me look.答案。", "先搜索。\n\nFound it.\nThought for 3s", "先搜索。\n\nFound it.\nThought for 3s")
    assert render_calls(MarkdownRenderer("think"), TWICE)[0] == (
        "<think>\n先搜索。\n</think>\n\nLet me look.\n<think>\nFound it.\nThought for 3s\n</think>\n\n答案。")
    assert render_calls(BotRenderer(reasoning_output=True), TWICE)[0] == (
        "先搜索。\n\nLet me look.\nFound it.\nThought for 3s\n\n答案。")
    assert render_calls(BotRenderer(), TWICE) == ("Let me look.答案。", "", "")


def test_bot_reasoning_drops_markdown_bold_however_it_is_split():
    for cut in range(len("**Planning** it *really*")):
        text = "**Planning** it *really*"
        r = BotRenderer(reasoning_output=True)
        r.reasoning(text[:cut])
        r.reasoning(text[cut:])
        r.prose("Done.")
        r.close()
        assert contents(r.take())[0] == "Planning it *really*\n\nDone.", cut


def test_which_messages_are_reasoning():
    from pgw.converters.answer import is_reasoning
    from pgw.converters.events import Message

    def msg(role="assistant", name=None, recipient="all", content_type="text", channel=None, **metadata):
        m = Message("m", role, name, recipient, content_type)
        m.channel, m.metadata = channel, metadata
        return m
    assert is_reasoning(msg(content_type="thoughts"))
    assert is_reasoning(msg(content_type="reasoning_recap"))
    assert is_reasoning(msg(channel="commentary"))
    assert is_reasoning(msg(is_thinking_preamble_message=True))
    assert is_reasoning(msg("tool", "a8km123"))
    assert is_reasoning(msg("tool", "a8km456", initial_text="Reasoning"))  # the same tool, renamed
    assert not is_reasoning(msg("tool", "web.run", initial_text="Searching the web"))
    assert not is_reasoning(msg("tool", "python"))
    assert not is_reasoning(msg(channel="final"))
    assert not is_reasoning(msg())
    assert not is_reasoning(msg(recipient="python", channel="commentary"))  # a tool call: a block


def test_thoughts_of_any_shape_under_any_chunking_in_every_fake_dialect():
    from hypothesis import given, settings, strategies as st

    from fakeupstream.app import split
    from fakeupstream.script import RENDERERS as STREAMS, Msg, Script

    words = st.text(alphabet="ab 中文。\n😊", max_size=12)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(words, words), min_size=1, max_size=4), st.integers(1, 7), st.integers(0, 10 ** 6))
    def check(thoughts, step, seed):
        parts = [s + "\n\n" + c if s and c else s or c for s, c in thoughts]
        reasoning = "\n\n".join(p for p in parts if p)  # written from the format's description
        for dialect, stream in sorted(STREAMS.items()):
            script = Script([Msg(thoughts=thoughts, step=step), Msg("Thought for 2s", content_type="reasoning_recap"),
                             Msg("答案。", channel="final", end_turn=True)], ascii=False)
            conv = Conversion(MarkdownRenderer())
            got = contents(feed_all(conv, split(stream(script, "c1", []), "random:%d:17" % seed)))
            want = reasoning + "\n" + "Thought for 2s" if reasoning else "Thought for 2s"
            assert got == ("答案。", want, want), dialect
    check()
