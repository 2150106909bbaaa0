"""Fuzzing the SSE framing and the converters (hypothesis): whatever an upstream sends, split
however the network splits it, nothing raises; valid answers give the same text under any
chunking, and a plain answer gives exactly its text.

Random bytes model a broken or hostile upstream (a proxy's error page, a truncated stream,
garbage); random valid event sequences are rendered from random scripts by the fake upstream's
own renderers (fakeupstream/script.py) in both dialects, with LF or CRLF framing.
"""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakeupstream.script import Msg, Script, legacy_events, v1_events
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer
from pgw.converters.sse import Event, EventTooLarge, SSEDecoder

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def chunked(blob, cuts):
    """``blob`` split at the (sorted, de-duplicated) offsets ``cuts``."""
    points = sorted({c % (len(blob) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(blob[last:p])
        last = p
    pieces.append(blob[last:])
    return pieces


def run_conversion(pieces, renderer=None, encoding="auto", limit=None):
    """Feed the pieces, close, ask the outcome: (items, outcome); raises only what the caller allows."""
    conv = Conversion(renderer or MarkdownRenderer(), encoding, max_event_bytes=limit)
    out = []
    for piece in pieces:
        out.extend(conv.feed(piece))
    out.extend(conv.close())
    return out, conv.outcome()


def text_of(items):
    return "".join(x for x in items if isinstance(x, str))


# What a hostile or broken upstream may send: SSE-looking fragments and JSON-looking fragments
# mixed with any bytes, so that the decoder and the dialects get past their first checks.
FRAGMENTS = st.sampled_from([
    b"data: ", b"data:", b"event: delta\n", b"event: ping\n", b"\n", b"\r\n", b"\r", b"\n\n", b": c\n",
    b'{"message": {"id": "m", "author": {"role": "assistant"}, "content": {"content_type": "text", "parts": ["',
    b'"]}, "status": "in_progress", "recipient": "all", "metadata": {}}, "conversation_id": "c"}',
    b'{"p": "/message/content/parts/0", "o": "append", "v": "', b'{"v": "', b'"}', b'{"p": "", "o": "add", "v": ',
    b'{"p": "", "o": "patch", "v": [', b"]}", b'"finished_successfully"', b"[DONE]", b'"v1"', b"\xef\xbb\xbf",
    b"\xff\xfe", b"\xe4\xbd", b"\\u4f60", b"\\ud83d", b"null", b"{", b"}", b"[", b",", b'"error": "x"',
])
HOSTILE = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=24)), max_size=40).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@FUZZ
@given(blob=HOSTILE, cuts=CUTS)
def test_random_bytes_never_make_the_sse_decoder_raise(blob, cuts):
    whole = SSEDecoder()
    expected = whole.feed(blob) + whole.close()
    dec = SSEDecoder()
    got = []
    for piece in chunked(blob, cuts):
        got.extend(dec.feed(piece))
    got.extend(dec.close())
    assert got == expected  # the framing does not depend on where the network cut
    assert all(isinstance(e, Event) and isinstance(e.data, bytes) for e in got)


@FUZZ
@given(blob=HOSTILE, cuts=CUTS, limit=st.integers(min_value=1, max_value=64))
def test_the_event_size_limit_raises_only_its_own_error_and_only_past_the_limit(blob, cuts, limit):
    dec = SSEDecoder(limit)
    pieces = chunked(blob, cuts)
    try:
        for piece in pieces:
            dec.feed(piece)
    except EventTooLarge as e:
        assert e.limit == limit
        # something unfinished really held more than the limit: a line or an event's lines
        assert max(len(part) for part in blob.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n")) > limit


@FUZZ
@given(blob=HOSTILE, cuts=CUTS, bot=st.booleans(), encoding=st.sampled_from(["auto", "legacy", "v1"]))
def test_random_bytes_never_make_a_conversion_raise(blob, cuts, bot, encoding):
    renderer = BotRenderer() if bot else MarkdownRenderer()
    items, (reason, error) = run_conversion(chunked(blob, cuts), renderer, encoding)
    assert (reason is None) != (error is None)
    assert error is None or error.status == 502


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
CONTENT = st.sampled_from(["text", "code", "execution_output"])


@st.composite
def scripts(draw):
    """A random answer the upstream could give: messages of prose, code and tool output."""
    messages = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(CONTENT)
        if kind == "code":
            messages.append(Msg(draw(TEXT), recipient="python", content_type="code", step=draw(st.integers(1, 9))))
        elif kind == "execution_output":
            messages.append(Msg(draw(TEXT), role="tool", name="python", content_type="execution_output",
                                step=draw(st.integers(1, 30))))
        else:
            messages.append(Msg(draw(TEXT), step=draw(st.integers(1, 9))))
    return Script(messages, error=draw(st.sampled_from([None, "Something went wrong"])),
                  blocked=draw(st.booleans()), done=draw(st.booleans()), ascii=draw(st.booleans()))


def render(script, dialect, crlf, pings):
    events = (legacy_events if dialect == "legacy" else v1_events)(script, "conv-1", [], pings=pings)
    blob = b"".join(events)
    return blob.replace(b"\n", b"\r\n") if crlf else blob


@FUZZ
@given(script=scripts(), dialect=st.sampled_from(["legacy", "v1"]), crlf=st.booleans(), pings=st.booleans(),
       cuts=CUTS, seed=st.integers(0, 1 << 30), bot=st.booleans())
def test_valid_answers_give_the_same_text_under_any_chunking(script, dialect, crlf, pings, cuts, seed, bot):
    blob = render(script, dialect, crlf, pings)
    make = BotRenderer if bot else MarkdownRenderer
    whole_items, whole_outcome = run_conversion([blob], make())
    items, outcome = run_conversion(chunked(blob, cuts), make())
    assert text_of(items) == text_of(whole_items)
    assert (outcome[0], outcome[1] and outcome[1].code) == (whole_outcome[0], whole_outcome[1] and
                                                             whole_outcome[1].code)
    rng = random.Random(seed)  # and byte by byte in places: every cut inside a character, a CRLF
    small, i = [], 0
    while i < len(blob):
        n = rng.choice((1, 1, 2, 3, 7, 64))
        small.append(blob[i:i + n])
        i += n
    items, outcome = run_conversion(small, make())
    assert text_of(items) == text_of(whole_items)


# Plain prose: no private-use characters (today's stream marks citations with them, and the
# renderers drop them), no citation brackets, no line breaks or edge spaces a renderer may tidy.
PROSE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Co")), max_size=60)


@FUZZ
@given(text=PROSE.filter(lambda t: t.strip() == t and "\n" not in t and "【" not in t), step=st.integers(1, 9),
       dialect=st.sampled_from(["legacy", "v1"]), cuts=CUTS, ascii=st.booleans())
def test_a_plain_answer_gives_exactly_its_text(text, step, dialect, cuts, ascii):
    script = Script([Msg(text, step=step)], ascii=ascii)
    items, (reason, error) = run_conversion(chunked(render(script, dialect, False, True), cuts))
    if text:
        assert error is None and reason == "stop"
        assert text_of(items) == text
