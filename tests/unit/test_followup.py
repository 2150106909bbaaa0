"""Answers that finish elsewhere, converter side: polled conversations, resumed and continued
bodies go through the answer's own ``Conversion`` (``Conversion.follow``) and render exactly as
if they had been streamed. Transcripts come from the fake upstream's renderers; the expected
texts are written out by hand."""

import asyncio
import json
import os
import random
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakeupstream import scenarios
from fakeupstream.script import RENDERERS, Script
from fakeupstream.stored import Stored
from pgw.converters import followup
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, FetchImage, MarkdownRenderer
from pgw.media import MediaStore
from pgw.runtime import SavedFiles

CALL = '{"prompt": "%s", "size": "1024x1024", "n": 1}' % scenarios.IMAGE_PROMPT
USER = [{"id": "u1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": ["画"]}, "metadata": {}}]


def text_of(items, url="URL"):
    """What the client reads: actions rendered as if their fetch gave ``url``."""
    return "".join(i if isinstance(i, str) else i.render(url) for i in items)


def stream(script, encoding, cid="c1"):
    return b"".join(RENDERERS[encoding](script, cid, USER))


def image_answer(encoding, renderer=None, **options):
    """The SSE of an image_gen answer fed, then the conversation as polled after the picture came."""
    script = scenarios.image_gen("", "gpt-4o", delay=0, **options)
    conv = Conversion(renderer or MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(stream(script, encoding))
    stored = Stored("k", "c1", "gpt-4o", USER, script, encoding, now=0)
    return conv, out, stored, script


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
def test_the_stream_ends_with_the_image_task_pending_and_the_prompt_shown(encoding):
    conv, out, _, script = image_answer(encoding)
    assert text_of(out) == "```json\n%s\n```\n" % CALL
    placeholder = script.messages[1]
    assert conv._answer.image_tasks == {placeholder.id: placeholder.metadata["image_gen_task_id"]}
    assert "Processing image" not in text_of(out)


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
def test_a_polled_picture_renders_as_if_streamed(encoding):
    conv, out, stored, _ = image_answer(encoding)
    messages = followup.images_ready(followup.path(stored.document(now=1)), conv._answer.image_tasks)
    assert [m["author"]["role"] for m in messages] == ["tool", "assistant"]
    for m in messages:
        out += conv.follow(m)
    out += conv.close()
    [action] = [i for i in out if isinstance(i, FetchImage)]
    assert action.image.store == "sediment" and action.image.file_id.startswith("file_0000")
    assert action.image.prompt == scenarios.IMAGE_PROMPT  # from the tool call: revised_prompt
    assert text_of(out) == "```json\n%s\n```\n![image](URL)\n[download](URL)\n%s" % (CALL, scenarios.IMAGE_DONE_TEXT)
    assert conv.outcome() == ("stop", None)
    assert conv.warnings == []
    assert conv._answer.image_tasks == {}


def test_in_bot_mode_a_polled_picture_follows_the_switches():
    conv, out, stored, _ = image_answer("v1", BotRenderer(plain_image_url=True))
    for m in followup.path(stored.document(now=1)):
        out += conv.follow(m)
    out += conv.close()
    assert text_of(out) == "URL\n" + scenarios.IMAGE_DONE_TEXT


def test_a_message_read_again_unchanged_adds_nothing():
    conv, out, stored, _ = image_answer("v1")
    everything = followup.path(stored.document(now=1))
    for m in everything:
        out += conv.follow(m)
    again = [i for m in everything for i in conv.follow(m)]
    assert again == []
    assert len([i for i in out if isinstance(i, FetchImage)]) == 1


def test_before_the_picture_the_poll_is_not_ready():
    conv, _, stored, _ = image_answer("v1")
    assert followup.images_ready(followup.path(stored.document(now=-1)), conv._answer.image_tasks) is None
    assert followup.images_ready([], ["x"]) is None  # not stored yet


def test_a_turn_that_ended_without_the_picture_is_ready():
    """A placeholder never filled (the upstream gave up) but the turn went on and ended."""
    placeholder = {"id": "p", "author": {"role": "tool"}, "status": "finished_successfully",
                   "content": {"content_type": "text", "parts": ["Processing image"]}}
    words = {"id": "a", "author": {"role": "assistant"}, "status": "finished_successfully", "end_turn": True,
             "content": {"content_type": "text", "parts": ["I could not draw that."]}}
    assert followup.images_ready([placeholder], ["p"]) is None
    assert followup.images_ready([placeholder, words], ["p"]) == [placeholder, words]
    assert followup.images_ready([placeholder, dict(words, status="in_progress")], ["p"]) is None


def test_the_image_quota_message_is_a_rate_limit_with_the_upstream_words():
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(stream(scenarios.image_quota("", "gpt-4o"), "v1")) + conv.close()
    reason, error = conv.outcome()
    assert reason is None and error.status == 429 and error.type == "rate_limit_error"
    assert scenarios.IMAGE_QUOTA_TEXT in error.message
    assert scenarios.IMAGE_QUOTA_TEXT not in text_of(out)


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
def test_a_handoff_is_noted_and_shows_nothing(encoding):
    script = scenarios.handoff("", "gpt-5-thinking")
    stored = Stored("k", "c1", "gpt-5-thinking", USER, script, encoding, now=0)
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(b"".join(stored.handoff_events(USER)))
    assert out == []
    answer = conv._answer
    assert answer.resume_conversation_token == stored.handoff["token"] and answer.handoff_to[0] == stored.handoff["turn"]
    assert conv.conversation_id == "c1"
    # not followed: an honest error, never an empty success
    assert conv.outcome()[1].code == "upstream_handoff"


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
def test_a_resumed_body_continues_the_same_answer(encoding):
    script = scenarios.handoff("", "gpt-5-thinking")
    stored = Stored("k", "c1", "gpt-5-thinking", USER, script, encoding, now=0)
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(b"".join(stored.handoff_events(USER)))
    out += conv.follow()
    resumed = b"".join(stored.resume_events())
    for i in range(0, len(resumed), 7):  # hostile chunking
        out += conv.feed(resumed[i:i + 7])
    out += conv.close()
    assert text_of(out) == scenarios.HANDOFF_TEXT
    assert conv.outcome() == ("stop", None)


def test_a_handoff_followed_by_polling_reads_the_finished_turn():
    script = scenarios.handoff_refused("", "gpt-5-thinking", delay=5)
    stored = Stored("k", "c1", "gpt-5-thinking", USER, script, "v1", now=0)
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(b"".join(stored.handoff_events(USER)))
    out += conv.follow()
    assert followup.turn_ready(followup.path(stored.document(now=1))) is None  # still in progress
    for m in followup.turn_ready(followup.path(stored.document(now=6))):
        out += conv.follow(m)
    conv._answer.done()
    out += conv.close()
    assert text_of(out) == scenarios.HANDOFF_TEXT
    assert conv.outcome() == ("stop", None)


@pytest.mark.parametrize("encoding", ["v1", "legacy"])
@pytest.mark.parametrize("same_id", [True, False])
def test_a_continued_answer_has_no_seam_and_no_doubled_text(encoding, same_id):
    script = scenarios.cut("", "gpt-4o", same_id=same_id)
    stored = Stored("k", "c1", "gpt-4o", USER, script, encoding, now=0)
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(stream(script, encoding))
    assert conv._answer.finish_reason == "length"
    for _ in range(2):
        parent = conv._answer.last_prose_id
        out += conv.follow(reopen=parent)
        body = b"".join(stored.continue_events(parent))
        for i in range(0, len(body), 5):
            out += conv.feed(body[i:i + 5])
    out += conv.close()
    assert text_of(out) == "第一段：这个回答很长，第二段：被截断后继续，第三段：终于写完了。The end."
    assert conv.outcome() == ("stop", None)
    assert conv.warnings == []


def test_a_continuation_that_ends_early_is_incomplete():
    """The continued body must complete the answer again: one that drops is an error."""
    script = scenarios.cut("", "gpt-4o")
    stored = Stored("k", "c1", "gpt-4o", USER, script, "v1", now=0)
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    conv.feed(stream(script, "v1"))
    parent = conv._answer.last_prose_id
    conv.follow(reopen=parent)
    body = b"".join(stored.continue_events(parent))
    conv.feed(body[:len(body) // 2])
    conv.close()
    assert conv.outcome()[1].code == "upstream_incomplete"


def test_continue_payload_goes_on_after_the_cut_message():
    payload = {"action": "next", "messages": [{"id": "u1"}], "parent_message_id": "root", "model": "gpt-4o",
               "conversation_mode": {"kind": "primary_assistant"}, "supported_encodings": ["v1"]}
    body = followup.continue_payload(payload, "c1", "m9")
    assert body == {"action": "continue", "conversation_id": "c1", "parent_message_id": "m9", "model": "gpt-4o",
                    "conversation_mode": {"kind": "primary_assistant"}, "supported_encodings": ["v1"]}
    assert payload["action"] == "next"  # the original is left alone


def test_path_follows_current_node_and_survives_loops_and_garbage():
    mapping = {"r": {"message": None, "parent": None, "children": ["a"]},
               "a": {"message": {"id": "a"}, "parent": "r", "children": ["b", "x"]},
               "b": {"message": {"id": "b"}, "parent": "a", "children": []},
               "x": {"message": {"id": "x"}, "parent": "a", "children": []}}
    assert [m["id"] for m in followup.path({"mapping": mapping, "current_node": "b"})] == ["a", "b"]
    assert [m["id"] for m in followup.path({"mapping": mapping, "current_node": "x"})] == ["a", "x"]
    assert [m["id"] for m in followup.path({"mapping": mapping})] == ["a", "x"]  # last leaf
    loop = {"a": {"message": {"id": "a"}, "parent": "b"}, "b": {"message": {"id": "b"}, "parent": "a"}}
    assert [m["id"] for m in followup.path({"mapping": loop, "current_node": "a"})] == ["b", "a"]
    for junk in (None, [], {"mapping": []}, {"mapping": {"a": 3}, "current_node": "a"}):
        assert followup.path(junk) == []


def test_the_image_tool_call_renders_like_the_dalle_prompt():
    for renderer, expected in ((MarkdownRenderer(), "```json\n%s\n```\n" % CALL), (BotRenderer(), ""),
                               (BotRenderer(plugin_output=True), CALL + "\n")):  # bot mode: plain text
        conv = Conversion(renderer, echo_ids=["u1"])
        script = scenarios.image_gen("", "gpt-4o")
        assert text_of(conv.feed(stream(script, "v1")) + conv.close()) == expected


# SavedFiles: one upstream file, one saved copy per process

def test_saved_files_fetches_once_and_shares_a_fetch_under_way():
    store = MediaStore(tempfile.mkdtemp())
    known = SavedFiles()
    calls = []

    async def fetch():
        calls.append(1)
        await asyncio.sleep(0)
        return store._save("image", "png", b"png-bytes"), b"png-bytes"

    async def fetch_or_reuse():
        saved = await known.get(("k", "files", None, "f1"), store)
        return saved if saved is not None else await known.fetch(("k", "files", None, "f1"), fetch())

    async def main():
        first, second = await asyncio.gather(fetch_or_reuse(), fetch_or_reuse())
        third = await fetch_or_reuse()
        return first, second, third

    first, second, third = asyncio.run(main())
    assert first == second == third and len(calls) == 1


def test_saved_files_fetches_again_after_a_failure_or_a_sweep():
    store = MediaStore(tempfile.mkdtemp())
    known = SavedFiles(limit=2)
    ident = ("k", "files", None, "f1")

    async def failing():
        return None

    async def saving():
        return store._save("image", "png", b"x"), b"x"

    async def main():
        assert await known.fetch(ident, failing()) is None
        assert await known.get(ident, store) is None  # a failure is not remembered
        name, _ = await known.fetch(ident, saving())
        assert (await known.get(ident, store))[0] == name
        os.unlink(store.path(name))  # the age sweep removed it
        assert await known.get(ident, store) is None
        for i in range(3):  # bounded: the oldest entries go
            await known.fetch(("k", "files", None, "g%d" % i), saving())
        assert len(known._entries) == 2

    asyncio.run(main())


def chunks(data, seed):
    rng = random.Random(seed)
    i = 0
    while i < len(data):
        n = rng.randint(1, 64)
        yield data[i:i + n]
        i += n


@pytest.mark.parametrize("renderer", [MarkdownRenderer, BotRenderer, lambda: BotRenderer(plugin_output=True,
                                                                                         plain_image_url=True)])
@pytest.mark.parametrize("encoding", ["v1", "legacy"])
@pytest.mark.parametrize("seed", range(5))
def test_polled_content_renders_exactly_as_the_same_content_streamed(encoding, seed, renderer):
    """No second code path: the stream up to the placeholder plus the polled messages give what
    one stream carrying the finished messages gives, action for action."""
    script = scenarios.image_gen("", "gpt-4o", delay=0)
    call, placeholder = script.messages
    done, words = script.later["messages"]
    whole = Script([call, done, words], "gpt-4o")

    streamed = Conversion(renderer(), echo_ids=["u1"])
    a = [i for piece in chunks(stream(whole, encoding), seed) for i in streamed.feed(piece)] + streamed.close()

    polled = Conversion(renderer(), echo_ids=["u1"])
    b = [i for piece in chunks(stream(script, encoding), seed) for i in polled.feed(piece)]
    stored = Stored("k", "c1", "gpt-4o", USER, script, encoding, now=0)
    for m in followup.images_ready(followup.path(stored.document(now=1)), polled._answer.image_tasks):
        b += polled.follow(m)
    b += polled.close()

    def shown(items):
        return [i if isinstance(i, str) else (i.image.file_id, i.image.store, i.image.prompt, i.render("U"))
                for i in items]
    assert "".join(text_of(a)) == "".join(text_of(b))
    assert [x for x in shown(a) if not isinstance(x, str)] == [x for x in shown(b) if not isinstance(x, str)]
    assert streamed.outcome() == polled.outcome() == ("stop", None)


def test_a_picture_patched_into_a_placeholder_after_it_ended_still_arrives():
    """The placeholder ends, then the same SSE patches its picture in: the stage ignores a
    finished message, so the picture comes from the poll, which must read it although the
    message's dicts already hold the patch."""
    part = scenarios._sediment_part("file_0000late")
    placeholder = {"id": "p1", "author": {"role": "tool", "name": scenarios.IMAGE_TOOL}, "recipient": "all",
                   "content": {"content_type": "multimodal_text", "parts": []}, "status": "finished_successfully",
                   "metadata": {"async_task_type": "image_gen", "image_gen_task_id": "t1"}}
    sse = (b'event: delta_encoding\ndata: "v1"\n\n'
           + b'event: delta\ndata: ' + json.dumps({"p": "", "o": "add", "c": 0, "v": {
               "message": placeholder, "conversation_id": "c1", "error": None}}).encode() + b'\n\n'
           + b'event: delta\ndata: ' + json.dumps({"p": "/message/content/parts", "o": "append",
                                                   "v": [part]}).encode() + b'\n\n'
           + b'data: [DONE]\n\n')
    conv = Conversion(MarkdownRenderer())
    out = conv.feed(sse)
    assert conv._answer.image_tasks == {"p1": "t1"}
    polled = dict(placeholder, content={"content_type": "multimodal_text", "parts": [part]})
    out += conv.follow(polled) + conv.close()
    assert text_of(out) == "![image](URL)\n[download](URL)\n"
    assert conv._answer.image_tasks == {}


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab 中文😊\n【】()", min_size=2, max_size=60), data=st.data(),
       encoding=st.sampled_from(["v1", "legacy"]), same_id=st.booleans())
def test_any_cut_answer_continued_in_any_chunking_is_the_whole_text_once(text, data, encoding, same_id):
    """Property: however the answer is cut into parts and the bodies into pieces, the client
    reads the whole text exactly once (the plain-text reference is the parts joined)."""
    cuts = sorted(data.draw(st.sets(st.integers(1, len(text) - 1), max_size=3)))
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    script = scenarios.cut("", "gpt-4o", same_id=same_id, parts=parts)
    stored = Stored("k", "c1", "gpt-4o", USER, script, encoding, now=0)
    conv = Conversion(BotRenderer(), echo_ids=["u1"])
    size = data.draw(st.integers(1, 40))

    def feed(body):
        return [i for k in range(0, len(body), size) for i in conv.feed(body[k:k + size])]
    out = feed(stream(script, encoding))
    for _ in parts[1:]:
        parent = conv._answer.last_prose_id
        out += conv.follow(reopen=parent)
        out += feed(b"".join(stored.continue_events(parent)))
    out += conv.close()
    assert text_of(out) == "".join(parts)
    assert conv.outcome() == ("stop", None)


def test_a_continuation_that_restarts_the_same_message_from_empty_adds_only_its_new_text():
    """A v1 continuation may re-add the cut message with empty text and append only what is new."""
    script = scenarios.cut("", "gpt-4o", parts=("前半，", "后半。"))
    conv = Conversion(MarkdownRenderer(), echo_ids=["u1"])
    out = conv.feed(stream(script, "v1"))
    cut = script.messages[0]
    out += conv.follow(reopen=cut.id)
    conv._answer.finish_reason = None  # as ConversationRun._continue does
    doc = {"message": {"id": cut.id, "author": {"role": "assistant"}, "recipient": "all", "status": "in_progress",
                       "content": {"content_type": "text", "parts": [""]}, "metadata": {}},
           "conversation_id": "c1", "error": None}
    body = (b'event: delta_encoding\ndata: "v1"\n\n'
            + b"event: delta\ndata: " + json.dumps({"p": "", "o": "add", "c": 0, "v": doc}).encode() + b"\n\n"
            + b"event: delta\ndata: " + json.dumps({"p": "/message/content/parts/0", "o": "append",
                                                    "v": "后半。"}).encode() + b"\n\n"
            + b'event: delta\ndata: {"p": "/message/status", "o": "replace", "v": "finished_successfully"}\n\n'
            + b"data: [DONE]\n\n")
    out += conv.feed(body) + conv.close()
    assert text_of(out) == "前半，后半。"
    assert conv.outcome() == ("stop", None)
