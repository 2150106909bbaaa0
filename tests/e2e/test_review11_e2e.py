"""Review of issue 11, end to end: hostile v1 transcripts written from docs/upstream-protocol.md
section 5 (not by the fake upstream's script), served verbatim by the fake (plan ``raw_sse``),
read with the openai SDK as a chat UI reads them (``delta.content``, ``delta.reasoning_content``).
"""

import pytest

from tests.unit.test_review11_v1 import DONE, HEAD, TEXT, THOUGHTS, delta, end, frame, message, root

ASK = [{"role": "user", "content": "6×7?"}]
REFS = "/message/metadata/content_references"
CITE = "\ue200cite\ue202turn0search0\ue201"
URL = "https://example.org/multiplication"


def transcript():
    """A thinking answer: preamble, thoughts whose summary grows after their content, the recap,
    then the answer whose first append after its root comes bare, a citation created as U+E200
    arrives and filled in inside the same lists, and an opener that never closes."""
    system = message("sys", metadata={"is_visually_hidden_from_conversation": True}, role="system")
    system["status"] = "finished_successfully"
    pre = message("pre", metadata={"is_thinking_preamble_message": True}, channel="commentary")
    th = message("th", {"content_type": "thoughts", "thoughts": [], "source_analysis_msg_id": "x"},
                 {"reasoning_status": "is_reasoning"}, channel="analysis")
    recap = message("recap", {"content_type": "reasoning_recap", "content": "已思考 4 秒"},
                    {"reasoning_status": "reasoning_ended"})
    recap["status"] = "finished_successfully"
    ans = message("ans", metadata={"citations": [], "content_references": []})
    lead = "答案是 42"
    ref = {"matched_text": "\ue200", "start_idx": len(lead), "end_idx": len(lead) + 1, "type": "hidden",
           "invalid": True, "status": "in_progress"}
    fill = [{"p": REFS + "/0/matched_text", "o": "append", "v": CITE[1:]},
            {"p": REFS + "/0/end_idx", "o": "replace", "v": len(lead) + len(CITE)},
            {"p": REFS + "/0/type", "o": "replace", "v": "grouped_webpages"},
            {"p": REFS + "/0/items", "o": "replace", "v": [{"title": "Tables", "url": URL, "attribution": "Example"}]},
            {"p": REFS + "/0/invalid", "o": "remove"},
            {"p": REFS + "/0/status", "o": "replace", "v": "done"}]
    return (HEAD + delta(root(system, 0, bare=False)) + frame({"type": "title_generation", "title": "乘法"})
            + delta(root(pre, 1)) + delta({"p": TEXT, "o": "append", "v": "我来算一下。"}) + delta(end())
            + delta(root(th, 2))
            + delta({"p": THOUGHTS, "o": "append", "v": [{"summary": "", "content": "", "chunks": [],
                                                          "finished": False}]})
            + delta({"p": THOUGHTS + "/0/content", "o": "append", "v": "6×7"}) + delta({"v": " = 42。"})
            + delta({"p": THOUGHTS + "/0/summary", "o": "append", "v": "乘法"})
            + delta({"p": THOUGHTS + "/0/content", "o": "append", "v": "没错。"}) + delta(end())
            + delta(root(recap, 3)) + delta(root(ans, 4)) + delta({"v": lead})
            + delta({"p": "", "o": "patch", "v": [{"p": TEXT, "o": "append", "v": "\ue200"},
                                                  {"p": REFS, "o": "append", "v": [ref]}]})
            + frame({"type": "server_ste_metadata", "metadata": {"model_slug": "i-mini"}})
            + delta({"p": "", "o": "patch", "v": [{"p": TEXT, "o": "append", "v": CITE[1:]}] + fill})
            + delta({"p": TEXT, "o": "append", "v": "。见 \ue200cite\ue202turn0"})
            + delta({"p": TEXT, "o": "append", "v": "search1 乘法表。"})
            + delta(end()) + frame({"type": "message_stream_complete", "conversation_id": "c-r11"})
            + frame({"type": "title_generation", "title": "乘法 2"}) + DONE).decode()


CONTENT = "答案是 42[[Example](%s)]。见 乘法表。" % URL
REASONING = "我来算一下。\n\n6×7 = 42。没错。\n已思考 4 秒"


@pytest.mark.parametrize("chunking", ["event", "bytes:1", "random:3"])
def test_a_hostile_thinking_and_cited_answer_streams_as_section_5_says(gateway, upstream, key, chunking):
    upstream.plan(key, raw_sse=transcript(), chunking=chunking)
    chunks = list(gateway.client(key).chat.completions.create(model="gpt-5-thinking", messages=ASK, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == CONTENT
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == REASONING
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_same_answer_non_stream(gateway, upstream, key):
    upstream.plan(key, raw_sse=transcript(), chunking="random:9")
    done = gateway.client(key).chat.completions.create(model="gpt-5-thinking", messages=ASK)
    assert done.choices[0].message.content == CONTENT
    assert getattr(done.choices[0].message, "reasoning_content", None) == REASONING
    assert done.choices[0].finish_reason == "stop"


def split_emoji():
    """An emoji whose two UTF-16 halves come in two appends, as \\uXXXX escapes (JSON allows a
    lone surrogate escape; an upstream that cuts text by UTF-16 units sends this)."""
    body = (HEAD + delta(root(message("ans"), 0, bare=False)) + delta({"p": TEXT, "o": "append", "v": "好 "})
            + b'event: delta\ndata: {"v": "\\ud83d"}\n\n' + b'event: delta\ndata: {"v": "\\ude00 ok"}\n\n'
            + b'event: delta\ndata: {"v": " \\udc00!"}\n\n' + delta(end()) + DONE)
    return body.decode()


@pytest.mark.parametrize("stream", [True, False])
def test_an_emoji_split_between_two_appends_arrives_whole(gateway, upstream, key, stream):
    upstream.plan(key, raw_sse=split_emoji())
    client = gateway.client(key)
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        text = client.chat.completions.create(model="gpt-4o", messages=ASK).choices[0].message.content
    assert text == "好 😀 ok \ufffd!"  # a half that has no other half is a replacement character
