"""The gateway's HTTP listener: the one place that knows connection limits and who may speak for clients.

Tornado 6.6.1's ``HTTPServer`` bounds less than its options suggest (read from
tornado/http1connection.py and httpserver.py of the pinned version):

- ``idle_connection_timeout`` is really a *header* timeout: ``_read_message`` waits for the
  complete header block (from the moment the connection is ready for a request) that long, then
  closes. It is one value for a fresh connection and for a keep-alive one waiting for its next
  request. Here ``HEADER_TIMEOUT`` bounds the first request's headers and
  ``IDLE_CONNECTION_TIMEOUT`` the wait (idle time plus headers) for each later one.
- ``body_timeout`` bounds the whole body read: after it the connection is closed without an
  answer (``BODY_TIMEOUT``).
- ``max_header_size``: a header block larger than it makes ``IOStream`` close the connection
  without a word (``UnsatisfiableReadError``). ``_Stream`` below answers 431 first, then drains
  what the client still sends for a moment so the answer is not lost to a TCP reset.
- Nothing caps the number of connections, and at the descriptor limit ``accept`` fails with
  EMFILE inside Tornado's accept handler: the exception escapes, the listening socket stays
  readable, and the loop spins at full CPU logging a traceback per turn. Here at most
  ``MAX_CONNECTIONS`` are served; beyond that a connection is accepted, answered 503 in one
  non-blocking send and closed. When ``accept`` itself fails for want of descriptors, a spare
  descriptor kept for the purpose is given up for a moment to accept and refuse one connection
  the same way, and accepting pauses briefly; one warning is logged per pause at most once a
  minute.
- ``xheaders=True`` believes ``X-Forwarded-For``/``X-Real-Ip``/``X-Forwarded-Proto``/``X-Scheme``
  from anyone. Here they count only from peers in ``TRUSTED_PROXIES``.
"""

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import socket
import time

import tornado.httpserver
from tornado import iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.ioloop import IOLoop

log = logging.getLogger("gateway.http")

# Connections taken per turn of the loop at most. Tornado takes 128; each costs about 0.6 ms of
# CPU to set up, so a burst made loop turns of up to ~80 ms, and every open stream's events waited
# them out. With 32 the open streams are served between smaller batches (bench S1, 4,000 streams
# opened within 1 s, two runs each: added lag p99 232/241 -> 84/71 ms, TTFB p50 1335/1354 ->
# 950/936 ms, TTFB p99 2163/2125 -> 2304/2123 ms, server CPU 14.7/14.3 -> 15.6/14.7 s; with 16,
# lag p99 52/44 ms but 10% more CPU from the extra loop turns).
ACCEPT_BATCH = 32
EMFILE_PAUSE = 0.1       # seconds accepting rests when the process is out of descriptors
WARN_EVERY = 60.0        # seconds between two "out of descriptors" warnings
LINGER = 2.0             # seconds a refused connection's remaining request bytes are drained
LINGER_BYTES = 1 << 20   # and at most this many
DESCRIPTOR_RESERVE = 64  # descriptors kept for logs, saved files, DNS and the spare below


def _response(status, reason, message, code):
    body = ('{"error": {"message": "%s", "type": "server_error", "param": null, "code": "%s"}}'
            % (message, code)).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, reason.encode(), len(body))) + body


BUSY = _response(503, "Service Unavailable", "the gateway has as many open connections as it serves "
                 "(MAX_CONNECTIONS); try again shortly", "too_many_connections")
HEADERS_TOO_LARGE = _response(431, "Request Header Fields Too Large", "the request headers are larger than "
                              "this gateway accepts (MAX_HEADER_BYTES)", "headers_too_large").replace(
                                  b'"server_error"', b'"invalid_request_error"')


def connection_limit(setting, descriptor_limit):
    """Connections served at once: MAX_CONNECTIONS, or with 0 what the descriptors allow.

    A chat holds two descriptors (the client's and the upstream's), so the automatic limit is
    half of what the reserve leaves. A larger MAX_CONNECTIONS is taken as the operator says
    (idle bots hold one descriptor each); running out of descriptors anyway is handled cheaply."""
    if setting:
        return setting
    return max(16, (descriptor_limit - DESCRIPTOR_RESERVE) // 2)


def _send_and_close(sock, data, linger=True):
    """Send ``data`` without blocking, then close; with ``linger`` first drain what the client
    still sends (briefly, bounded) so that closing with unread bytes does not reset the answer away."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        sock.close()
        return
    if not linger:
        sock.close()
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    _Drain(sock)


class _Drain:
    """Read and drop what a refused client still sends, until it closes or LINGER is over."""

    def __init__(self, sock):
        self.sock = sock
        self.left = LINGER_BYTES
        self.loop = IOLoop.current()
        self.timer = self.loop.call_later(LINGER, self.close)
        self.loop.add_handler(sock.fileno(), self._readable, IOLoop.READ)

    def _readable(self, fd, events):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.left -= len(data)
        if not data or self.left <= 0:
            self.close()

    def close(self):
        if self.sock is None:
            return
        self.loop.remove_timeout(self.timer)
        self.loop.remove_handler(self.sock.fileno())
        self.sock.close()
        self.sock = None


class _Stream(iostream.IOStream):
    """An IOStream that answers 431 when the header block outgrows MAX_HEADER_BYTES."""

    def close(self, exc_info=False):
        if isinstance(exc_info, iostream.UnsatisfiableReadError) and not self.closed():
            try:
                spare = self.socket.dup()
            except OSError:
                spare = None
            if spare is not None:
                _send_and_close(spare, HEADERS_TOO_LARGE)
        super().close(exc_info)


class _ServerConnection(HTTP1ServerConnection):
    """Tornado's request loop (6.6.1, ``_server_request_loop``) with one header timeout for the
    first request and another (the keep-alive idle limit) for the requests after it."""

    def __init__(self, stream, params, later_params, context):
        super().__init__(stream, params, context)
        self.later_params = later_params

    async def _server_request_loop(self, delegate):
        params = self.params
        try:
            while True:
                conn = HTTP1Connection(self.stream, False, params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (iostream.StreamClosedError, iostream.UnsatisfiableReadError, asyncio.CancelledError):
                    return
                except Exception:
                    log.error("uncaught exception serving a connection", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                params = self.later_params
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed: addresses and networks from TRUSTED_PROXIES."""

    def __init__(self, items=()):
        self.networks = [ipaddress.ip_network(item, strict=False) for item in items if _is_network(item)]

    def trusts(self, address):
        if not self.networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False  # a Unix socket peer, say
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


@functools.lru_cache(maxsize=8)
def _trusted(items):
    return TrustedProxies(items)


def trusted_proxies(items):
    """The ``TrustedProxies`` for the TRUSTED_PROXIES setting ``items`` (built once)."""
    return _trusted(tuple(items))


def _is_network(item):
    try:
        ipaddress.ip_network(item, strict=False)
        return True
    except ValueError:
        return False


def peer_address(request):
    """The address of the TCP peer of ``request`` (never a forwarded one)."""
    context = request.connection.context
    return getattr(context, "_orig_remote_ip", None) or request.remote_ip


class GatewayHTTPServer(tornado.httpserver.HTTPServer):
    """``HTTPServer`` with the limits above. ``limit(settings, descriptor_limit)`` before ``add_sockets``."""

    max_connections = 1 << 30
    trusted = TrustedProxies()
    later_params = None
    _spare = None
    _last_warning = -WARN_EVERY
    refused = 0

    def limit(self, settings, descriptor_limit):
        self.max_connections = connection_limit(settings.max_connections, descriptor_limit)
        self.trusted = TrustedProxies(settings.trusted_proxies)
        first = self.conn_params
        first.header_timeout = settings.header_timeout
        self.later_params = HTTP1ConnectionParameters(
            decompress=first.decompress, chunk_size=first.chunk_size, max_header_size=first.max_header_size,
            header_timeout=settings.idle_connection_timeout, max_body_size=first.max_body_size,
            body_timeout=first.body_timeout, no_keep_alive=first.no_keep_alive)
        self._spare = _open_spare()
        return self.max_connections

    def start_request(self, server_conn, request_conn):
        delegate = self.request_callback.start_request(server_conn, request_conn)
        if self.trusted.trusts(request_conn.context.remote_ip):
            delegate = tornado.httpserver._ProxyAdapter(delegate, request_conn)
        return delegate

    # -- connections --------------------------------------------------------------------------

    def add_sockets(self, sockets):
        loop = IOLoop.current()
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = functools.partial(loop.remove_handler, sock)
            loop.add_handler(sock, functools.partial(self._accept_ready, sock), IOLoop.READ)

    def _accept_ready(self, sock, fd=None, events=None):
        self.accept_some(sock, ACCEPT_BATCH)

    def accept_some(self, sock, count):
        """Accept up to ``count`` waiting connections; False if ``sock`` was paused for want of descriptors."""
        for _ in range(count):
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return True
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors(sock, e)
                    return False
                raise
            self._handle_connection(connection, address)
        return True

    def _handle_connection(self, connection, address):
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            _send_and_close(connection, BUSY, linger=False)
            return
        try:
            stream = _Stream(connection, max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)
        except Exception:
            log.error("error setting up a connection", exc_info=True)

    def handle_stream(self, stream, address):
        context = tornado.httpserver._HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = _ServerConnection(stream, self.conn_params, self.later_params or self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)

    def _out_of_descriptors(self, sock, error):
        """No descriptor for a new connection: refuse one with the spare, rest, then look again."""
        self.refused += 1
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                connection, _address = sock.accept()
                _send_and_close(connection, BUSY, linger=False)
            except OSError:
                pass
            self._spare = _open_spare()
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning("out of descriptors accepting a connection (%s, %d open): refusing new connections "
                        "for %.1f s; lower MAX_CONNECTIONS or raise the descriptor limit", error.strerror,
                        len(self._connections), EMFILE_PAUSE)
        loop = IOLoop.current()
        loop.remove_handler(sock)
        loop.call_later(EMFILE_PAUSE, self._resume, sock)

    def _resume(self, sock):
        if self._stopped:
            return
        IOLoop.current().add_handler(sock, functools.partial(self._accept_ready, sock), IOLoop.READ)


def _open_spare():
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
