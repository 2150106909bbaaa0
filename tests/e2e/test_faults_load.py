"""Load with faults: 300 concurrent streams while a tenth of the upstream answers fail in
assorted ways (dropped mid-answer, an in-stream error, HTTP 500, an HTML page with status 200,
silence past UPSTREAM_IDLE_TIMEOUT). Every stream ends with its full text or a clean error,
none hangs, nothing stays open, and memory held between rounds does not grow round after round.
"""

import asyncio
import json
import time

from fakeupstream import scenarios
from pgw.runtime import IDLE_GRACE
from tests import rawstream
from tests.helpers import http

STREAMS = 300
CHARS = 300
FAULTS = [
    ("drop", dict(scenario="drop")),
    ("stream_error", dict(scenario="stream_error")),
    ("500", dict(status=500)),
    ("html_200", dict(fault="html_200")),
    ("silence", dict(scenario="long", options={"chars": CHARS}, silence=[3, 8])),
]
EXPECTED = scenarios.long("", "gpt-4", chars=CHARS).messages[0].text


def _plans(upstream, round_):
    plans = {}
    for i in range(STREAMS):
        key = "fk-load-%d-%d-%d" % (round_, i, time.time_ns())
        if i % 10 == 0:
            kind, plan = FAULTS[(i // 10) % len(FAULTS)]
        else:
            kind, plan = "ok", dict(scenario="long", options={"chars": CHARS}, chunking="random:%d" % i, pace_ms=5)
        upstream.plan(key, **plan)
        plans[key] = kind
    return plans


async def _all(url, keys):
    return await asyncio.gather(*(rawstream.achat(url, key, timeout=20) for key in keys))


def _check(kind, answer):
    """A fault ends as a 502 error response or as a stream with an error event and [DONE]."""
    if kind == "ok":
        assert answer.status == 200 and answer.done and answer.error is None, answer.raw[-300:]
        assert answer.text == EXPECTED
        return
    if answer.status == 200:
        assert answer.done and answer.complete_body and answer.error is not None, (kind, answer.raw[-300:])
        assert answer.error["type"] == "upstream_error"
    else:
        assert answer.status == 502 and answer.complete_body, (kind, answer.raw[-300:])
        assert answer.json()["error"]["type"] == "upstream_error"


def _round(gw, upstream, round_):
    plans = _plans(upstream, round_)
    t0 = time.monotonic()
    results = asyncio.run(_all(gw.url, list(plans)))
    took = time.monotonic() - t0
    kinds = {}
    for kind, (answer, _seconds) in zip(plans.values(), results, strict=True):
        _check(kind, answer)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds["ok"] == STREAMS - STREAMS // 10 and sum(kinds.values()) == STREAMS
    assert took < 20  # none hung: each would have waited out its 20 s client timeout
    return took


def _settled(gw, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        health = json.loads(http("GET", gw.url + "/healthz")[2])
        if health["open_streams"] == 0 and health["open_connections"] == 1 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def _round_and_rss(gw, upstream, round_):
    """One round, then the process idle long enough for its idle-time collection
    (runtime.IDLE_GRACE after the last answer): the RSS it holds between bursts."""
    _round(gw, upstream, round_)
    health = _settled(gw)
    assert health["open_streams"] == 0 and health["open_connections"] == 1  # nothing left open
    time.sleep(IDLE_GRACE + 0.5)
    return rawstream.rss_kb(gw.pid)


def test_300_streams_with_a_tenth_failing_all_end_cleanly_and_memory_settles(gateway_factory, upstream):
    gw = gateway_factory(UPSTREAM_IDLE_TIMEOUT=3, NEED_DELETE_CONVERSATION_AFTER_RESPONSE="false")
    rss = [_round_and_rss(gw, upstream, round_) for round_ in range(3)]
    # Memory held after a round does not grow round after round: nothing a faulty stream touched
    # stays behind. A leak of 7 KB a stream would add 2 MB to every round; a one-off step (the
    # allocator keeping a busier round's peak: +2.2 MB once, seen on a loaded machine) shows in
    # one of the two steps only, so the smaller step is the one that tells (measured quiet: +0.2
    # MB a round; +3.5 MB a round while finished answers' garbage waited for the oldest
    # generation's collection).
    steps = [rss[1] - rss[0], rss[2] - rss[1]]
    assert min(steps) < 2 * 1024, rss
    assert "the upstream sent nothing for 3 s" in gw.log_text()
