"""When the gateway collects the oldest generation in full (a pause of every open stream and
every queued request): only when it is really idle, and every FULL_COLLECT_EVERY while busy.

The instant after the last open answer ends is not idle when requests wait in the account
queue for the next one: a full collection there held each of them up by 14 ms (bench Q1).
"""

import gc

import pytest

from pgw import runtime, server


class FakeRun:
    """What StreamWatch reads of a run (one whose client has gone: the sweep skips it)."""

    class sink:
        streaming = False

    class relay:
        closed = True

    closed = True


@pytest.fixture
def collections(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_collect", lambda why="idle": calls.append(why))
    return calls


def finished(watch, n):
    """n answers that began and ended."""
    for _ in range(n):
        run = FakeRun()
        watch.add(run)
        watch.discard(run)


def test_no_full_collection_when_an_answer_begins_right_after_the_last_one_ended(collections):
    watch = runtime.StreamWatch(1.0, 120.0)
    finished(watch, runtime.COLLECT_AFTER)
    added = watch._added
    watch.add(FakeRun())  # the next queued request got its account at once
    watch._collect_if_idle(added)
    assert collections == []
    assert watch._ended >= runtime.COLLECT_AFTER  # so the next idle moment collects


def test_a_full_collection_once_idle_for_the_grace(collections):
    watch = runtime.StreamWatch(1.0, 120.0)
    finished(watch, runtime.COLLECT_AFTER)
    watch._collect_if_idle(watch._added)
    assert collections == ["idle"]


def test_a_full_collection_at_least_every_full_collect_every_while_busy(collections):
    watch = runtime.StreamWatch(1.0, 120.0)
    watch.add(FakeRun())  # never idle
    watch._sweep()
    assert collections == []
    watch._collected_at -= runtime.FULL_COLLECT_EVERY
    watch._sweep()
    assert len(collections) == 1 and collections[0].startswith("busy")


def test_the_oldest_generation_is_never_collected_automatically():
    before = gc.get_threshold()
    try:
        server.tune_gc()
        young, middle, oldest = gc.get_threshold()
        assert (young, middle) == (10000, 10) and oldest >= 1 << 30
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
