"""S2 in-process: the converter pipeline against the parse-only floor, on one long transcript.

The transcript (E events of C characters, every event repeating the whole message so far) is
fed to ``converters.pipeline.Conversion`` in the pieces the gateway gets from libcurl: each of
the upstream's HTTP chunks (one event each) in writes of at most 16 KB (CURL_MAX_WRITE_SIZE).
The gateway's own client, reading the bench upstream at full speed, got 6,564 pieces of at
most 16 KB (median 10.9 KB) for this transcript; the model here makes 6,077. The floor is
``ujson.loads`` of every event's JSON alone: no converter can do less than parse each event
once.

Each piece (and each event for the floor) is copied just before it is timed: data the network
delivers sits in the cache, freshly written by ``recv``. Feeding pieces cut from one 67 MB
buffer instead would time reading it from memory, which the floor's parser overlaps with its
own work and a scan does not. Only the ``feed``/``close`` calls and the ``loads`` calls are
timed; the best of several alternating rounds of each, in the same process.
"""

import time

import ujson

from bench import transcript
from pgw.converters.pipeline import Conversion
from pgw.converters.render import MarkdownRenderer
from pgw.converters.sse import SSEDecoder

CURL_MAX_WRITE_SIZE = 16 * 1024


def pieces(rendered):
    """The transcript as libcurl hands it over: each event in writes of at most 16 KB."""
    return [event[i:i + CURL_MAX_WRITE_SIZE] for event in rendered
            for i in range(0, len(event), CURL_MAX_WRITE_SIZE)]


def _arrived(data):
    """A fresh copy of ``data``, in the cache as if ``recv`` had just written it."""
    return bytes(memoryview(data))


def measure(events=4000, chars=4, dialect="legacy", rounds=7):
    rendered, text = transcript.render(events, chars, dialect)
    chunks = pieces(rendered)
    payloads = [ev.data for ev in SSEDecoder().feed(b"".join(rendered)) if ev.data[:1] in (b"{", b'"')]
    clock = time.perf_counter
    result = {}

    def convert():
        conv = Conversion(MarkdownRenderer())
        out = []
        spent = 0.0
        for c in chunks:
            c = _arrived(c)
            t = clock()
            got = conv.feed(c)
            spent += clock() - t
            out.extend(got)
        t = clock()
        got = conv.close()
        spent += clock() - t
        out.extend(got)
        result["text"] = "".join(x for x in out if type(x) is str)
        return spent

    def parse_only():
        loads = ujson.loads
        spent = 0.0
        for p in payloads:
            p = _arrived(p)
            t = clock()
            loads(p)
            spent += clock() - t
        return spent

    # Alternating rounds, so that a slower spell of the machine hits both sides alike.
    floor = pipeline = float("inf")
    for _ in range(rounds):
        floor = min(floor, parse_only())
        pipeline = min(pipeline, convert())
    mb = sum(map(len, rendered)) / 1e6
    return {"events": events, "chars": chars, "mb": mb, "answer_chars": len(text), "pieces": len(chunks),
            "floor_s": floor, "pipeline_s": pipeline, "floor_mbps": mb / floor,
            "pipeline_mbps": mb / pipeline, "ratio": pipeline / floor, "exact": result["text"] == text}
