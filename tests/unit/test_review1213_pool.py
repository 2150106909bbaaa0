"""Review of issue 13 (account pool): what an operator's reload may not do to answers in flight."""

import asyncio

import pytest

from pgw.pool import Account, MemoryPool

from tests.unit.test_pool_unit import NoTokens, settings


def test_account_removed_and_added_back_while_answering_gets_no_second_message():
    """An operator takes an account out of the file (SIGHUP), then puts it back (SIGHUP) while
    an answer it started is still streaming: the account must not be handed a second message."""
    async def go():
        a1 = Account("a1", "access_token", "tok1")
        pool = MemoryPool(settings(queue_timeout=0.05), [a1], ["ak"], NoTokens())
        lease = await pool.acquire("m")
        await pool.reload([], ["ak"])                                  # a1 taken out mid-answer
        await pool.reload([Account("a1", "access_token", "tok1")], ["ak"])  # and put back
        try:
            second = await pool.acquire("m")
        except Exception as e:  # the queue times out: a1 is still busy with the first answer
            assert getattr(e, "code", None) == "queue_timeout"
        else:
            raise AssertionError("a1 got a second message while answering (lease %s)" % second.label)
        await pool.release(lease)
        third = await pool.acquire("m")   # once the first answer ended, a1 is free again
        assert third.label == "a1"
        await pool.release(third)
        assert pool.state[a1.ident].in_flight == 0
    asyncio.run(go())


def test_a_request_moved_to_another_account_keeps_its_place_in_the_queue():
    """R1 arrived first; its account refused before the answer (busy elsewhere) and it asks for
    another. Requests that arrived after it must not be served before it."""
    async def go():
        pool = MemoryPool(settings(), [Account("a0", "access_token", "t0"), Account("a1", "access_token", "t1")],
                          ["ak"], NoTokens())
        r1 = await pool.acquire("m")
        r2 = await pool.acquire("m")
        later = [asyncio.ensure_future(pool.acquire("m")) for _ in range(2)]  # R3, R4 wait
        await asyncio.sleep(0)
        await pool.release(r1)              # R1's account refused it: given back (R3 takes it) ...
        retry = asyncio.ensure_future(pool.acquire("m", frozenset({r1.ident})))  # ... and R1 asks again
        await asyncio.sleep(0)
        await pool.release(r2)              # the next account to free up is R1's, not R4's
        for _ in range(5):
            await asyncio.sleep(0)
        assert retry.done() and retry.result().label == r2.label
        assert later[0].done() and not later[1].done()
        for f in (retry, later[0]):
            await pool.release(f.result())
        await pool.release(await later[1])
    asyncio.run(go())


@pytest.mark.e2e  # starts its own redis-server: a process, not the pure tier
def test_redis_pool_a_moved_request_keeps_its_place_too(tmp_path):
    """The same rule with the Redis back end (its own redis-server on a free port)."""
    import os
    import uuid

    import pytest

    from tests.e2e.test_pool import REDIS, RedisServer
    if not os.path.exists(REDIS):
        pytest.fail("redis-server is not installed: run .ci/run (it installs the Debian package redis-server)")
    from pgw.pool_redis import RedisPool, connect

    server = RedisServer()
    try:
        s = settings(redis_url=server.url, redis_prefix="r" + uuid.uuid4().hex[:8])

        async def go():
            client = connect(s)
            pool = RedisPool(s, [Account("a0", "access_token", "t0"), Account("a1", "access_token", "t1")],
                             ["ak"], NoTokens(), client)
            pool.start()
            try:
                r1 = await pool.acquire("m")
                r2 = await pool.acquire("m")
                later = [asyncio.ensure_future(pool.acquire("m")) for _ in range(2)]
                while len(pool.waiters) < 2:  # both queued (each a round trip to Redis)
                    await asyncio.sleep(0.01)
                await pool.release(r1)
                await asyncio.wait_for(asyncio.shield(later[0]), 5)   # R3 takes R1's first account
                retry = asyncio.ensure_future(pool.acquire("m", frozenset({r1.ident})))
                while len(pool.waiters) < 2:
                    await asyncio.sleep(0.01)
                await pool.release(r2)
                got = await asyncio.wait_for(asyncio.wait((retry, later[1]), return_when=asyncio.FIRST_COMPLETED), 5)
                assert retry in got[0] and later[1] not in got[0], "a later arrival was served first"
                for f in (retry, later[0]):
                    await pool.release(f.result())
                await pool.release(await asyncio.wait_for(later[1], 5))
            finally:
                pool.close()
                await client.aclose()
        asyncio.run(go())
    finally:
        server.stop()
