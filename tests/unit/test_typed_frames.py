"""Typed frames (docs/upstream.md, "The stream: three forms", 3): never text, each with its one meaning.

Each stream is written out as a live account sends it (2025-2026 v1 form); what the client
should get is written by hand. The frames go through ``LegacyDialect.payload`` in both
dialects, so the late-2023 form is checked too where the frame exists there.
"""

import json

import pytest

from tests.helpers import feed_all
from fakeupstream.app import split
from pgw.converters.pipeline import Conversion
from pgw.converters.render import MarkdownRenderer

C = "6a1f-conv"
HEAD = b'event: delta_encoding\ndata: "v1"\n\n'
DONE = b"data: [DONE]\n\n"


def delta(obj):
    return b"event: delta\ndata: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def data(obj):
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def root(mid, c, role="assistant", parts=("",), first=False, status="in_progress"):
    m = {"id": mid, "author": {"role": role, "name": None, "metadata": {}},
         "content": {"content_type": "text", "parts": list(parts)}, "status": status, "end_turn": None,
         "weight": 1.0, "metadata": {}, "recipient": "all", "channel": "final"}
    doc = {"message": m, "conversation_id": C, "error": None, "error_code": None}
    return delta({"p": "", "o": "add", "v": doc, "c": c} if first else {"v": doc, "c": c})


def append(text, bare=False):
    return delta({"v": text} if bare else {"p": "/message/content/parts/0", "o": "append", "v": text})


END = delta({"p": "", "o": "patch", "v": [
    {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
    {"p": "/message/end_turn", "o": "replace", "v": True},
    {"p": "/message/metadata", "o": "append",
     "v": {"finish_details": {"type": "stop", "stop_tokens": [200002]}, "is_complete": True}}]})
COMPLETE = data({"type": "message_stream_complete", "conversation_id": C})

IGNORED = [
    {"type": "resume_conversation_token", "kind": "conduit", "token": "eyJhbGciOi.x.y", "conversation_id": C},
    {"type": "input_message", "input_message": {"id": "u1", "author": {"role": "user"},
                                                "content": {"content_type": "text", "parts": ["你好"]}},
     "conversation_id": C},
    {"type": "message_marker", "conversation_id": C, "message_id": "m1", "marker": "user_visible_token",
     "event": "first"},
    {"type": "title_generation", "title": "问候 greeting", "conversation_id": C},
    {"type": "server_ste_metadata", "metadata": {"plan_type": "free", "model_slug": "i-mini", "tool_name": None,
                                                 "tool_invoked": False, "resume_with_websockets": False},
     "conversation_id": C},
    {"type": "conversation_detail_metadata", "limits_progress": [{"feature_name": "deep_research",
                                                                  "remaining": 25, "reset_after": "2026-01-01"}],
     "default_model_slug": "auto", "conversation_id": C},
    {"type": "moderation", "message_id": "m1", "is_completion": True,
     "moderation_response": {"flagged": False, "blocked": False}},
    {"type": "url_moderation", "url_moderation_result": {"full_url": "https://x.example", "is_safe": True}},
    {"type": "safety_review_update", "conversation_id": C},
    {"type": "conversation_async_status", "conversation_id": C, "status": 0},
    {"type": "num_variants_in_stream", "num_variants_in_stream": 1, "conversation_id": C},
]


def convert(pieces):
    conv = Conversion(MarkdownRenderer())
    text = "".join(feed_all(conv, pieces))
    reason, error = conv.outcome()
    return conv, text, reason, error


def between(frames):
    """A 2025-2026 answer with ``frames`` (typed frames as bytes) before, between and after everything."""
    out = [HEAD] + frames + [root("sys", 0, "system", status="finished_successfully", first=True)] + frames
    out += [root("u1", 1, "user", ["你好"], status="finished_successfully")] + frames + [root("m1", 2)] + frames
    out += [append("你好！"), *frames, append("有什么", bare=True), *frames, append("可以帮你？", bare=True)]
    return out + frames + [END] + frames + [COMPLETE] + frames + [DONE]


def test_typed_frames_anywhere_are_never_text():
    frames = [data(f) for f in IGNORED]
    for seed in range(20):
        conv, text, reason, error = convert(split(between(frames), "random:%d:50" % seed))
        assert text == "你好！有什么可以帮你？"
        assert (reason, error) == ("stop", None)
        assert conv.warnings == []


def test_every_single_byte_split_with_typed_frames():
    stream = b"".join(between([data(IGNORED[3])]))
    for i in range(len(stream) + 1):
        assert convert([stream[:i], stream[i:]])[1] == "你好！有什么可以帮你？", i


def test_the_title_may_come_twice_mid_stream():
    title = data({"type": "title_generation", "title": "T", "conversation_id": C})
    conv, text, reason, error = convert([HEAD, root("m1", 0, first=True), append("一"), title, append("二", True),
                                         title, END, COMPLETE, title, DONE])
    assert (text, reason, error) == ("一二", "stop", None)


def test_an_unknown_frame_type_is_ignored_and_noted_once():
    future = data({"type": "quantum_reasoning_update", "v": "not text", "p": None})
    future2 = data({"type": "quantum_reasoning_update", "payload": {"text": "not text either"}})
    conv, text, reason, error = convert([HEAD, root("m1", 0, first=True), future, append("ok"), future2, END,
                                         COMPLETE, DONE])
    assert (text, reason, error) == ("ok", "stop", None)
    assert conv.warnings == ["ignored an upstream frame of a type the gateway does not know: "
                             "'quantum_reasoning_update'"]


def test_message_stream_complete_ends_the_turn_even_without_done():
    conv, text, reason, error = convert([HEAD, root("m1", 0, first=True), append("答完了"), END, COMPLETE])
    assert (text, reason, error) == ("答完了", "stop", None)


def test_a_blocked_moderation_frame_finishes_as_content_filter():
    blocked = data({"type": "moderation", "message_id": "m1", "is_completion": True,
                    "moderation_response": {"flagged": True, "blocked": True, "moderation_id": "modr-1"}})
    conv, text, reason, error = convert([HEAD, root("m1", 0, first=True), append("部分"), blocked, END,
                                         COMPLETE, DONE])
    assert (reason, error) == ("content_filter", None)


USAGE_LIMIT = data({"message": None, "conversation_id": C,
                    "error": "You've reached the current usage cap for GPT-5. Please try again later.",
                    "error_code": "usage_limit"})


@pytest.mark.parametrize("said", ["", "一半"])
def test_usage_limit_is_a_rate_limit_with_the_upstream_message(said):
    stream = [HEAD, root("m1", 0, first=True)] + ([append(said)] if said else []) + [USAGE_LIMIT, DONE]
    conv, text, reason, error = convert(stream)
    assert text == said
    assert reason is None
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error.message == "You've reached the current usage cap for GPT-5. Please try again later."


def test_usage_limit_in_the_late_2023_stream_too():
    conv, text, reason, error = convert([USAGE_LIMIT, DONE])
    assert (error.status, error.code) == (429, "rate_limit_exceeded")


def test_an_error_without_a_code_is_an_upstream_error():
    err = data({"message": None, "conversation_id": C, "error": "Something went wrong while generating the response.",
                "error_code": None})
    conv, text, reason, error = convert([HEAD, root("m1", 0, first=True), append("我正在"), err, DONE])
    assert text == "我正在"
    assert (error.status, error.code) == (502, "upstream_error")
    assert "Something went wrong" in error.message


def test_a_handoff_is_a_clear_error_never_an_empty_success():
    token = data({"type": "resume_conversation_token", "kind": "conduit", "token": "eyJ.resume.jwt",
                  "conversation_id": C})
    handoff = data({"type": "stream_handoff", "conversation_id": C, "turn_exchange_id": "T-1",
                    "options": [{"type": "resume_sse_endpoint", "topic_id": "conversation-turn-T-1"},
                                {"type": "subscribe_ws_topic", "topic_id": "conversation-turn-T-1"}]})
    conv, text, reason, error = convert([HEAD, token, handoff, DONE])
    assert text == ""
    assert reason is None
    assert (error.status, error.code) == (502, "upstream_handoff")
    assert "continued this answer elsewhere" in error.message
    answer = conv._answer
    assert answer.resume_conversation_token == "eyJ.resume.jwt"
    assert answer.handoff_to == ("T-1", [{"type": "resume_sse_endpoint", "topic_id": "conversation-turn-T-1"},
                                         {"type": "subscribe_ws_topic", "topic_id": "conversation-turn-T-1"}])
