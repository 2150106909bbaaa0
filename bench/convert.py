"""S2 in-process: the converter pipeline against the parse-only floor, on one long transcript.

The transcript (E events of C characters, every event repeating the whole message so far) is
fed to ``converters.pipeline.Conversion`` in 16 KB pieces, as the network delivers it. The floor
is ``ujson.loads`` of every event's JSON alone: no converter can do less than parse each event
once. Both run in the same process, best of a few rounds.
"""

import time

import ujson

from bench import transcript
from converters.pipeline import Conversion
from converters.render import MarkdownRenderer
from converters.sse import SSEDecoder

NETWORK_CHUNK = 16 * 1024


def _best(fn, rounds):
    best = None
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        t = time.perf_counter() - t
        best = t if best is None else min(best, t)
    return best


def measure(events=4000, chars=4, dialect="legacy", rounds=3):
    rendered, text = transcript.render(events, chars, dialect)
    blob = b"".join(rendered)
    chunks = [blob[i:i + NETWORK_CHUNK] for i in range(0, len(blob), NETWORK_CHUNK)]
    payloads = [ev.data for ev in SSEDecoder().feed(blob) if ev.data[:1] in (b"{", b'"')]
    result = {}

    def convert():
        conv = Conversion(MarkdownRenderer())
        out = []
        for c in chunks:
            out.extend(conv.feed(c))
        out.extend(conv.close())
        result["text"] = "".join(x for x in out if type(x) is str)

    def parse_only():
        loads = ujson.loads
        for p in payloads:
            loads(p)

    floor = _best(parse_only, rounds)
    pipeline = _best(convert, rounds)
    mb = len(blob) / 1e6
    return {"events": events, "chars": chars, "mb": mb, "answer_chars": len(text),
            "floor_s": floor, "pipeline_s": pipeline, "floor_mbps": mb / floor,
            "pipeline_mbps": mb / pipeline, "ratio": pipeline / floor, "exact": result["text"] == text}
