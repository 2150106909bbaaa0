"""SSEDecoder(max_event_bytes): an upstream that never ends a line or an event cannot make the
decoder hold more than the limit (plus one chunk); ordinary streams never trip it."""

import pytest

from pgw.converters.sse import Event, EventTooLarge, SSEDecoder


def test_a_line_that_never_ends_raises_once_it_passes_the_limit():
    dec = SSEDecoder(1000)
    dec.feed(b"data: " + b"x" * 500)
    dec.feed(b"x" * 400)  # 906 bytes held: still within
    with pytest.raises(EventTooLarge) as e:
        dec.feed(b"x" * 200)
    assert e.value.limit == 1000


def test_an_event_of_many_short_data_lines_counts_all_of_them():
    dec = SSEDecoder(1000)
    with pytest.raises(EventTooLarge):
        for _ in range(200):
            dec.feed(b"data: 12345678\n")  # no blank line: one event growing


def test_many_events_each_within_the_limit_never_raise():
    dec = SSEDecoder(100)
    events = []
    for i in range(1000):
        events += dec.feed(b"data: %d-" % i + b"y" * 50 + b"\n\n")
    assert len(events) == 1000 and events[-1] == Event(None, b"999-" + b"y" * 50)


def test_the_limit_is_per_event_even_when_a_chunk_holds_several():
    dec = SSEDecoder(100)
    blob = b"".join(b"data: " + b"z" * 60 + b"\n\n" for _ in range(50))  # 3,400 bytes in one chunk
    assert len(dec.feed(blob)) == 50
    assert len(dec.feed(b"data: " + b"z" * 60)) == 0  # the next event, unfinished, within the limit


def test_comment_lines_between_events_do_not_add_up():
    dec = SSEDecoder(100)
    for _ in range(100):
        assert dec.feed(b": keep-alive comment\n") == []
    assert dec.feed(b"data: ok\n\n") == [Event(None, b"ok")]


def test_an_unfinished_event_split_over_many_chunks_is_counted_across_them():
    dec = SSEDecoder(100)
    dec.feed(b"event: delta\n")
    dec.feed(b"data: " + b"a" * 40 + b"\n")
    with pytest.raises(EventTooLarge):
        dec.feed(b"data: " + b"b" * 60 + b"\n")


def test_crlf_framing_counts_the_same():
    dec = SSEDecoder(100)
    for _ in range(100):
        assert dec.feed(b"data: " + b"c" * 80 + b"\r\n\r\n") == [Event(None, b"c" * 80)]


def test_without_a_limit_anything_goes():
    dec = SSEDecoder()
    assert dec.feed(b"data: " + b"x" * (4 << 20)) == []
    assert dec.feed(b"\n\n") == [Event(None, b"x" * (4 << 20))]
