"""Review of issue 11: v1 streams that docs/upstream-protocol.md section 5 allows and the decoder
got wrong, each written from the section's text (not from the fake upstream), each under every
single-byte split and random chunkings, with what a person reading the answer should see.
"""

import json
import random

import pytest

from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer, Reasoning

HEAD = b'event: delta_encoding\ndata: "v1"\n\n'
DONE = b"data: [DONE]\n\n"
TEXT = "/message/content/parts/0"
THOUGHTS = "/message/content/thoughts"


def delta(obj):
    return b"event: delta\ndata: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def frame(obj):
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def message(mid, content=None, metadata=None, channel="final", role="assistant", name=None):
    return {"id": mid, "author": {"role": role, "name": name, "metadata": {}},
            "content": content or {"content_type": "text", "parts": [""]}, "status": "in_progress",
            "end_turn": None, "weight": 1.0, "metadata": metadata or {}, "recipient": "all", "channel": channel}


def root(m, c, bare=True):
    v = {"message": m, "conversation_id": "c-r11", "error": None, "error_code": None}
    return {"v": v, "c": c} if bare else {"p": "", "o": "add", "v": v, "c": c}


def end(*ops):
    return {"p": "", "o": "patch", "v": list(ops) + [
        {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
        {"p": "/message/end_turn", "o": "replace", "v": True},
        {"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}, "is_complete": True}}]}


def chunkings(body, seed=11):
    """The whole body, every single-byte split, and random chunkings."""
    yield [body]
    for i in range(1, len(body)):
        yield [body[:i], body[i:]]
    rnd = random.Random(seed)
    for _ in range(20):
        cuts = sorted(rnd.sample(range(1, len(body)), min(len(body) - 1, rnd.randint(2, 30))))
        yield [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)], strict=True)]


def seen(body, renderer, pieces=None):
    """(content, reasoning_content) as a client adds them up."""
    conv = Conversion(renderer, "v1")
    out = []
    for piece in pieces or [body]:
        out.extend(conv.feed(piece))
    out.extend(conv.close())
    content = "".join(x.text if type(x) is Reasoning and x.inline else x for x in out
                      if type(x) is str or (type(x) is Reasoning and x.inline))
    reasoning = "".join(x.text for x in out if type(x) is Reasoning and not x.inline)
    return content, reasoning, conv


def assert_seen(body, make, content, reasoning=""):
    for pieces in chunkings(body):
        assert seen(body, make(), pieces)[:2] == (content, reasoning), len(pieces)


# 5.1: "later [roots] usually come without p and o ... A frame without p/o otherwise continues the
# previous plain patch". The previous plain patch may be the last message's text append.

def test_bare_text_right_after_a_root_continues_the_previous_plain_patch():
    pre = message("pre", metadata={"is_thinking_preamble_message": True}, channel="commentary")
    body = (HEAD + delta(root(pre, 0, bare=False)) + delta({"p": TEXT, "o": "append", "v": "Let me"})
            + delta({"v": " look."}) + delta(root(message("ans"), 1)) + delta({"v": "Paris"})
            + delta({"v": " it is."}) + delta(end()) + DONE)
    assert_seen(body, MarkdownRenderer, "Paris it is.", "Let me look.")
    content, _, conv = seen(body, MarkdownRenderer())
    assert conv.outcome() == ("stop", None)


# 5.2: typed frames carry "type" and no p/o; one that happens to hold a message under "v" is still
# a typed frame (unknown types are ignored), never a new document whose text is shown.

def test_an_unknown_typed_frame_holding_a_message_is_not_shown():
    leak = {"type": "message_preview", "v": {"message": message("other", {"content_type": "text",
                                                                            "parts": ["LEAKED"]})}}
    body = (HEAD + delta(root(message("ans"), 0, bare=False)) + delta({"p": TEXT, "o": "append", "v": "Hi"})
            + frame(leak) + delta({"v": " there"}) + delta(end()) + DONE)
    assert_seen(body, MarkdownRenderer, "Hi there")


# 5.3: thoughts are "filled by patches ... then appends to /message/content/thoughts/0/content (and
# /summary)": the order of the two is not given. A summary that grows after its thought's content
# began must not make the reasoning the client reads repeat itself.

def thinking(summary_first):
    th = message("th", {"content_type": "thoughts", "thoughts": [], "source_analysis_msg_id": "x"},
                 {"reasoning_status": "is_reasoning"}, channel="analysis")
    recap = message("recap", {"content_type": "reasoning_recap", "content": "Thought for 4s"},
                    {"reasoning_status": "reasoning_ended"})
    recap["status"] = "finished_successfully"
    first = "Multiplying" if summary_first else ""
    body = (HEAD + delta(root(th, 0, bare=False))
            + delta({"p": THOUGHTS, "o": "append", "v": [{"summary": first, "content": "", "chunks": [],
                                                          "finished": False}]})
            + delta({"p": THOUGHTS + "/0/content", "o": "append", "v": "6 times 7"}) + delta({"v": " is 42."}))
    if summary_first:
        body += delta({"p": THOUGHTS + "/0/summary", "o": "append", "v": " numbers"})
    else:
        body += delta({"p": "", "o": "patch", "v": [{"p": THOUGHTS + "/0/summary", "o": "append",
                                                     "v": "Multiplying"}]})
    body += (delta({"p": THOUGHTS + "/0/content", "o": "append", "v": " Sure."}) + delta(end())
             + delta(root(recap, 1)) + delta(root(message("ans"), 2))
             + delta({"p": TEXT, "o": "append", "v": "42"}) + delta(end()) + DONE)
    return body


@pytest.mark.parametrize("summary_first", [True, False])
def test_a_summary_that_grows_after_the_content_does_not_repeat_the_reasoning(summary_first):
    body = thinking(summary_first)
    lead = "Multiplying\n\n" if summary_first else ""
    reasoning = lead + "6 times 7 is 42. Sure.\nThought for 4s"
    assert_seen(body, MarkdownRenderer, "42", reasoning)
    assert_seen(body, lambda: MarkdownRenderer("think"), "<think>\n%s\n</think>\n\n42" % reasoning)
    assert_seen(body, lambda: BotRenderer(reasoning_output=True), "%s\n\n42" % reasoning)
    assert_seen(body, BotRenderer, "42")


def test_bare_text_right_after_a_root_is_the_new_messages_text_when_the_last_path_was_elsewhere():
    """The previous plain patch was a thought's content; the answer's root then a bare string."""
    th = message("th", {"content_type": "thoughts", "thoughts": [], "source_analysis_msg_id": "x"},
                 {"reasoning_status": "is_reasoning"}, channel="analysis")
    body = (HEAD + delta(root(th, 0, bare=False))
            + delta({"p": THOUGHTS, "o": "append", "v": [{"summary": "Sum", "content": "", "chunks": [],
                                                          "finished": False}]})
            + delta({"p": THOUGHTS + "/0/content", "o": "append", "v": "ming"}) + delta(end())
            + delta(root(message("ans"), 1)) + delta({"v": "Four"}) + delta({"v": "."}) + delta(end()) + DONE)
    assert_seen(body, MarkdownRenderer, "Four.", "Sum\n\nming")


def test_utf16_halves_split_between_appends_reach_the_client_as_one_character():
    """A client's text must be encodable as UTF-8: halves joined, a lone half U+FFFD, in the
    answer and in the reasoning, however the bytes are cut."""
    th = message("th", {"content_type": "thoughts", "thoughts": [], "source_analysis_msg_id": "x"},
                 {"reasoning_status": "is_reasoning"}, channel="analysis")
    body = (HEAD + delta(root(th, 0, bare=False))
            + delta({"p": THOUGHTS, "o": "append", "v": [{"summary": "", "content": "a", "chunks": [],
                                                          "finished": False}]})
            + b'event: delta\ndata: {"p": "/message/content/thoughts/0/content", "o": "append", "v": "\\ud83e"}\n\n'
            + b'event: delta\ndata: {"v": "\\udd14b"}\n\n' + delta(end())
            + delta(root(message("ans"), 1)) + delta({"p": TEXT, "o": "append", "v": "x"})
            + b'event: delta\ndata: {"v": "\\ud83d"}\n\n' + b'event: delta\ndata: {"v": "\\ude00 \\udc00"}\n\n'
            + b'event: delta\ndata: {"v": "\\ud83d"}\n\n' + delta(end()) + DONE)
    assert_seen(body, MarkdownRenderer, "x😀 \ufffd\ufffd", "a🤔b")
    assert_seen(body, lambda: MarkdownRenderer("think"), "<think>\na🤔b\n</think>\n\nx😀 \ufffd\ufffd")
    for pieces in chunkings(body):
        content, reasoning, _ = seen(body, MarkdownRenderer(), pieces)
        (content + reasoning).encode("utf-8")


# 5.1/5.2: a root carries c and a v holding the document; "in-stream errors: a root object whose
# error is not null ... error_code usage_limit means the account's cap was hit". Framed as later
# roots usually are, without p and o (or with o only), it is still that error.

@pytest.mark.parametrize("form", [{}, {"o": "add"}])
@pytest.mark.parametrize("text", ["", "Hi"])
def test_an_error_root_without_p_is_the_in_stream_error(form, text):
    body = HEAD + delta(root(message("ans"), 0, bare=False))
    if text:
        body += delta({"p": TEXT, "o": "append", "v": text})
    error = {"message": None, "conversation_id": "c-r11", "error": "You've reached your usage limit.",
             "error_code": "usage_limit"}
    body += delta(dict(form, v=error, c=1)) + DONE
    for pieces in chunkings(body):
        content, _, conv = seen(body, MarkdownRenderer(), pieces)
        assert content == text
        finish, err = conv.outcome()
        assert finish is None and err is not None
        assert (err.status, err.body()["error"]["code"]) == (429, "rate_limit_exceeded")
        assert err.body()["error"]["message"] == "You've reached your usage limit."


# 5.1: finish_details.type max_tokens means the answer was cut for length. A status-only patch may
# come before the metadata patch that says why (the end list's own order, sent as two frames).

@pytest.mark.parametrize("status_first", [True, False])
def test_a_finish_reason_that_comes_after_the_status_still_counts(status_first):
    status = delta({"p": "/message/status", "o": "replace", "v": "finished_successfully"})
    why = delta({"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "max_tokens"},
                                                                 "is_complete": True}})
    body = (HEAD + delta(root(message("ans"), 0, bare=False)) + delta({"p": TEXT, "o": "append", "v": "Long"})
            + (status + why if status_first else why + status)
            + frame({"type": "message_stream_complete", "conversation_id": "c-r11"}) + DONE)
    for pieces in chunkings(body):
        content, _, conv = seen(body, MarkdownRenderer(), pieces)
        assert (content, conv.outcome()) == ("Long", ("length", None))
