"""The v1 delta dialect: hand-written patch transcripts in, calls on the answer stage out.

Each transcript is small and written out in full, with what a reader of the answer should get
from it. ``Recorder`` stands in for the answer stage and records each call as a tuple
(``("text", msg, text)``, ``("end", msg)``...); ``summary`` turns those into plain tuples (texts
of one message run together), so a test states what was said, by whom, and when messages ended.
"""

import json

from tests.helpers import feed_all
from pgw.converters.delta import DeltaDialect
from pgw.converters.legacy import LegacyDialect
from pgw.converters.pipeline import Conversion
from pgw.converters.render import MarkdownRenderer
from pgw.converters.sse import SSEDecoder
from fakeupstream.app import split

CID = "5d6b-conv"


def delta(obj):
    return b"event: delta\ndata: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def data(obj):
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


HEAD = b'event: delta_encoding\ndata: "v1"\n\n'
DONE = b"data: [DONE]\n\n"


def message(mid="m1", role="assistant", parts=("",), status="in_progress", recipient="all", content=None,
            metadata=None, name=None):
    return {"id": mid, "author": {"role": role, "name": name, "metadata": {}},
            "content": content or {"content_type": "text", "parts": list(parts)},
            "status": status, "end_turn": None, "weight": 1.0, "metadata": metadata or {}, "recipient": recipient}


def add(msg, c=0):
    return delta({"p": "", "o": "add", "v": {"message": msg, "conversation_id": CID, "error": None}, "c": c})


def finish(text_tail=None, metadata=None):
    ops = []
    if text_tail:
        ops.append({"p": "/message/content/parts/0", "o": "append", "v": text_tail})
    ops += [{"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/end_turn", "o": "replace", "v": True},
            {"p": "/message/metadata", "o": "append",
             "v": metadata or {"is_complete": True, "finish_details": {"type": "stop"}}}]
    return delta({"p": "", "o": "patch", "v": ops})


class Recorder:
    """Stands in for the answer stage: ``calls`` holds each call as a tuple, in order."""

    def __init__(self):
        self.calls = []

    def start(self, msg):
        self.calls.append(("start", msg))

    def text(self, msg, text):
        self.calls.append(("text", msg, text))

    def update(self, msg):
        self.calls.append(("update", msg))

    def end(self, msg):
        self.calls.append(("end", msg))

    def error(self, text, code=None):
        self.calls.append(("error", text) if code is None else ("error", text, code))

    def resume_token(self, token):
        self.calls.append(("resume_token", token))

    def handoff(self, turn_exchange_id, options):
        self.calls.append(("handoff", turn_exchange_id, options))

    def moderation(self, blocked):
        self.calls.append(("moderation", blocked))

    def done(self):
        self.calls.append(("done",))


def summary(events):
    out = []
    for ev in events:
        kind = ev[0]
        if kind == "text":
            msg, text = ev[1], ev[2]
            if out and out[-1][0] == "text" and out[-1][1] == msg.id:
                out[-1] = ("text", msg.id, out[-1][2] + text)
            else:
                out.append(("text", msg.id, text))
        elif kind == "start":
            out.append(("start", ev[1].id, ev[1].role))
        elif kind == "update":
            out.append(("update", ev[1].id))
        elif kind == "end":
            out.append(("end", ev[1].id, ev[1].status))
        else:  # error, moderation, done
            out.append(ev)
    return out


def texts(events):
    """The text of each call to ``answer.text``."""
    return [e[2] for e in events if e[0] == "text"]


def ended(events):
    """The messages the dialect ended, in order."""
    return [e[1] for e in events if e[0] == "end"]


def run(*pieces):
    """Feed the transcript through SSE decoding and the dialect; return (calls, dialect)."""
    answer = Recorder()
    dialect = DeltaDialect(LegacyDialect(answer))
    sse = SSEDecoder()
    for ev in sse.feed(b"".join(pieces)) + sse.close():
        dialect.event(ev)
    dialect.close()
    return answer.calls, dialect


def test_add_append_and_bare_continuation_stream_text_as_it_comes():
    events, d = run(HEAD, add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "你好"}),
                    delta({"v": "！"}), finish("有什么可以帮你？"),
                    data({"type": "message_stream_complete", "conversation_id": CID}), DONE)
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "你好！有什么可以帮你？"),
                               ("end", "m1", "finished_successfully"), ("done",), ("done",)]
    # each append became its own call to answer.text, nothing was re-sent
    assert texts(events) == ["你好", "！", "有什么可以帮你？"]
    end = ended(events)[0]
    assert end.content["parts"] == ["你好！有什么可以帮你？"]
    assert end.metadata["finish_details"] == {"type": "stop"}
    assert end.end_turn is True
    assert d.conversation_id == CID
    assert d.warnings == []


def test_the_whole_content_is_there_when_the_message_ends_by_done_only():
    events, _ = run(HEAD, add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "半句"}),
                    delta({"v": "话"}), DONE)
    end = ended(events)[0]
    assert end.content["parts"] == ["半句话"]
    assert summary(events)[-2:] == [("end", "m1", "in_progress"), ("done",)]


def test_text_already_in_the_add_is_passed_on():
    events, _ = run(add(message(parts=["Hi"])), delta({"p": "/message/content/parts/0", "o": "append", "v": " there"}))
    assert summary(events)[:2] == [("start", "m1", "assistant"), ("text", "m1", "Hi there")]


def test_replace_of_the_text_passes_on_only_what_is_new():
    events, _ = run(add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "Hello"}),
                    delta({"p": "/message/content/parts/0", "o": "replace", "v": "Hello world"}),
                    delta({"p": "/message/content/parts/0", "o": "append", "v": "!"}))
    assert ("text", "m1", "Hello world!") in summary(events)


def test_truncate_cuts_the_text_and_later_text_continues_past_what_was_sent():
    # Text already shown cannot be taken back; like a shorter snapshot in the legacy dialect,
    # everything appended after the cut still reaches the client (nothing is dropped).
    events, _ = run(add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "Hello world"}),
                    delta({"p": "/message/content/parts/0", "o": "truncate", "v": 5}),
                    delta({"p": "/message/content/parts/0", "o": "append", "v": " there!"}),
                    finish())
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "Hello world there!"),
                               ("end", "m1", "finished_successfully")]
    end = ended(events)[0]
    assert end.content["parts"] == ["Hello there!"]


def test_list_truncate_and_remove():
    events, _ = run(add(message(parts=["a", "b", "c"])),
                    delta({"p": "/message/content/parts", "o": "truncate", "v": 2}),
                    delta({"p": "/message/metadata", "o": "append", "v": {"x": 1, "y": 2}}),
                    delta({"p": "/message/metadata/x", "o": "remove"}),
                    delta({"p": "/message/status", "o": "replace", "v": "finished_successfully"}))
    end = ended(events)[0]
    assert end.content["parts"] == ["a", "b"]
    assert end.metadata == {"y": 2}


def test_list_append_extends_and_object_append_merges():
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-1"}
    events, _ = run(add(message(role="tool", name="dalle.text2im",
                                content={"content_type": "multimodal_text", "parts": []})),
                    delta({"p": "", "o": "patch", "v": [
                        {"p": "/message/content/parts", "o": "append", "v": [image]},
                        {"p": "/message/metadata", "o": "append", "v": {"a": 1}},
                        {"p": "/message/metadata", "o": "append", "v": {"b": 2}},
                        {"p": "/message/status", "o": "replace", "v": "finished_successfully"}]}))
    end = ended(events)[0]
    assert end.content["parts"] == [image]
    assert end.metadata == {"a": 1, "b": 2}


def test_add_into_a_list_inserts():
    events, _ = run(add(message(parts=["x", "z"])),
                    delta({"p": "/message/content/parts/1", "o": "add", "v": "y"}),
                    delta({"p": "/message/status", "o": "replace", "v": "finished_successfully"}))
    end = ended(events)[0]
    assert end.content["parts"] == ["x", "y", "z"]


def test_code_messages_append_to_content_text():
    code = {"content_type": "code", "language": "unknown", "text": ""}
    events, _ = run(add(message(recipient="python", content=code)),
                    delta({"p": "/message/content/text", "o": "append", "v": "import math\n"}),
                    delta({"v": "print(math.pi)"}),
                    delta({"p": "/message/status", "o": "replace", "v": "finished_successfully"}))
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "import math\nprint(math.pi)"),
                               ("end", "m1", "finished_successfully")]


def test_a_new_add_with_c_starts_the_next_message():
    code = {"content_type": "code", "language": "unknown", "text": ""}
    out = {"content_type": "execution_output", "text": ""}
    events, _ = run(add(message("a", recipient="python", content=code)),
                    delta({"p": "/message/content/text", "o": "append", "v": "1+1"}),
                    add(message("b", role="tool", name="python", content=out), c=1),
                    delta({"p": "/message/content/text", "o": "append", "v": "2"}),
                    add(message("c"), c=2),
                    delta({"p": "/message/content/parts/0", "o": "append", "v": "是 2。"}),
                    finish(), DONE)
    assert summary(events) == [
        ("start", "a", "assistant"), ("text", "a", "1+1"), ("end", "a", "in_progress"),
        ("start", "b", "tool"), ("text", "b", "2"), ("end", "b", "in_progress"),
        ("start", "c", "assistant"), ("text", "c", "是 2。"), ("end", "c", "finished_successfully"), ("done",)]
    ends = {m.id: m for m in ended(events)}
    assert ends["a"].content["text"] == "1+1"   # joined before the next message replaced the document
    assert ends["b"].content["text"] == "2"


def test_citations_arriving_by_metadata_append_announce_an_update_each_time():
    cite = {"start_ix": 0, "end_ix": 9, "metadata": {"title": "T", "url": "https://t.example",
                                                   "extra": {"cited_message_idx": 1}}}
    events, _ = run(add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "【1†source】"}),
                    delta({"p": "/message/metadata", "o": "append", "v": {"citations": [cite]}}),
                    delta({"p": "/message/metadata/citations", "o": "append", "v": [cite]}),
                    delta({"p": "/message/metadata", "o": "append", "v": {"is_complete": True}}))
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "【1†source】"),
                               ("update", "m1"), ("update", "m1"), ("end", "m1", "in_progress")]


def test_typed_events_errors_and_moderation():
    events, _ = run(HEAD, data({"type": "input_message", "input_message": message("u", role="user", parts=["hi"]),
                                "conversation_id": CID}),
                    add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "x"}),
                    data({"type": "title_generation", "title": "T", "conversation_id": CID}),
                    data({"type": "some_later_kind", "whatever": [1, 2]}),
                    delta({"v": "y"}),
                    data({"type": "moderation", "conversation_id": CID, "message_id": "m1", "is_completion": True,
                          "moderation_response": {"flagged": True, "blocked": True, "moderation_id": "modr-1"}}),
                    data({"message": None, "conversation_id": CID, "error": "Something went wrong"}),
                    DONE)
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "xy"), ("moderation", True),
                               ("error", "Something went wrong"), ("end", "m1", "in_progress"), ("done",)]


def test_an_error_patched_into_the_document_is_reported():
    events, _ = run(add(message()), delta({"p": "/error", "o": "replace", "v": "rate limited"}))
    assert ("error", "rate limited") in summary(events)


def test_unknown_operations_and_paths_are_skipped_and_reported_once():
    events, d = run(add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "a"}),
                    delta({"p": "/message/content/parts/0", "o": "frobnicate", "v": "?"}),
                    delta({"v": "??"}),  # same unknown operation again
                    delta({"p": "/message/nope/deeper", "o": "replace", "v": 1}),
                    delta({"p": "", "o": "patch", "v": [
                        {"p": "/message/content/parts/0", "o": "append", "v": "b"},
                        {"p": "/message/content/parts/7", "o": "replace", "v": "x"},
                        {"p": "/message/status", "o": "replace", "v": "finished_successfully"}]}),
                    DONE)
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "ab"),
                               ("end", "m1", "finished_successfully"), ("done",)]
    assert len(d.warnings) == 3
    assert "frobnicate" in d.warnings[0]
    assert "/message/nope/deeper" in d.warnings[1]
    assert "/message/content/parts/7" in d.warnings[2]


def test_patches_before_any_document_are_skipped():
    events, d = run(delta({"p": "/message/content/parts/0", "o": "append", "v": "lost"}),
                    add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "ok"}))
    assert summary(events) == [("start", "m1", "assistant"), ("text", "m1", "ok"), ("end", "m1", "in_progress")]
    assert len(d.warnings) == 1


TRANSCRIPT = [HEAD, data({"type": "input_message", "input_message": message("u", role="user", parts=["你好"]),
                          "conversation_id": CID}),
              add(message()), b"event: ping\ndata: 2023-12-20 12:34:56.123456\n\n",
              delta({"p": "/message/content/parts/0", "o": "append", "v": "你好！"}),
              delta({"v": "有什么"}), delta({"v": "可以帮你？"}),
              finish(" 😀"), data({"type": "message_stream_complete", "conversation_id": CID}), DONE]


def test_random_network_chunking_gives_the_same_answer():
    for seed in range(200):
        conv = Conversion(MarkdownRenderer())
        out = feed_all(conv, split(TRANSCRIPT, "random:%d:9" % seed))
        assert "".join(out) == "你好！有什么可以帮你？ 😀"
        assert conv.outcome() == ("stop", None)
        assert conv.dialect == "v1"
        assert conv.conversation_id == CID


def test_auto_detection_takes_legacy_streams_too():
    legacy = data({"message": message(parts=["Hi"]), "conversation_id": CID, "error": None}) + \
        data({"message": message(parts=["Hi there"], status="finished_successfully",
                                 metadata={"finish_details": {"type": "stop"}}),
              "conversation_id": CID, "error": None}) + DONE
    conv = Conversion(MarkdownRenderer(), "v1")
    assert "".join(conv.feed(legacy) + conv.close()) == "Hi there"
    assert conv.dialect == "legacy"
    assert conv.warnings == ["asked for the v1 delta encoding, the upstream answered with whole messages"]


def test_patches_without_event_names_are_recognised():
    blob = b"".join(TRANSCRIPT).replace(b"event: delta\n", b"").replace(b"event: delta_encoding\n", b"")
    conv = Conversion(MarkdownRenderer())
    assert "".join(conv.feed(blob) + conv.close()) == "你好！有什么可以帮你？ 😀"
    assert conv.dialect == "v1"


def test_the_conversion_collects_skipped_patches_for_the_handler_to_log():
    blob = b"".join([HEAD, add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "ok"}),
                     delta({"p": "/message/content/parts/0", "o": "rot13", "v": "?"}), delta({"v": "!"}),
                     finish(), DONE])
    conv = Conversion(MarkdownRenderer())
    assert "".join(conv.feed(blob) + conv.close()) == "ok"
    assert conv.outcome() == ("stop", None)
    assert conv.warnings == ["skipped 'rot13' at '/message/content/parts/0': unknown operation"]


def test_an_event_no_stage_can_read_is_skipped_and_the_rest_of_its_chunk_kept():
    """Malformed values (a list as a path, a number as text) are skipped and noted; text after
    them in the same network chunk still arrives and the answer still completes."""
    from pgw.converters.pipeline import Conversion
    from pgw.converters.render import MarkdownRenderer
    stream = (b'event: delta_encoding\ndata: "v1"\n\n'
              b'event: delta\ndata: {"p": "", "o": "add", "v": {"message": {"id": "m1", "author": {"role": "assistant"}, '
              b'"content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "recipient": "all", '
              b'"metadata": {}}, "conversation_id": "c1"}, "c": 0}\n\n'
              b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "Hello, "}\n\n'
              b'event: delta\ndata: {"p": ["future"], "o": "append", "v": 1}\n\n'
              b'data: {"message": {"id": 5, "author": "x", "content": 7}}\n\n'
              b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "this part is kept."}\n\n'
              b'event: delta\ndata: {"p": "/message/status", "o": "replace", "v": "finished_successfully"}\n\n'
              b'data: [DONE]\n\n')
    conv = Conversion(MarkdownRenderer())
    out = conv.feed(stream) + conv.close()
    assert "".join(out) == "Hello, this part is kept."
    assert conv.outcome() == ("stop", None)
    assert conv.warnings  # noted for the log


def test_a_bare_string_after_a_patch_list_continues_the_plain_patch_before_it():
    """A bare {"v": "..."} continues the last plain patch (path and operation), even with a
    patch list in between (protocol section 5.1): the string is more text, and it must not end
    up in the citations list the list appended to last."""
    events, d = run(add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "Hello"}),
                    delta({"p": "", "o": "patch", "v": [
                        {"p": "/message/metadata", "o": "append", "v": {"citations": []}},
                        {"p": "/message/metadata/citations", "o": "append", "v": [{"start_ix": 0}]}]}),
                    delta({"v": " world."}),
                    finish())
    end = ended(events)[0]
    assert end.metadata["citations"] == [{"start_ix": 0}]
    assert end.content["parts"] == ["Hello world."]
    assert "".join(texts(events)) == "Hello world."
    assert d.warnings == []


# Frames as live accounts send them in 2025-2026 (protocol section 5.1)

def test_a_metadata_only_then_a_status_only_patch_never_resend_the_text():
    events, d = run(HEAD, add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "你好"}),
                    delta({"v": "，世界"}),
                    delta({"p": "/message/metadata", "o": "append", "v": {"model_slug": "gpt-5"}}),
                    delta({"p": "/message/status", "o": "replace", "v": "finished_successfully"}), DONE)
    assert texts(events) == ["你好", "，世界"]
    assert ended(events)[0].content["parts"] == ["你好，世界"]
    assert d.warnings == []


def test_the_demo_browse_answer_converts_without_a_warning():
    from fakeupstream.scenarios import browse
    from fakeupstream.script import v1_events
    conv = Conversion(MarkdownRenderer())
    text = "".join(feed_all(conv, v1_events(browse("", "gpt-4"), CID, [])))
    assert "readthedocs" in text
    assert conv.warnings == []


def test_a_root_without_p_and_o_after_text_appends_starts_the_next_message():
    code = {"content_type": "code", "language": "unknown", "text": ""}
    events, d = run(HEAD, add(message("a", recipient="python", content=code)),
                    delta({"p": "/message/content/text", "o": "append", "v": "print(1)"}),
                    delta({"v": {"message": message("b"), "conversation_id": CID, "error": None}, "c": 1}),
                    delta({"p": "/message/content/parts/0", "o": "append", "v": "Done."}),
                    delta({"o": "add", "v": {"message": message("c"), "conversation_id": CID, "error": None},
                           "c": 2}),
                    delta({"p": "/message/content/parts/0", "o": "append", "v": "Third."}), DONE)
    assert summary(events) == [
        ("start", "a", "assistant"), ("text", "a", "print(1)"), ("end", "a", "in_progress"),
        ("start", "b", "assistant"), ("text", "b", "Done."), ("end", "b", "in_progress"),
        ("start", "c", "assistant"), ("text", "c", "Third."), ("end", "c", "in_progress"), ("done",)]
    assert ended(events)[0].content["text"] == "print(1)"
    assert d.warnings == []


def test_text_a_patch_list_appends_and_takes_back_never_reaches_the_client():
    events, d = run(HEAD, add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "Hello"}),
                    delta({"p": "", "o": "patch", "v": [
                        {"p": "/message/content/parts/0", "o": "append", "v": " wrong"},
                        {"p": "/message/content/parts/0", "o": "truncate", "v": 5},
                        {"p": "/message/content/parts/0", "o": "append", "v": " wor"},
                        {"p": "/message/content/parts/0", "o": "replace", "v": "Hello world"}]}),
                    finish("!"), DONE)
    assert texts(events) == ["Hello", " world", "!"]
    assert d.warnings == []


def test_a_bare_list_continues_a_patch_list():
    events, d = run(HEAD, add(message()),
                    delta({"p": "", "o": "patch", "v": [{"p": "/message/content/parts/0", "o": "append", "v": "a"}]}),
                    delta({"v": [{"p": "/message/content/parts/0", "o": "append", "v": "b"},
                                 {"p": "/message/metadata", "o": "append", "v": {"x": 1}}]}),
                    delta({"v": [{"p": "/message/content/parts/0", "o": "append", "v": "c"}]}), DONE)
    assert "".join(texts(events)) == "abc"
    assert ended(events)[0].metadata == {"x": 1}
    assert d.warnings == []


def test_text_taken_back_across_changes_goes_on_from_where_old_and_new_part():
    events, d = run(HEAD, add(message()), delta({"p": "/message/content/parts/0", "o": "append", "v": "Hello wor"}),
                    delta({"p": "/message/content/parts/0", "o": "replace", "v": "Help me"}), DONE)
    assert texts(events) == ["Hello wor", "p me"]
    assert d.warnings == ["the upstream rewrote text of a message after it was sent"]


def test_text_spread_over_parts_follows_content_text():
    """Appends to a second part take the general path: the message's text is what
    ``content_text`` reads from the whole content."""
    events, d = run(HEAD, add(message(parts=["一", ""])),
                    delta({"p": "/message/content/parts/1", "o": "append", "v": "二"}),
                    delta({"v": "三"}),
                    delta({"p": "/message/content/parts", "o": "append", "v": ["四"]}), DONE)
    assert "".join(texts(events)) == "一二三四"
    assert d.warnings == []
