"""Spreading connections over forked workers (PROCESS_WORKERS > 1).

The workers share one listening socket and the kernel wakes all of them for a new connection;
whichever calls ``accept`` first gets it. Tornado's accept handler then takes up to 128 waiting
connections at once, so a burst went to one worker while the other idled: eight big answers
asked at once were converted by one worker (1.04 CPU-s) beside an idle one (0.01 CPU-s), bench
S4. Accepting one connection per wake-up helped only when the other worker happened to wake in
time (5 to 3 in some runs).

So a worker accepts only while no other worker has fewer open connections. The counts live in
memory the workers share (made before forking, each worker writes only its own slot). A worker
that lets connections wait looks again a moment later. If they are still waiting after
``PATIENCE``, it takes them all: the less busy worker may be stuck in a long turn of its loop,
or gone.

A lone worker keeps Tornado's server and its batch accept: taking one connection per turn of a
loop busy with thousands of streams accepted a burst too slowly (bench S1, 2,000 new streams a
second: TTFB p99 from 0.14 s to 1 s).
"""

import functools
import multiprocessing
import select
import time

from tornado.ioloop import IOLoop

from pgw.listener import ACCEPT_BATCH, GatewayHTTPServer

RECHECK = 0.001   # seconds before a worker that let connections wait looks again
PATIENCE = 0.05   # seconds a connection waits for a less busy worker before anyone takes it


def _waiting(sock):
    """Whether connections wait on the listening socket ``sock`` (poll: any descriptor number)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class ConnectionCounts:
    """Open connections per worker, in memory shared across ``fork``."""

    def __init__(self, workers):
        self._counts = multiprocessing.RawArray("q", workers)

    def set(self, worker, count):
        self._counts[worker] = count

    def fewest(self):
        return min(self._counts)


class BalancedHTTPServer(GatewayHTTPServer):
    """Tornado's HTTP server for worker ``worker`` of several sharing one listening socket."""

    def balance(self, counts, worker, patience=PATIENCE, clock=time.monotonic):
        self._counts = counts
        self._worker = worker
        self._patience = patience
        self._clock = clock
        self._waiting_since = None   # when this worker began leaving waiting connections
        counts.set(worker, 0)

    def add_sockets(self, sockets):
        io_loop = IOLoop.current()
        for sock in sockets:
            # TCPServer.stop() closes what these two maps hold (Tornado 6.x internals).
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = functools.partial(io_loop.remove_handler, sock)
            io_loop.add_handler(sock, functools.partial(self._ready, sock), IOLoop.READ)

    def _ready(self, sock, fd, events):
        """``sock`` has connections waiting: take one, leave them, or take them all."""
        take = self._how_many()
        if take == 0:
            io_loop = IOLoop.current()
            io_loop.remove_handler(sock)
            io_loop.call_later(RECHECK, self._watch_again, sock)
            return
        self.accept_some(sock, take or ACCEPT_BATCH)  # the listener's limits apply (pgw/listener.py)

    def _watch_again(self, sock):
        if self._stopped:
            return
        if not _waiting(sock):
            self._waiting_since = None  # another worker took what waited: that wait is over
        IOLoop.current().add_handler(sock, functools.partial(self._ready, sock), IOLoop.READ)

    def _how_many(self):
        """How many waiting connections to take now: 1; 0 while another worker has fewer
        connections; or all of them (None) once a connection has been left ``PATIENCE`` long
        and nobody took it."""
        if len(self._connections) <= self._counts.fewest():
            self._waiting_since = None
            return 1
        now = self._clock()
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since < self._patience:
            return 0
        self._waiting_since = None
        return None

    def handle_stream(self, stream, address):
        super().handle_stream(stream, address)
        self._counts.set(self._worker, len(self._connections))

    def on_close(self, server_conn):
        super().on_close(server_conn)
        self._counts.set(self._worker, len(self._connections))
