"""The SSE decoder follows the WHATWG rules, whatever the network chunking."""

import random

from pgw.converters.sse import Event, SSEDecoder


def decode(chunks):
    d = SSEDecoder()
    events = []
    for c in chunks:
        events.extend(d.feed(c))
    events.extend(d.close())
    return events


def test_line_ends_lf_crlf_and_cr_are_all_line_ends():
    for sep in (b"\n", b"\r\n", b"\r"):
        stream = b"data: one" + sep + sep + b"data: two" + sep + sep
        assert decode([stream]) == [Event(None, b"one"), Event(None, b"two")], sep


def test_comments_event_names_and_multiline_data():
    stream = (b": keep-alive\n\n"
              b"event: ping\ndata: 2023-12-20 12:34:56\n\n"
              b"data: first line\ndata:second line\n\n"
              b"data\n\n"
              b"id: 7\nretry: 10\ndata: x\n\n")
    assert decode([stream]) == [
        Event("ping", b"2023-12-20 12:34:56"),
        Event(None, b"first line\nsecond line"),
        Event(None, b""),
        Event(None, b"x"),
    ]


def test_event_name_does_not_leak_into_the_next_event():
    assert decode([b"event: delta\ndata: 1\n\ndata: 2\n\n"]) == [Event("delta", b"1"), Event(None, b"2")]


def test_an_event_without_its_blank_line_is_discarded_at_end_of_stream():
    assert decode([b"data: complete\n\ndata: cut off"]) == [Event(None, b"complete")]


def test_every_single_split_point_gives_the_same_events():
    stream = "data: {\"t\": \"你好😊\"}\r\n\r\nevent: ping\r\ndata: 2023\r\n\r\ndata: [DONE]\r\n\r\n".encode()
    whole = decode([stream])
    assert whole == [Event(None, '{"t": "你好😊"}'.encode()), Event("ping", b"2023"), Event(None, b"[DONE]")]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            assert decode([stream[:i], stream[i:j], stream[j:]]) == whole, (i, j)


def test_split_between_cr_and_lf_does_not_make_an_extra_blank_line():
    # "data: a\r" | "\n" | "data: b\r\n\r\n": a CRLF split in two must stay one line end.
    assert decode([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [Event(None, b"a\nb")]


def test_random_chunkings_of_a_long_stream():
    stream = b"".join(b'data: {"n": %d, "s": "\xe4\xbd\xa0\xe5\xa5\xbd"}\n\n' % i for i in range(300))
    whole = decode([stream])
    assert len(whole) == 300
    rng = random.Random(5)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 40))
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)], strict=False)]
        assert decode(pieces) == whole


def test_an_unfinished_event_is_dropped_however_the_crlf_was_split():
    # The CR and LF of the last line arrive apart: still no blank line, so no event.
    assert decode([b"data\r", b"\n"]) == []
    assert decode([b'data: {"x":1}\r', b"\n"]) == []
    assert decode([b'data: {"x":1}\r\n']) == []


def test_a_byte_order_mark_at_the_start_is_dropped_wherever_it_is_split():
    stream = b"\xef\xbb\xbfdata: x\n\ndata: \xef\xbb\xbfy\n\n"
    expected = [Event(None, b"x"), Event(None, b"\xef\xbb\xbfy")]  # only the first one is a BOM
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == expected, cut
    assert decode([stream[i:i + 1] for i in range(len(stream))]) == expected
    assert decode([b"\xef\xbb"]) == []
