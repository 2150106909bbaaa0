"""The Redis pool's races, in process, against a redis-server of the test's own: two RedisPools
on one prefix play two gateway processes. Found by a review of the grant protocol (each failed
before its fix): a retry tick during a new waiter's first ACQUIRE leased it two accounts; a
lost grant for a waiter that was not its process's first was never taken; a request cancelled
during its first ACQUIRE kept an account for good.
"""

import asyncio
import contextlib
import uuid

import pytest

from pgw.pool import Account
from pgw.pool_redis import RedisPool, connect
from tests.e2e.test_pool import RedisServer
from tests.unit.test_pool_unit import NoTokens, settings


@pytest.fixture(scope="module")
def server():
    s = RedisServer()
    yield s
    s.stop()


def _settings(server, **changes):
    return settings(redis_url=server.url, redis_prefix="r" + uuid.uuid4().hex[:8], **changes)


def _accounts():
    return [Account("a0", "access_token", "t0"), Account("a1", "access_token", "t1")]


@contextlib.asynccontextmanager
async def _pool(s):
    """One RedisPool (one gateway process) and its client, started, closed after."""
    client = connect(s)
    pool = RedisPool(s, _accounts(), ["ak"], NoTokens(), client)
    pool.start()
    try:
        yield client, pool
    finally:
        pool.close()
        await client.aclose()


async def _slots(client, pool):
    """Each account's leases in Redis, by label."""
    return {a.label: await client.zrange("%s:slots:%s" % (pool.prefix, a.ident), 0, -1)
            for a in pool.accounts.values()}


def test_a_retry_during_a_new_waiters_first_acquire_leases_it_one_account(server):
    s = _settings(server, queue_timeout=5)

    async def go():
        async with _pool(s) as (client, pool):
            task = asyncio.ensure_future(pool.acquire("m"))
            await asyncio.sleep(0)
            pool._kick()  # what the twice-a-second poll does while a waiter is known
            lease = await asyncio.wait_for(task, 5)
            await asyncio.sleep(0.2)
            booked = [label for label, members in (await _slots(client, pool)).items() if lease.token_id in members]
            assert booked == [lease.label]
    asyncio.run(go())


def test_a_lost_grant_to_a_waiter_behind_another_is_taken_by_the_poll(server):
    s = _settings(server, queue_timeout=6)

    async def go():
        async with _pool(s) as (_, a), _pool(s) as (_, b):
            held = [await b.acquire("m"), await b.acquire("m")]  # both accounts busy, in process B
            a0 = next(lease for lease in held if lease.label == "a0")
            a._listener.cancel()  # A hears no grants (its subscription dropped)
            first = asyncio.ensure_future(a.acquire("m", frozenset({a0.ident})))  # can only use a1
            while len(a.waiters) < 1:
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(a.acquire("m"))
            while len(a.waiters) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            await b.release(a0)  # a0 goes to `second` (first excludes it); its message is lost
            lease = await asyncio.wait_for(second, 4)
            assert lease.label == "a0" and not first.done()
            first.cancel()
    asyncio.run(go())


def test_a_request_cancelled_during_its_first_acquire_holds_no_account(server):
    s = _settings(server, queue_timeout=5)

    async def go():
        async with _pool(s) as (client, pool):
            task = asyncio.ensure_future(pool.acquire("m"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(3.5)  # past a heartbeat's time, and a few renewals
            assert not any((await _slots(client, pool)).values())
            assert not pool.held and not pool.waiters
    asyncio.run(go())
