"""The upstream client in-process, against the fake upstream app on the same event loop.

Each test is a coroutine run with ``asyncio.run`` (Tornado's IOLoop runs on asyncio). The
pytest-tornado plugin was tried first: its loop fixture leaves ``CurlAsyncHTTPClient`` waiting
forever under Tornado 6.6, so the curl client could not be tested with it.
"""

import asyncio


from pgw.conf.settings import load
from fakeupstream.app import State, listen_app
from pgw.upstream import UpstreamClient

USER = [{"id": "u1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": ["hi"]}, "metadata": {}}]
STATE = None


def in_loop(test):
    """Run ``test(make_client)`` on a fresh loop with the fake upstream listening on it."""
    def run():
        global STATE
        STATE = State()

        async def main():
            url = listen_app(STATE)
            made = []

            def make(base=None):
                c = UpstreamClient(load(environ={"BASE_URL": base or url, "UPSTREAM_CONNECT_TIMEOUT": "2"}))
                made.append(c)
                return c
            try:
                await asyncio.wait_for(test(make), 10)
            finally:
                for c in made:
                    c.close()
        asyncio.run(main())
    run.__name__ = test.__name__
    return run


@in_loop
async def test_streamed_answer_reaches_on_chunk_and_status_is_known(client):
    client = client()
    chunks = []
    transfer = client.start_conversation("k-stream", {"model": "gpt-4", "messages": USER}, chunks.append)
    assert await transfer.accepted == 200
    await transfer.done
    body = b"".join(chunks)
    # the fake escapes non-ASCII as the real upstream does
    assert body.endswith(b"data: [DONE]\n\n") and b"\\u4f60\\u597d\\uff01" in body
    assert transfer.failure is None


@in_loop
async def test_refusal_body_is_kept_for_the_error_message(client):
    client = client()
    STATE.plans["k-refused"] = {"status": 429}
    chunks = []
    transfer = client.start_conversation("k-refused", {"messages": USER}, chunks.append)
    assert await transfer.accepted == 429
    await transfer.done
    assert chunks == [] and b"usage cap" in bytes(transfer.error_body)


@in_loop
async def test_cancel_ends_a_held_transfer_at_once_and_the_upstream_sees_it(client):
    client = client()
    STATE.plans["k-held"] = {"gate": 1}
    transfer = client.start_conversation("k-held", {"messages": USER}, lambda data: None)
    assert await transfer.accepted == 200
    transfer.cancel("test cancels")
    response = await transfer.done
    assert response.code == 599 and transfer.failure == "test cancels"
    for _ in range(50):  # bounded wait for the fake's handler to notice the closed connection
        if STATE.log["k-held"][0]["aborted"]:
            break
        await asyncio.sleep(0.02)
    assert STATE.log["k-held"][0]["aborted"] is True


@in_loop
async def test_unreachable_upstream_is_a_599_response_not_an_exception(client):
    status, data, raw = await client().call("GET", "x", "k")  # reachable: 404 from the fake app
    assert status == 404
    unreachable = client("http://127.0.0.1:1")
    status, data, raw = await unreachable.call("PATCH", "conversation/c", "k", {"is_visible": False})
    assert status == 599 and data is None and raw
    transfer = unreachable.start_conversation("k", {"messages": USER}, lambda data: None)
    assert await transfer.accepted is None
    assert "connect" in transfer.failure.lower()


@in_loop
async def test_the_handle_pool_grows_past_its_initial_size(client):
    client = client()
    transfers = [client.start_conversation("k-pool-%d" % i, {"messages": USER}, lambda d: None) for i in range(40)]
    for t in transfers:
        assert await t.accepted == 200
        await t.done
    assert all(t.failure is None for t in transfers)
    assert len(client.http._curls) > 16
