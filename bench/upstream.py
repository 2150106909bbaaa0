"""A paced fake upstream for the bench: ``python -m bench.upstream --events E --interval-ms T --chars C``.

It must not be the bottleneck, so it is a bare asyncio ``Protocol`` with pre-rendered bytes:
the answer is rendered once at start (bench/transcript.py, the fake upstream's own renderers),
cut into frames and HTTP-chunk-encoded once; a stream then only writes frame i at t0 + i*T from
one timer callback. ``--interval-ms 0`` writes the whole answer at once (full speed) from a
thread per connection with a blocking ``sendfile``: an event loop wakes up for every few hundred
KB the reader frees, and those wake-ups made the upstream cost half the CPU of the gateway it
feeds (0.54 CPU-s to send 8 x 67 MB; 0.08 with a blocking ``sendall``, 0.03 with ``sendfile``
from a file of the answer, which spares copying it into the socket). On a 2-core machine that
CPU is taken from the gateway's second worker, which is what bench S4 measures.

    POST .../backend-api/conversation     the answer (every request gets the same one)
    PATCH .../backend-api/conversation/x  {"success": true}
    GET /_bench/stats                     per API key: t0 (epoch seconds of frame 0); how late the
                                          upstream itself sent frames (so its own lag is known)
"""

import argparse
import asyncio
import os
import socketserver
import sys
import tempfile
import time

import ujson

from bench import transcript
from pgw.server import raise_fd_limit


def _chunked(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
_LAST = b"0\r\n\r\n"


def _plain(status, body):
    return b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, len(body), body)


class Answer:
    """The pre-rendered answer, shared by every stream."""

    def __init__(self, events, chars, dialect, interval):
        rendered, self.text = transcript.render(events, chars, dialect)
        self.frames = [_chunked(f) for f, _ in transcript.frames(rendered)]
        self.frames[-1] += _LAST
        self.interval = interval
        self.whole = None  # full speed: a file holding the whole HTTP response
        if interval == 0:
            self.whole = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for sendfile)
            self.whole.write(_HEAD + b"".join(self.frames))
            self.whole.flush()
        self.upstream_bytes = sum(len(e) for e in rendered)


class Stats:
    def __init__(self):
        self.t0 = {}          # API key -> epoch seconds when frame 0 was sent
        self.late = []        # seconds each paced frame went out after its due time
        self.streams = 0


def next_request(buf):
    """``(request head, rest of buf)`` once ``buf`` holds a whole request, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1")
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    return head, buf[end + 4 + length:]


def route(head, stats):
    """What a request asks for: ``("stream", api key)``, or ``("reply", response bytes)``."""
    method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
    if method == "POST" and path.endswith("/backend-api/conversation"):
        key = ""
        for line in head.split("\r\n"):
            if line.lower().startswith("authorization: bearer "):
                key = line[22:].strip()
        stats.streams += 1
        stats.t0[key] = time.time()
        return "stream", key
    if method == "PATCH":
        return "reply", _plain(200, b'{"success": true}')
    if path.startswith("/_bench/stats"):
        late = sorted(stats.late)
        body = ujson.dumps({"t0": stats.t0, "streams": stats.streams,
                            "late_p50": _pct(late, 50), "late_p99": _pct(late, 99),
                            "late_max": late[-1] if late else 0.0}).encode()
        return "reply", _plain(200, body)
    return "reply", _plain(404, b'{"detail": "Not Found"}')


class Connection(asyncio.Protocol):
    """One connection of the paced upstream: frame i goes out at t0 + i*T."""

    def __init__(self, answer, stats):
        self.answer = answer
        self.stats = stats
        self.buf = b""
        self.transport = None
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data):
        self.buf += data
        while True:
            request = next_request(self.buf)
            if request is None:
                return
            head, self.buf = request
            kind, value = route(head, self.stats)
            if kind == "stream":
                self.stream()
            else:
                self.transport.write(value)

    def stream(self):
        a, stats = self.answer, self.stats
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.transport.write(_HEAD + a.frames[0])
        state = [1]

        def send():
            i = state[0]
            if self.transport.is_closing():
                return
            due = start + i * a.interval
            stats.late.append(loop.time() - due)
            self.transport.write(a.frames[i])
            state[0] = i + 1
            self.timer = loop.call_at(due + a.interval, send) if i + 1 < len(a.frames) else None

        if len(a.frames) > 1:
            self.timer = loop.call_at(start + a.interval, send)


def send_file(sock, f):
    """All of file ``f`` to the blocking socket ``sock``, without copying it through Python."""
    offset, size = 0, os.fstat(f.fileno()).st_size
    while offset < size:
        offset += os.sendfile(sock.fileno(), f.fileno(), offset, size - offset)


class WholeAnswer(socketserver.BaseRequestHandler):
    """One connection of the full-speed upstream: each answer in one blocking ``sendfile``."""

    def handle(self):
        sock, buf = self.request, b""
        while True:
            request = next_request(buf)
            if request is None:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                continue
            head, buf = request
            kind, value = route(head, self.server.stats)
            if kind == "stream":
                send_file(sock, self.server.answer.whole)
            else:
                sock.sendall(value)


class WholeAnswerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, address, answer, stats):
        self.answer, self.stats = answer, stats
        super().__init__(address, WholeAnswer)


def _pct(values, p):
    """The p-th percentile of sorted ``values`` (nearest rank); 0 when empty."""
    if not values:
        return 0.0
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def _listening(host, port, answer):
    print("bench upstream listening on http://%s:%d (%d frames, %d bytes of events)"
          % (host, port, len(answer.frames), answer.upstream_bytes), flush=True)


async def serve_paced(args, answer, stats):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(answer, stats), args.host, args.port, backlog=4096)
    _listening(args.host, server.sockets[0].getsockname()[1], answer)
    await asyncio.Event().wait()


def serve_whole(args, answer, stats):
    with WholeAnswerServer((args.host, args.port), answer, stats) as server:
        _listening(args.host, server.server_address[1], answer)
        server.serve_forever()


def main(argv=None):
    p = argparse.ArgumentParser(description="paced fake upstream for the bench")
    p.add_argument("--events", type=int, default=60)
    p.add_argument("--chars", type=int, default=4)
    p.add_argument("--interval-ms", type=float, default=500)
    p.add_argument("--dialect", default="legacy", choices=sorted(transcript.DIALECTS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    raise_fd_limit()
    answer = Answer(args.events, args.chars, args.dialect, args.interval_ms / 1000.0)
    stats = Stats()
    if answer.whole is not None:
        serve_whole(args, answer, stats)
    else:
        asyncio.run(serve_paced(args, answer, stats))


if __name__ == "__main__":
    sys.exit(main())
