"""PROCESS_WORKERS > 1: a worker leaves new connections to a worker with fewer of them.

One worker's server runs here; the other worker is its slot in the shared counts, set by hand.
"""

import asyncio

import tornado.netutil
import tornado.web

from balance import BalancedHTTPServer, ConnectionCounts


class Hello(tornado.web.RequestHandler):
    def get(self):
        self.finish("hello")


async def _ask(port, timeout):
    """GET / on a new connection: the status line, or None when nothing came within ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        writer.close()


def _serve(patience):
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    counts = ConnectionCounts(2)
    server = BalancedHTTPServer(tornado.web.Application([("/", Hello)]))
    server.balance(counts, 0, patience=patience)
    server.add_sockets(sockets)
    return server, counts, sockets[0].getsockname()[1]


def test_a_busier_worker_leaves_connections_to_a_less_busy_one():
    async def main():
        server, counts, port = _serve(patience=60)
        try:
            # this worker holds one open connection, the other worker none
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
            counts.set(1, 0)
            waiting = asyncio.ensure_future(_ask(port, 5))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # left in the queue for the other worker
            counts.set(1, 3)  # the other worker got busier: this one is now the least busy
            assert (await waiting).startswith(b"HTTP/1.1 200")
            writer.close()
        finally:
            server.stop()
    asyncio.run(main())


def test_a_connection_is_taken_anyway_when_no_other_worker_takes_it():
    async def main():
        server, counts, port = _serve(patience=0.05)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
            counts.set(1, 0)  # a less busy worker that never accepts (stuck, or gone)
            assert (await _ask(port, 5)).startswith(b"HTTP/1.1 200")
            writer.close()
        finally:
            server.stop()
    asyncio.run(main())


def test_open_connections_are_published_for_the_other_workers():
    async def main():
        server, counts, port = _serve(patience=0.05)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(reader.readline(), 5)
            assert counts._counts[0] == 1
            writer.close()
            for _ in range(100):  # the server sees the close on its next loop turn
                if counts._counts[0] == 0:
                    break
                await asyncio.sleep(0.02)
            assert counts._counts[0] == 0
        finally:
            server.stop()
    asyncio.run(main())
