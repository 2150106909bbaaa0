"""The shared queue's scripts against a redis-server of the test's own: a release serves the
queue in the same call and announces the grant; a grant whose message was lost is found by
the waiter's next ACQUIRE; a grant to a waiter that left goes to the next one; a grant no
process takes (its process died) comes back after a heartbeat's time. Processes are played by
the test: a waiter is its id, as RedisPool names waiters.
"""

import time
import uuid

import pytest
import redis

from pgw import pool_redis
from tests.e2e.test_pool import module_redis  # noqa: F401 (a fixture)

TTL, BEAT, QMAX = 30000, 3000, 100


@pytest.fixture
def scripts(module_redis):  # noqa: F811
    client = redis.Redis.from_url(module_redis.url, decode_responses=True)
    prefix = "g" + uuid.uuid4().hex[:8]
    made = {name: client.register_script(getattr(pool_redis, name)) for name in ("ACQUIRE", "RELEASE", "LEAVE")}
    subscription = client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(prefix + ":freed")

    class Scripts:
        def acquire(self, waiter, beat=BEAT):
            return made["ACQUIRE"](args=[prefix, waiter, "gpt-4", ",,", TTL, beat, QMAX, 1, "acc", 1])

        def release(self, slot, beat=BEAT):
            return made["RELEASE"](args=[prefix, "acc", slot, TTL, beat, 1, "acc", 1])

        def leave(self, waiter):
            return made["LEAVE"](args=[prefix, waiter, TTL, BEAT, 1, "acc", 1])

        def messages(self):
            got, deadline = [], time.monotonic() + 2
            while time.monotonic() < deadline:
                message = subscription.get_message(timeout=0.1)
                if message is None and got:
                    return got
                if message is not None:
                    got.append(message["data"])
            return got

        def lease_left_ms(self, slot):
            score = client.zscore(prefix + ":slots:acc", slot)
            return None if score is None else score - client.time()[0] * 1000 - client.time()[1] / 1000

        def grant(self, waiter):
            return client.hget(prefix + ":grants", waiter)

        def queued(self):
            return client.zrange(prefix + ":queue", 0, -1)

    yield Scripts()
    subscription.close()
    client.close()


def test_a_release_gives_the_account_to_the_head_waiter_in_the_same_call(scripts):
    assert scripts.acquire("holder")[:2] == ["ok", "acc"]
    assert scripts.acquire("w1")[0] == "wait" and scripts.acquire("w2")[0] == "wait"
    made = scripts.release("holder")
    assert made[:2] == ["w1", "acc"] and len(made) == 3 and 0 <= int(made[2]) < 2_000_000  # µs since freed
    assert scripts.messages() == ["g w1 acc %s" % made[2]]
    assert scripts.queued() == ["w2"]
    # leased for a heartbeat's time until w1's process takes it and renews it
    assert 0 < scripts.lease_left_ms("w1") <= BEAT
    # the message lost: w1's next ACQUIRE finds the grant
    assert scripts.acquire("w1")[:2] == ["ok", "acc"]
    assert scripts.release("w1")[:2] == ["w2", "acc"]
    assert scripts.grant("w1") is None and scripts.grant("w2") is not None


def test_a_grant_to_a_waiter_that_left_goes_to_the_next_waiter(scripts):
    scripts.acquire("holder")
    scripts.acquire("w1")
    scripts.acquire("w2")
    assert scripts.release("holder")[0] == "w1"
    scripts.messages()
    made = scripts.leave("w1")  # w1's client left as the account was handed to it
    assert made[:2] == ["w2", "acc"]
    assert scripts.lease_left_ms("w1") is None and scripts.grant("w1") is None
    assert scripts.messages() == ["g w2 acc %s" % made[2]]


def test_a_grant_no_process_takes_comes_back_after_a_heartbeat(scripts):
    scripts.acquire("holder")
    scripts.acquire("doomed", beat=300)  # its process dies once the grant is made
    assert scripts.release("holder", beat=300)[0] == "doomed"
    assert scripts.acquire("next")[0] == "wait"  # the lease of the grant still runs
    time.sleep(0.4)
    assert scripts.acquire("next")[:2] == ["ok", "acc"]
    assert scripts.grant("doomed") is None  # the grant went with its lease
