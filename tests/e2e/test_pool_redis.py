"""The account pool in Redis: gateway instances sharing one ``redis-server`` (started here on a
free port, no persistence) share one limit per account and one FIFO order; a killed instance's
leases come back; Redis going away gives clear 503s and the pool recovers when it is back."""

import json
import os
import signal
import threading
import time
import uuid

import pytest

from tests.e2e.test_pool import (REDIS, RedisServer, admin, answer_text, assert_served_in_arrival_order, chat,
                                 conversations, new_accounts, run_threads, start_pool, wait_until)



@pytest.fixture(autouse=True)
def _redis_installed():
    """No silent skip: without redis-server these tests fail and say how to get it."""
    if not os.path.exists(REDIS):
        pytest.fail("redis-server is not installed: run .ci/run (it installs the Debian package redis-server)")


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


def all_given_back(gw):
    """The admin rows once no account has anything in flight (a slot goes back to Redis a round
    trip after its response), else None."""
    rows = admin(gw)["accounts"]
    return rows if all(r["in_flight"] == 0 for r in rows) else None


def shared_pool(gateway_factory, tmp_path, redis_server, accounts, access_key, **settings):
    settings.setdefault("REDIS_PREFIX", "t" + uuid.uuid4().hex[:8])
    return start_pool(gateway_factory, tmp_path, accounts, [access_key], REDIS_URL=redis_server.url,
                      LEASE_TTL=settings.pop("LEASE_TTL", 30), **settings)


def test_two_instances_share_one_limit_per_account_and_one_fifo_order(gateway_factory, upstream, tmp_path,
                                                                       redis_server):
    subs, tokens = new_accounts(3)
    for sub in subs:
        # answers of ~450 ms: a process starved of CPU for a while (a loaded 2-core machine, a
        # whole test run beside) cannot reorder waves; at ~150 ms it did, one run in five under load
        upstream.plan(sub, gate=1, pace_ms=15)
    accounts = [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)]
    key = "ak-" + uuid.uuid4().hex
    prefix = "t" + uuid.uuid4().hex[:8]
    one = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix)
    two = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix, PROCESS_WORKERS=2)
    texts = ["question %02d" % i for i in range(40)]
    results, threads = [None] * 40, []

    def send(i):
        def go():
            results[i] = chat((one, two)[i % 2], key, texts[i])
        t = threading.Thread(target=go)
        t.start()
        threads.append(t)

    for i in range(3):
        send(i)
    wait_until(lambda: all(conversations(upstream, s) for s in subs), what="every account answering")
    for i in range(3, 40):
        send(i)
        wait_until(lambda i=i: admin(one)["queued"] == i - 2, what="request %d queued" % i)
    assert admin(two)["backend"] == "redis" and admin(two)["queued"] == 37  # one queue for both
    for sub in subs:
        upstream.release(sub)
    for t in threads:
        t.join(60)
    assert_served_in_arrival_order(upstream, subs, results, texts)
    rows = wait_until(lambda: all_given_back(two), timeout=2, what="every slot given back")
    assert sum(r["served"] for r in rows) == 40


def test_a_killed_instance_gives_its_accounts_back_within_the_lease_time(gateway_factory, upstream, tmp_path,
                                                                          redis_server):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gate=1)
    accounts = [{"label": "a", "access_token": tokens[0]}]
    key = "ak-" + uuid.uuid4().hex
    prefix = "t" + uuid.uuid4().hex[:8]
    doomed = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix, LEASE_TTL=1.5)
    survivor = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix,
                           LEASE_TTL=1.5)
    def held():
        try:
            chat(doomed, key, "held")
        except OSError:
            pass  # the gateway was killed under it
    run_threads([held])
    wait_until(lambda: admin(survivor)["accounts"][0]["in_flight"] == 1, what="the account held")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.proc.wait(5)
    t0 = time.monotonic()
    upstream.plan(subs[0])  # the account answers again (the fake saw the killed one's request end)
    status, _, body = chat(survivor, key, "after the kill")
    assert status == 200 and "after the kill" in answer_text(body)
    assert time.monotonic() - t0 < 1.5 + 3  # within the lease time (and a poll, on a busy machine)


def test_redis_stopping_gives_503s_and_the_pool_recovers_when_it_is_back(gateway_factory, upstream, tmp_path):
    redis_server = RedisServer()
    try:
        subs, tokens = new_accounts(1)
        key = "ak-" + uuid.uuid4().hex
        gw = shared_pool(gateway_factory, tmp_path, redis_server, [{"label": "a", "access_token": tokens[0]}], key)
        assert chat(gw, key, "before")[0] == 200
        redis_server.stop()
        t0 = time.monotonic()
        status, _, body = chat(gw, key, "during")
        assert status == 503 and json.loads(body)["error"]["code"] == "pool_unavailable"
        assert time.monotonic() - t0 < 5
        assert "during" not in json.dumps(conversations(upstream, subs[0]))
        redis_server = RedisServer(redis_server.port)
        wait_until(lambda: chat(gw, key, "after")[0] == 200, timeout=10, what="the pool back")
        status, _, body = chat(gw, key, "after again")
        assert status == 200 and "after again" in answer_text(body)
    finally:
        redis_server.stop()


def test_instances_share_the_token_cache_and_a_rotated_refresh_token(gateway_factory, upstream, tmp_path,
                                                                      redis_server):
    sub = "rtshared" + uuid.uuid4().hex[:10]
    upstream.plan(sub, rotate=True)
    rt = "rt-%s-%s" % (sub, uuid.uuid4().hex)
    key = "ak-" + uuid.uuid4().hex
    settings = dict(REDIS_PREFIX="t" + uuid.uuid4().hex[:8], REFRESH_URL=upstream.url + "/_fake/oauth/token")
    accounts = [{"label": "r", "refresh_token": rt}]
    one = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, **settings)
    two = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, **settings)

    def grants():
        return [r["grant"] for r in upstream.log(sub) if r.get("grant")]
    assert chat(one, key, "via one")[0] == 200 and chat(two, key, "via two")[0] == 200
    assert len(grants()) == 1  # one exchange for both (they warmed up at once: one waited for the other)
    upstream.plan(sub, rotate=True, tokens_valid_after=time.time())  # signed out elsewhere
    assert chat(one, key, "one after 401")[0] == 200
    assert chat(two, key, "two after 401")[0] == 200  # takes one's new token from Redis
    assert len(grants()) == 2 and grants()[1]["refresh_token"] != rt
    assert not [r for r in upstream.log(sub) if r.get("grant") and r["grant"]["refresh_token"] == rt][1:]


def test_a_killed_instances_waiters_leave_the_shared_queue(gateway_factory, upstream, tmp_path, redis_server):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gate=1)
    accounts = [{"label": "a", "access_token": tokens[0]}]
    key = "ak-" + uuid.uuid4().hex
    prefix = "t" + uuid.uuid4().hex[:8]
    survivor = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix)
    doomed = shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix)
    threads, results = run_threads([lambda: chat(survivor, key, "holder")])
    wait_until(lambda: conversations(upstream, subs[0]), what="the account answering")

    def waits_in_doomed():
        try:
            chat(doomed, key, "never")
        except OSError:
            pass
    run_threads([waits_in_doomed])
    wait_until(lambda: admin(survivor)["queued"] == 1, what="doomed's request in the shared queue")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.proc.wait(5)
    upstream.release(subs[0])
    threads[0].join(10)
    status, _, body = chat(survivor, key, "not held up")
    assert status == 200 and "not held up" in answer_text(body)
    assert "never" not in json.dumps(conversations(upstream, subs[0]))
    assert admin(survivor)["queued"] == 0


def test_a_recheck_by_one_instance_brings_the_account_back_for_all(gateway_factory, upstream, tmp_path,
                                                                     redis_server):
    from tests.e2e.test_pool import probes
    subs, tokens = new_accounts(2)
    revoked, other = subs
    upstream.plan(revoked, tokens_valid_after=time.time() + 3600)  # every call with its token: 401
    accounts = [{"label": "a", "access_token": tokens[0]}, {"label": "b", "access_token": tokens[1]}]
    key = "ak-" + uuid.uuid4().hex
    prefix = "t" + uuid.uuid4().hex[:8]
    one, two = (shared_pool(gateway_factory, tmp_path, redis_server, accounts, key, REDIS_PREFIX=prefix,
                            UNHEALTHY_RECHECK=0.5) for _ in range(2))

    def health(gw, label="a"):
        return {r["label"]: r for r in admin(gw)["accounts"]}[label]["health"]
    status, _, body = chat(one, key, "first")  # a refuses (401) in instance one, b answers
    assert status == 200 and "first" in answer_text(body)
    assert health(two) == "unhealthy"  # the mark lives in Redis
    wait_until(lambda: len(probes(upstream, revoked)) >= 2, timeout=10, what="two re-checks (refused)")
    for gw, text in ((two, "second"), (one, "third")):  # a is the least recently used and left alone by both
        status, _, body = chat(gw, key, text)
        assert status == 200 and text in answer_text(body)
    assert len(conversations(upstream, revoked)) == 1 and len(conversations(upstream, other)) == 3

    upstream.plan(revoked)
    wait_until(lambda: health(one) == "ok" and health(two) == "ok", timeout=10, what="a back in both instances")
    for gw, text in ((two, "back via two"), (one, "back via one")):
        status, _, body = chat(gw, key, text)
        assert status == 200 and text in answer_text(body)
    asked = [r["body"]["messages"][-1]["content"]["parts"][0] for r in conversations(upstream, revoked)]
    assert asked[:2] == ["first", "back via two"]  # a, least recently used, answers as soon as it is back
