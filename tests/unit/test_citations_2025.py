"""2025-2026 citations (docs/upstream-protocol.md 5.4): markers ``\\ue200…\\ue201`` resolved through
``metadata.content_references``, in normal and bot mode, under any chunking; no private-use
character ever reaches a client.

The transcripts are written here by hand from section 5.4 (references created as U+E200 arrives
and filled in within the same patch list, patched in after their text, known before it, never
sent); the expected texts are written out by hand. A property test checks the answer stage
against a plain reference: the whole text, every marker replaced at once.
"""

import json
import random
import re

from hypothesis import given, settings, strategies as st
import pytest

from tests.helpers import feed_all
from pgw.converters.answer import Answer
from pgw.converters.events import Message
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer

U0 = "https://www.tornadoweb.org/en/stable/releases/v6.4.0.html"
U1 = "https://www.tornadoweb.org/en/stable/#installation"
U2 = "https://tornado.readthedocs.io/"
ITEM0 = {"title": "Tornado 6.4 released", "url": U0, "attribution": "tornadoweb.org", "pub_date": None}
ITEMS12 = [{"title": "Installation", "url": U1, "attribution": "Tornado"},
           {"title": "Tornado docs", "url": U2, "attribution": "Read the Docs"}]
CITE0 = "\ue200cite\ue202turn0search0\ue201"
ENTITY = '\ue200entity\ue202["software","Python","programming language"]\ue201'
CITE12 = "\ue200cite\ue202turn0search1\ue202turn0news2\ue201"
CITE9 = "\ue200cite\ue202turn0search9\ue201"


def delta(obj):
    return b"event: delta\ndata: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def frame(obj):
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


TEXT = "/message/content/parts/0"
REFS = "/message/metadata/content_references"


def transcript():
    """An English search answer, every kind of reference timing in one message."""
    a = "Tornado 6.4 came out in November 2023"
    s0 = len(a)
    b = " and needs "
    s_entity = s0 + len(CITE0) + len(b)
    c = " 3.8+.\ue203It is fast\ue204"
    s12 = s_entity + len(ENTITY) + len(c)
    d = " Old claims "
    e = " are wrong."
    message = {"id": "a1", "author": {"role": "assistant", "name": None, "metadata": {}}, "content":
               {"content_type": "text", "parts": [""]}, "status": "in_progress", "end_turn": None,
               "metadata": {"citations": [], "content_references": []}, "recipient": "all", "channel": "final"}
    return [
        b'event: delta_encoding\ndata: "v1"\n\n',
        delta({"p": "", "o": "add", "v": {"message": message, "conversation_id": "c1", "error": None}, "c": 0}),
        delta({"p": TEXT, "o": "append", "v": a}),
        # the marker opens: its entry is created in the same list, invalid
        delta({"p": "", "o": "patch", "v": [
            {"p": TEXT, "o": "append", "v": "\ue200cite\ue202tu"},
            {"p": REFS, "o": "append", "v": [{"matched_text": "\ue200cite\ue202tu", "start_idx": s0,
                                              "end_idx": s0 + 9, "type": "hidden", "invalid": True}]}]}),
        # ... and is filled in as the marker closes, in the same list as the text
        delta({"p": "", "o": "patch", "v": [
            {"p": TEXT, "o": "append", "v": "rn0search0\ue201" + b},
            {"p": REFS + "/0/matched_text", "o": "append", "v": "rn0search0\ue201"},
            {"p": REFS + "/0/end_idx", "o": "replace", "v": s0 + len(CITE0)},
            {"p": REFS + "/0/type", "o": "replace", "v": "grouped_webpages"},
            {"p": REFS + "/0/items", "o": "add", "v": [ITEM0]},
            {"p": REFS + "/0/invalid", "o": "remove"},
            {"p": REFS + "/0/status", "o": "add", "v": "done"}]}),
        # the entity's reference comes two events after its text
        delta({"p": TEXT, "o": "append", "v": ENTITY[:7]}),
        delta({"v": ENTITY[7:] + c[:4]}),
        delta({"v": c[4:]}),
        delta({"p": REFS, "o": "append", "v": [{"matched_text": ENTITY, "start_idx": s_entity,
                                               "end_idx": s_entity + len(ENTITY), "type": "entity", "alt": "Python"}]}),
        # the next citation's reference is known before its text arrives
        delta({"v": [{"matched_text": CITE12, "start_idx": s12, "end_idx": s12 + len(CITE12),
                      "type": "grouped_webpages", "items": ITEMS12}]}),
        delta({"p": TEXT, "o": "append", "v": CITE12 + d}),
        # a marker whose reference never comes
        delta({"v": CITE9 + e}),
        delta({"p": "", "o": "patch", "v": [
            {"p": REFS, "o": "append", "v": [{"matched_text": " ", "start_idx": s12 + len(CITE12) + len(d) + len(CITE9)
                                              + len(e), "end_idx": s12 + len(CITE12) + len(d) + len(CITE9) + len(e),
                                              "type": "sources_footnote", "sources": [ITEM0]}]},
            {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/end_turn", "o": "replace", "v": True},
            {"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}, "is_complete": True}}]}),
        frame({"type": "message_stream_complete", "conversation_id": "c1"}),
        b"data: [DONE]\n\n",
    ]


EXPECTED = {
    "markdown": ("Tornado 6.4 came out in November 2023[[tornadoweb.org](%s)] and needs Python 3.8+.It is fast"
                 "[[Tornado](%s)][[Read the Docs](%s)] Old claims are wrong.\n\nSources:\n"
                 "- [Tornado 6.4 released](%s)\n" % (U0, U1, U2, U0)),
    "bot": "Tornado 6.4 came out in November 2023 and needs Python 3.8+.It is fast Old claims are wrong.",
    "bot-references": ("Tornado 6.4 came out in November 2023[1] and needs Python 3.8+.It is fast[2][3] Old claims "
                       "are wrong.\n\n[1] Tornado 6.4 released %s\n[2] Installation %s\n[3] Tornado docs %s"
                       % (U0, U1, U2)),
}
RENDERERS = {"markdown": MarkdownRenderer, "bot": BotRenderer,
             "bot-references": lambda: BotRenderer(reference_output=True)}

# A short Chinese answer: the reference arrives in the event after the marker closes.
ZH_MARKER = "\ue200cite\ue202turn0search0\ue201"
ZH = [
    b'event: delta_encoding\ndata: "v1"\n\n',
    delta({"p": "", "o": "add", "c": 0, "v": {"message": {
        "id": "a1", "author": {"role": "assistant"}, "content": {"content_type": "text", "parts": [""]},
        "status": "in_progress", "metadata": {"content_references": []}, "recipient": "all"},
        "conversation_id": "c1", "error": None}}),
    delta({"p": TEXT, "o": "append", "v": "北京是中国的首都。" + ZH_MARKER[:3]}),
    delta({"v": ZH_MARKER[3:] + "人口约 2100 万。"}),
    delta({"p": REFS, "o": "append", "v": [{"matched_text": ZH_MARKER, "start_idx": 9, "end_idx": 9 + len(ZH_MARKER),
                                           "type": "grouped_webpages",
                                           "items": [{"title": "北京市人民政府", "url": "https://www.beijing.gov.cn/",
                                                      "attribution": "北京市政府"}]}]}),
    delta({"p": "", "o": "patch", "v": [{"p": "/message/status", "o": "replace", "v": "finished_successfully"},
                                        {"p": "/message/metadata", "o": "append",
                                         "v": {"finish_details": {"type": "stop"}}}]}),
    frame({"type": "message_stream_complete", "conversation_id": "c1"}),
    b"data: [DONE]\n\n",
]
ZH_EXPECTED = {
    "markdown": "北京是中国的首都。[[北京市政府](https://www.beijing.gov.cn/)]人口约 2100 万。",
    "bot": "北京是中国的首都。人口约 2100 万。",
    "bot-references": "北京是中国的首都。[1]人口约 2100 万。\n\n[1] 北京市人民政府 https://www.beijing.gov.cn/",
}

PUA = re.compile("[\ue000-\uf8ff]")


def convert(pieces, renderer):
    conv = Conversion(renderer)
    items = feed_all(conv, pieces)
    assert all(type(i) is str for i in items), items
    reason, error = conv.outcome()
    assert error is None and reason == "stop"
    text = "".join(items)
    assert not PUA.search(text)
    return text


def chunks(blob, seed, most=30):
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(blob):
        n = rng.randint(1, most)
        pieces.append(blob[i:i + n])
        i += n
    return pieces


MODES = pytest.mark.parametrize("mode", sorted(RENDERERS))


@MODES
def test_references_resolve_however_they_are_timed(mode):
    assert convert(transcript(), RENDERERS[mode]()) == EXPECTED[mode]


@MODES
@pytest.mark.parametrize("seed", range(10))
def test_random_chunkings_give_the_same(mode, seed):
    assert convert(chunks(b"".join(transcript()), seed), RENDERERS[mode]()) == EXPECTED[mode]


@MODES
def test_chinese_answer_one_piece_and_every_single_byte_split(mode):
    blob = b"".join(ZH)
    assert convert([blob], RENDERERS[mode]()) == ZH_EXPECTED[mode]
    for cut in range(1, len(blob)):
        assert convert([blob[:cut], blob[cut:]], RENDERERS[mode]()) == ZH_EXPECTED[mode], cut


def test_a_marker_is_held_until_its_reference_is_known_and_not_longer():
    conv = Conversion(MarkdownRenderer())
    out = []
    for ev in ZH[:4]:
        out += conv.feed(ev)
    assert "".join(out) == "北京是中国的首都。"  # the marker and what follows it wait
    assert "".join(conv.feed(ZH[4])) == "[[北京市政府](https://www.beijing.gov.cn/)]人口约 2100 万。"


# The answer stage alone: what it passes on, recorded


class Recorder:
    def __init__(self):
        self.out = []

    def prose(self, text):
        self.out.append(text)

    def links(self, sources):
        self.out.append("<%s>" % ",".join(s.url for s in sources))

    def footnote(self, sources):
        self.out.append("<footnote %s>" % ",".join(s.url for s in sources))

    def cite(self, cite):
        self.out.append("<cite %s>" % cite.number)


def ref(marker, kind, text, **more):
    start = text.index(marker)
    return dict({"matched_text": marker, "start_idx": start, "end_idx": start + len(marker), "type": kind}, **more)


def run(pieces, refs_at):
    """Feed ``pieces`` of one message's text; ``refs_at[i]``: the references known once piece i
    has been fed (the dialect calls update on a change)."""
    msg = Message("m1", "assistant")
    msg.metadata = {"content_references": []}
    rec = Recorder()
    answer = Answer(rec)
    answer.start(msg)
    for i, piece in enumerate(pieces):
        answer.text(msg, piece)
        if i in refs_at:
            msg.metadata = {"content_references": refs_at[i]}
            answer.update(msg)
    answer.end(msg)
    answer.close()
    return "".join(rec.out)


SAMPLE = ("See" + CITE0 + " the \ue203docs\ue204 on " + ENTITY + " and" + CITE12 + "." + CITE9 + "\ue206")
SAMPLE_REFS = [ref(CITE0, "grouped_webpages", SAMPLE, items=[ITEM0]), ref(ENTITY, "entity", SAMPLE, alt="Python"),
               ref(CITE12, "grouped_webpages", SAMPLE, items=ITEMS12), ref(CITE9, "hidden", SAMPLE)]
SAMPLE_OUT = "See<%s> the docs on Python and<%s,%s>.<>" % (U0, U1, U2)


def test_every_split_into_two_or_three_pieces_loses_nothing():
    n = len(SAMPLE)
    for i in range(n + 1):
        for j in range(i, n + 1, 3):
            pieces = [SAMPLE[:i], SAMPLE[i:j], SAMPLE[j:]]
            for when in (-1, 0, 1, 2):  # references known before, or after piece 0, 1, 2
                refs_at = {max(when, 0): SAMPLE_REFS}
                if when == -1:
                    refs_at = {}
                got = run(pieces, refs_at) if when != -1 else run_known(pieces)
                assert got == SAMPLE_OUT, (i, j, when)


def run_known(pieces):
    msg = Message("m1", "assistant")
    msg.metadata = {"content_references": SAMPLE_REFS}
    rec = Recorder()
    answer = Answer(rec)
    answer.start(msg)
    for piece in pieces:
        answer.text(msg, piece)
    answer.end(msg)
    return "".join(rec.out)


def test_an_unresolved_marker_vanishes_when_the_message_ends():
    assert run(["a" + CITE0 + "b"], {}) == "a<>b"
    assert run(["a\ue200cite\ue202tu"], {}) == "a<>"  # ended inside the marker: it vanishes too
    assert run(["entity: " + ENTITY], {}) == "entity: Python"  # an entity keeps its own name


def test_a_reference_that_never_comes_does_not_stall_the_answer():
    long = "x" * 1500
    msg = Message("m1", "assistant")
    rec = Recorder()
    answer = Answer(rec)
    answer.start(msg)
    answer.text(msg, "a" + CITE0 + long)
    assert "".join(rec.out) == "a<>" + long


def test_two_markers_with_the_same_text_resolve_by_place():
    text = "x" + CITE0 + "y" + CITE0
    refs = [dict(ref(CITE0, "grouped_webpages", text, items=[ITEM0])),
            {"matched_text": CITE0, "start_idx": text.rindex(CITE0), "end_idx": len(text), "type": "hidden"}]
    assert run([text], {0: refs}) == "x<%s>y<>" % U0


def test_a_citation_with_only_its_ready_rendering_links_to_what_it_names():
    text = "x" + CITE0
    refs = [ref(CITE0, "grouped_webpages", text, items=[],
                alt="([OpenAI Help Center](https://help.openai.com/en/articles/1))")]
    assert run([text], {0: refs}) == "x<https://help.openai.com/en/articles/1>"


def test_footnote_sources_are_passed_on_at_the_end():
    text = "Answer."
    refs = [{"matched_text": " ", "start_idx": 7, "end_idx": 7, "type": "sources_footnote",
             "sources": [ITEM0, {"title": "no url"}]}]
    assert run([text], {0: refs}) == "Answer.<footnote %s>" % U0


def test_private_use_characters_never_pass_even_in_tool_material():
    msg = Message("m1", "assistant", recipient="python")
    rec = Recorder()
    rec.block_open = lambda kind, language: rec.out.append("<open>")
    rec.block_text = lambda text: rec.out.append(text)
    rec.block_close = lambda kind: rec.out.append("<close>")
    answer = Answer(rec)
    answer.start(msg)
    answer.text(msg, "print(1)\ue200ci")
    answer.text(msg, "te\ue201 # \ue203ok\ue204")
    answer.end(msg)
    assert "".join(rec.out) == "<open>print(1) # ok<close>"


# Property: the answer stage equals the whole text rendered at once

WORDS = ["Hello", " ", "世界", "。", "(x)", "【注】", "\ue203", "\ue204", "\ue206", "\ue202", "\ue201", "\ue000", "\uf8ff"]
MARKERS = [(CITE0, "grouped_webpages", {"items": [ITEM0]}, "<%s>" % U0),
           (ENTITY, "entity", {"alt": "Python"}, "Python"),
           (CITE12, "grouped_webpages", {"items": ITEMS12}, "<%s,%s>" % (U1, U2)),
           (CITE9, "hidden", {}, "<>"),
           ("\ue200i\ue202turn0image1\ue201", "image_group", {}, "<>")]


@st.composite
def answers(draw):
    """(text, references, the reference rendering of the whole text at once)."""
    parts = draw(st.lists(st.one_of(st.sampled_from(WORDS), st.integers(0, len(MARKERS) - 1)), max_size=25))
    # Whether the upstream sends a marker's reference: per marker text (markers with the same
    # text and only some of their references resolve in order, not by place).
    sent = draw(st.lists(st.booleans(), min_size=len(MARKERS), max_size=len(MARKERS)))
    text, refs, out = "", [], ""
    for p in parts:
        if isinstance(p, int):
            marker, kind, more, shown = MARKERS[p]
            known = sent[p]
            refs.append(dict({"matched_text": marker, "start_idx": len(text), "end_idx": len(text) + len(marker),
                              "type": kind}, **more) if known else None)
            text += marker
            out += shown if known or kind == "entity" else "<>"
        else:
            text += p
            out += PUA.sub("", p)
    return text, [r for r in refs if r], out


@settings(max_examples=300, deadline=None)
@given(answers(), st.lists(st.integers(0, 400), max_size=8), st.integers(-1, 8))
def test_any_split_and_any_reference_timing_equals_the_whole_text_rendered_at_once(answer, cuts, when):
    text, refs, expected = answer
    cuts = sorted(set(min(c, len(text)) for c in cuts))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]
    if when < 0:
        msg_refs = {0: refs} if pieces else {}
        got = run(pieces or [""], msg_refs)
    else:
        got = run(pieces, {min(when, len(pieces) - 1): refs})
    assert not PUA.search(got)
    assert got == expected


# Property: through the whole pipeline, from fake-upstream streams of random answers whose
# references arrive at random times (before, with or after their markers), in both dialects

PROSE_WORDS = ["Tornado", " ", "中文", "。", "\n", "x", "\ue203", "\ue204", "\ue206"]
PIPE_MARKERS = [(CITE0, {"type": "grouped_webpages", "items": [ITEM0]}, "[[tornadoweb.org](%s)]" % U0),
                (ENTITY, {"type": "entity", "alt": "Python"}, "Python"),
                (CITE12, {"type": "grouped_webpages", "items": ITEMS12},
                 "[[Tornado](%s)][[Read the Docs](%s)]" % (U1, U2)),
                (CITE9, {"type": "hidden"}, None)]


def markdown_of(parts):
    """The markdown renderer's text for the whole answer at once: a vanished marker after a
    space or a line break takes the spaces after it along."""
    out, gap = "", False
    for p in parts:
        if isinstance(p, int):
            shown = PIPE_MARKERS[p][2]
            if shown is None:
                gap = gap or out == "" or out[-1] in " \n"
                continue
            text = shown
        else:
            text = PUA.sub("", p)
        if gap:
            text = text.lstrip(" ")
            if not text:
                continue
            gap = False
        out += text
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PROSE_WORDS), st.integers(0, len(PIPE_MARKERS) - 1)), min_size=1,
                max_size=14),
       st.integers(-40, 40), st.booleans(), st.integers(1, 9), st.integers(0, 10 ** 6))
def test_pipeline_any_reference_timing_and_chunking(parts, lag, live, step, seed):
    from fakeupstream.app import split
    from fakeupstream.script import RENDERERS as STREAMS, Msg, Script

    text = "".join(PIPE_MARKERS[p][0] if isinstance(p, int) else p for p in parts)
    refs = [dict(PIPE_MARKERS[p][1], marker=PIPE_MARKERS[p][0]) for p in parts if isinstance(p, int)]
    expected = markdown_of(parts)
    if not expected:
        return  # an answer with nothing to show is an error, tested elsewhere
    for dialect, stream in sorted(STREAMS.items()):
        script = Script([Msg(text, step=step, end_turn=True, references=refs, refs_lag=lag, refs_live=live)],
                        ascii=False)
        events = stream(script, "c1", [])
        conv = Conversion(MarkdownRenderer())
        got = "".join(feed_all(conv, split(events, "random:%d:23" % seed)))
        assert got == expected, dialect
        assert conv.outcome() == ("stop", None)
