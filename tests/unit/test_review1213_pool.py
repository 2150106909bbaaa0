"""Review of issue 13 (account pool): what an operator's reload may not do to answers in flight."""

import asyncio

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
        assert pool.state["a1"].in_flight == 0
    asyncio.run(go())
