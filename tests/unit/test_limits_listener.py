"""The listener's refusals without a process: at the connection cap a 503 in one write; when
``accept`` fails for want of descriptors, the spare descriptor refuses one connection, accepting
rests instead of spinning, and at most one warning is logged a minute."""

import asyncio
import errno
import json
import logging
import socket

from pgw import listener
from pgw.conf import settings as conf_settings


class FlakySocket:
    """A listening socket whose accept fails with EMFILE ``fails`` times, then hands out ``peers``."""

    def __init__(self, fails, peers):
        self.fails = fails
        self.peers = list(peers)
        self.accepts = 0

    def accept(self):
        self.accepts += 1
        if self.fails:
            self.fails -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        if not self.peers:
            raise BlockingIOError()
        return self.peers.pop(0), ("127.0.0.1", 1)

    def fileno(self):
        return 99999


def _server(**env):
    server = listener.GatewayHTTPServer(lambda request: None)
    server.limit(conf_settings.load(environ=env), 1024)
    return server


def _error_of(data):
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)["error"]


def test_out_of_descriptors_refuses_one_with_the_spare_and_pauses(caplog):
    async def run():
        server = _server()
        ours, theirs = socket.socketpair()
        sock = FlakySocket(fails=1, peers=[ours])
        with caplog.at_level(logging.WARNING, "gateway.http"):
            assert server.accept_some(sock, 128) is False  # paused: no loop over EMFILE
            # A second EMFILE within the minute: refused again, but no second warning.
            sock.fails, sock.peers = 1, []
            server.accept_some(sock, 128)
        assert sock.accepts == 4  # EMFILE, the spare's accept, EMFILE, the spare's (nothing waiting)
        theirs.settimeout(2)
        status, error = _error_of(theirs.recv(65536))
        assert status.startswith(b"HTTP/1.1 503") and error["code"] == "too_many_connections"
        assert len([r for r in caplog.records if "out of descriptors" in r.getMessage()]) == 1
        assert server._spare is not None  # taken again for the next time
        assert server.refused == 2
        theirs.close()
    asyncio.run(run())


def test_beyond_max_connections_a_503_names_the_setting():
    async def run():
        server = _server(MAX_CONNECTIONS="1")
        server._connections.add(object())  # one connection open already
        ours, theirs = socket.socketpair()
        server.accept_some(FlakySocket(0, [ours]), 128)
        theirs.settimeout(2)
        data = theirs.recv(65536)
        status, error = _error_of(data)
        assert status.startswith(b"HTTP/1.1 503") and "MAX_CONNECTIONS" in error["message"]
        assert theirs.recv(10) == b""  # and closed
        theirs.close()
    asyncio.run(run())


def test_the_automatic_limit_leaves_room_for_upstream_descriptors():
    assert listener.connection_limit(0, 1024) == (1024 - 64) // 2
    assert listener.connection_limit(0, 64) == 16
    assert listener.connection_limit(5000, 1024) == 5000  # the operator's number is taken as given
