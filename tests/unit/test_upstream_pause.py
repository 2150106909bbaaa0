"""Pausing an upstream transfer (a client that does not keep up) against the pinned Tornado and
libcurl, in-process with the fake upstream: while paused nothing more is read (the upstream's
writes back up) and nothing is lost; resumed, the answer arrives whole."""

import asyncio

from tests.unit import test_upstream_client as base
from tests.unit.test_upstream_client import USER, in_loop

FLOOD = 20_000_000  # characters: ~36 MB of events, far more than the sockets between hold


@in_loop
async def test_a_paused_transfer_reads_nothing_more_until_resumed_and_loses_nothing(client):
    client = client()
    base.STATE.plans["k-pause"] = {"flood": FLOOD}
    got = bytearray()
    transfer = None

    def on_chunk(data):
        got.extend(data)
        if len(got) > 1 << 20 and not transfer.paused and not paused_at:
            transfer.pause()
            paused_at.append(len(got))

    paused_at = []
    transfer = client.start_conversation("k-pause", {"messages": USER}, on_chunk)
    assert await transfer.accepted == 200
    for _ in range(100):
        if paused_at:
            break
        await asyncio.sleep(0.02)
    assert paused_at
    buffer = transfer._buffer
    for _ in range(100):  # what Tornado had queued before the pause is still delivered
        if not buffer.chunks and not buffer.flush_scheduled:
            break
        await asyncio.sleep(0.01)
    held = len(got)
    await asyncio.sleep(0.5)  # a slower machine only makes less arrive: nothing may arrive at all
    record = base.STATE.log["k-pause"][0]
    # Paused: what was queued before the pause arrives (at most Tornado's queue of 256 KB), no more.
    assert len(got) == held and held - paused_at[0] <= 256 * 1024 + 128 * 1024
    assert not record["completed"] and not transfer.done.done()

    transfer.resume()
    await transfer.done
    assert transfer.failure is None and record["completed"]
    body = bytes(got)
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b'parts/0", "o": "append"') == FLOOD // 100  # every event of the answer, none twice


@in_loop
async def test_pause_and_resume_many_times_still_gives_every_byte(client):
    client = client()
    base.STATE.plans["k-toggle"] = {"flood": 2_000_000}
    got = bytearray()
    transfer = client.start_conversation("k-toggle", {"messages": USER}, got.extend)
    assert await transfer.accepted == 200
    toggles = 0
    while not transfer.done.done() and toggles < 2000:
        transfer.pause()
        await asyncio.sleep(0.001)
        transfer.resume()
        await asyncio.sleep(0)  # resumed for one loop turn only: the answer cannot finish between two toggles
        toggles += 1
    await transfer.done
    assert transfer.failure is None and toggles > 2
    assert bytes(got).count(b'parts/0", "o": "append"') == 2_000_000 // 100 and got.endswith(b"data: [DONE]\n\n")
