"""Spreading connections over forked workers (PROCESS_WORKERS > 1).

The workers share one listening socket and the kernel wakes all of them for a new connection;
whichever calls ``accept`` first gets it. Tornado's accept handler then takes up to 128 waiting
connections at once, so a burst went to one worker while the other idled: eight big answers
asked at once were converted by one worker (1.04 CPU-s) beside an idle one (0.01 CPU-s), bench
S4. Accepting one connection per wake-up helped only when the other worker happened to wake in
time (5 to 3 in some runs).

So a worker accepts only while no other worker has fewer open connections. The counts live in
memory the workers share (made before forking, each worker writes only its own slot). A worker
that lets a connection go looks again a moment later, and takes it anyway once it has waited
``PATIENCE``: the less busy worker may be stuck in a long turn of its loop, or gone.

A lone worker keeps Tornado's server and its batch accept: taking one connection per turn of a
loop busy with thousands of streams accepted a burst too slowly (bench S1, 2,000 new streams a
second: TTFB p99 from 0.14 s to 1 s).
"""

import multiprocessing
import time

import tornado.httpserver
from tornado.ioloop import IOLoop

RECHECK = 0.001   # seconds before a worker that let connections wait looks again
PATIENCE = 0.05   # seconds a connection waits for a less busy worker before anyone takes it


class ConnectionCounts:
    """Open connections per worker, in memory shared across ``fork``."""

    def __init__(self, workers):
        self._counts = multiprocessing.RawArray("q", workers)

    def set(self, worker, count):
        self._counts[worker] = count

    def fewest(self):
        return min(self._counts)


class BalancedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server for worker ``worker`` of several sharing one listening socket."""

    def balance(self, counts, worker, patience=PATIENCE):
        self._counts = counts
        self._worker = worker
        self._patience = patience
        self._waiting_since = None   # first time the current wait let a connection go
        self._last_wait = 0.0
        counts.set(worker, 0)

    def add_sockets(self, sockets):
        io_loop = IOLoop.current()
        for sock in sockets:
            def ready(fd, events, sock=sock):
                if self._leave_to_others():
                    io_loop.remove_handler(sock)
                    io_loop.call_later(RECHECK, self._watch_again, io_loop, sock, ready)
                    return
                try:
                    connection, address = sock.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    return  # another worker took it, or the client gave up while it waited
                self._handle_connection(connection, address)
            # TCPServer.stop() closes what these two maps hold (Tornado 6.x internals).
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = (lambda sock=sock: io_loop.remove_handler(sock))
            io_loop.add_handler(sock, ready, IOLoop.READ)

    def _watch_again(self, io_loop, sock, ready):
        if not self._stopped:
            io_loop.add_handler(sock, ready, IOLoop.READ)

    def _leave_to_others(self):
        """Whether a waiting connection should go to a worker with fewer connections."""
        if len(self._connections) <= self._counts.fewest():
            self._waiting_since = None
            return False
        now = time.monotonic()
        if self._waiting_since is None or now - self._last_wait > self._patience:
            self._waiting_since = now  # a new wait: the last one ended long ago
        self._last_wait = now
        if now - self._waiting_since < self._patience:
            return True
        self._waiting_since = None
        return False

    def handle_stream(self, stream, address):
        super().handle_stream(stream, address)
        self._counts.set(self._worker, len(self._connections))

    def on_close(self, server_conn):
        super().on_close(server_conn)
        self._counts.set(self._worker, len(self._connections))
