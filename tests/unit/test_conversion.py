"""The converter pipeline on transcripts: exact text under any chunking, nothing leaks.

Expected texts are written by hand from the transcripts in tests/fixtures/.
"""

import pytest

from tests.helpers import feed_all, read_fixture
from pgw.converters.pipeline import Conversion
from pgw.converters.render import MarkdownRenderer
from fakeupstream import scenarios
from fakeupstream.app import split
from fakeupstream.script import legacy_events


def convert(pieces, cut=False):
    """Feed ``pieces``; return (client text, finish_reason, error)."""
    conv = Conversion(MarkdownRenderer())
    out = feed_all(conv, pieces)
    assert all(isinstance(x, str) for x in out), out
    reason, error = conv.outcome(cut=cut)
    return "".join(out), reason, error


HELLO_ZH = "你好！有什么可以帮你？😊"
HELLO_EN = 'Hello there!\nHow can I help "you" today?'


# Each transcript in both upstream dialects: whole messages (late 2023) and v1 patches (2024).
TRANSCRIPTS = pytest.mark.parametrize("name, expected", [
    ("hello_zh.sse", HELLO_ZH), ("hello_en_crlf.sse", HELLO_EN),
    ("hello_zh_v1.sse", HELLO_ZH), ("hello_en_crlf_v1.sse", HELLO_EN)])


@TRANSCRIPTS
def test_transcript_in_one_piece(name, expected):
    text, reason, error = convert([read_fixture(name)])
    assert error is None
    assert text == expected
    assert reason == "stop"


@TRANSCRIPTS
def test_transcript_under_random_chunkings(name, expected):
    data = read_fixture(name)
    for seed in range(50):
        assert convert(split([data], "random:%d:64" % seed))[0] == expected


@pytest.mark.parametrize("name", ["hello_en_crlf.sse", "hello_en_crlf_v1.sse"])
def test_every_single_byte_split_of_a_short_transcript(name):
    data = read_fixture(name)
    for i in range(len(data) + 1):
        assert convert([data[:i], data[i:]])[0] == HELLO_EN, i


@pytest.mark.parametrize("name", ["hello_zh.sse", "hello_zh_v1.sse"])
def test_byte_by_byte_feeding_splits_every_utf8_character(name):
    assert convert([bytes([b]) for b in read_fixture(name)])[0] == HELLO_ZH


@pytest.mark.parametrize("name", ["hello_zh.sse", "hello_zh_v1.sse"])
def test_deltas_arrive_as_the_upstream_streams_them(name):
    """Each event's new text reaches the client when that event completes, not at the end."""
    conv = Conversion(MarkdownRenderer())
    seen = []
    for block in read_fixture(name).split(b"\n\n"):
        seen.append("".join(conv.feed(block + b"\n\n")))
    assert [s for s in seen if s] == ["你好！", "有什么", "可以帮你", "？😊"]


@pytest.mark.parametrize("name", ["hello_zh.sse", "hello_zh_v1.sse"])
def test_pings_echoes_titles_and_moderation_never_reach_the_client(name):
    text = convert([read_fixture(name)])[0]
    for leaked in ("你是一个乐于助人的助手", "你好你好", "问候与帮助", "2023-12-20", "modr"):
        assert leaked not in text


def script_bytes(make, ask="问题"):
    return b"".join(legacy_events(make(ask, "gpt-4"), "cid-1", []))


def test_in_stream_error_is_an_error_not_a_success():
    text, reason, error = convert([script_bytes(scenarios.stream_error)])
    assert text == "我正在回答，但是"  # what was said before the error is kept
    assert reason is None
    assert error.status == 502 and "Something went wrong" in error.message


def test_answer_that_ends_before_done_is_an_error():
    text, reason, error = convert([script_bytes(scenarios.drop)])
    assert reason is None and error.code == "upstream_incomplete"


def test_a_transfer_cut_by_the_network_is_an_error_even_after_done():
    _, reason, error = convert([read_fixture("hello_zh.sse")], cut=True)
    assert reason is None and error.code == "upstream_incomplete"


def test_an_empty_answer_is_an_error():
    text, reason, error = convert([script_bytes(scenarios.empty)])
    assert text == ""
    assert error.code == "empty_answer"


def test_max_tokens_finishes_with_length():
    text, reason, error = convert([script_bytes(scenarios.max_tokens)])
    assert (text, reason, error) == ("这段回答被截断了 because it hit the limit", "length", None)


def test_moderation_block_finishes_with_content_filter():
    assert convert([script_bytes(scenarios.blocked)])[1] == "content_filter"


def test_long_answer_is_exact_under_random_chunking():
    data = script_bytes(lambda ask, model: scenarios.long(ask, model, chars=3000))
    expected = scenarios.long("", "gpt-4", chars=3000).messages[0].text
    assert convert(split([data], "random:3:4096"))[0] == expected


def test_messages_the_request_sent_are_never_part_of_the_answer():
    """Even if the upstream echoes an assistant message from the history, it is not answer text."""
    history = ('data: {"message": {"id": "sent-1", "author": {"role": "assistant"}, "content": {"content_type": "text", '
               '"parts": ["旧的回答"]}, "status": "finished_successfully", "recipient": "all", "metadata": {}}, '
               '"conversation_id": "c", "error": null}\n\n').encode()
    conv = Conversion(MarkdownRenderer(), echo_ids=["sent-1"])
    out = conv.feed(history + read_fixture("hello_zh.sse")) + conv.close()
    assert "".join(out) == HELLO_ZH


def test_text_the_upstream_takes_back_never_costs_text_added_later():
    """A shorter snapshot (or a v1 truncate) cannot unsend what the client has; everything the
    upstream adds afterwards still arrives, and the log gets a note."""
    def snap(text, status="in_progress"):
        return ('data: {"message": {"id": "m1", "author": {"role": "assistant"}, "content": {"content_type": "text", '
                '"parts": ["%s"]}, "status": "%s", "recipient": "all", "metadata": {}}, "conversation_id": "c"}\n\n'
                % (text, status)).encode()
    legacy = snap("Hello wor") + snap("Hello") + snap("Hello there.", "finished_successfully") + b"data: [DONE]\n\n"
    v1 = (b'event: delta_encoding\ndata: "v1"\n\n'
          b'event: delta\ndata: {"p": "", "o": "add", "v": {"message": {"id": "m1", "author": {"role": "assistant"}, '
          b'"content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "recipient": "all", '
          b'"metadata": {}}, "conversation_id": "c"}, "c": 0}\n\n'
          b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "Hello wor"}\n\n'
          b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "truncate", "v": 5}\n\n'
          b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": " there."}\n\n'
          b'event: delta\ndata: {"p": "/message/status", "o": "replace", "v": "finished_successfully"}\n\n'
          b'data: [DONE]\n\n')
    for stream in (legacy, v1):
        conv = Conversion(MarkdownRenderer())
        assert "".join(feed_all(conv, [stream])) == "Hello wor there."
        assert conv.outcome() == ("stop", None)
        assert conv.warnings == ["the upstream shortened a message after part of it was sent"]
