"""PROCESS_WORKERS > 1: a worker leaves new connections to a worker with fewer of them.

One worker's server runs here; the other worker is its slot in the shared counts, set by hand.
"""

import asyncio

import tornado.netutil
import tornado.web

from pgw.balance import BalancedHTTPServer, ConnectionCounts


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


async def _hold_one(port):
    """A connection that was answered and stays open (keep-alive): the writer, to close later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    return writer


def _serve(patience, listeners=1):
    sockets = [s for _ in range(listeners) for s in tornado.netutil.bind_sockets(0, "127.0.0.1")]
    counts = ConnectionCounts(2)
    server = BalancedHTTPServer(tornado.web.Application([("/", Hello)]))
    server.balance(counts, 0, patience=patience)
    server.add_sockets(sockets)
    ports = [s.getsockname()[1] for s in sockets]
    return server, counts, ports[0] if listeners == 1 else ports


def test_a_busier_worker_leaves_connections_to_a_less_busy_one():
    async def main():
        server, counts, port = _serve(patience=60)
        try:
            # this worker holds one open connection, the other worker none
            writer = await _hold_one(port)
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
            writer = await _hold_one(port)
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
            writer = await _hold_one(port)
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


def test_every_listening_socket_keeps_its_own_handler():
    """HOST "" listens on 0.0.0.0 and ::, two sockets: leaving a connection on one must not
    hand that socket the other's accept."""
    async def main():
        server, counts, ports = _serve(patience=60, listeners=2)
        try:
            writer = await _hold_one(ports[1])
            counts.set(1, 0)
            waiting = [asyncio.ensure_future(_ask(port, 5)) for port in ports]
            await asyncio.sleep(0.3)
            assert not any(w.done() for w in waiting)
            counts.set(1, 3)
            assert [(await w)[:12] for w in waiting] == [b"HTTP/1.1 200"] * 2
            writer.close()
        finally:
            server.stop()
    asyncio.run(main())


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_once_the_patience_is_spent_all_waiting_connections_are_taken():
    counts = ConnectionCounts(2)
    server = BalancedHTTPServer(tornado.web.Application([("/", Hello)]))
    clock = _Clock()
    server.balance(counts, 0, patience=0.05, clock=clock)
    server._connections.add(object())  # this worker holds a connection, the other none
    counts.set(0, 1)
    assert server._how_many() == 0     # leave it to the other worker
    clock.now += 0.04
    assert server._how_many() == 0
    clock.now += 0.02
    assert server._how_many() is None  # nobody took it: take it and all that wait behind it
    assert server._how_many() == 0     # a later connection starts a new wait
    counts.set(1, 5)
    assert server._how_many() == 1     # this worker is the least busy: take one at a time
