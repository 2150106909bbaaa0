"""The load generator: N concurrent ``stream: true`` chat requests on raw asyncio sockets.

During the run a client only timestamps and keeps what it reads (cheaper than the server, so
the server is what is measured); decoding (HTTP chunks, SSE, JSON) happens afterwards. The
answer's characters are due at the upstream's send schedule (frame i at t0 + i*T, t0 per
stream from the bench upstream), so the added lag of frame i is when the client had its text
minus when the upstream was due to send it.
"""

import asyncio
import socket
import time

import ujson

from pgw.converters.sse import SSEDecoder

MODEL = "gpt-3.5-turbo"
_END = b"\r\n0\r\n\r\n"
_CONTENT = b'"delta":{"content":'   # how the gateway's content chunks begin (openai_format)


def request_bytes(host, key, stream=True):
    body = ujson.dumps({"model": MODEL, "stream": stream,
                        "messages": [{"role": "user", "content": "bench"}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (host.encode(), key.encode(), len(body), body))


class Client(asyncio.Protocol):
    def __init__(self, key, request, done):
        self.key = key
        self.request = request
        self.done = done
        self.reads = []           # (epoch seconds, bytes)
        self.started = None       # when the connection attempt began
        self.sent = None
        self.error = None
        self.has_content = False
        self.transport = None

    stall = None                  # seconds to read nothing after connecting (a slow reader)

    def connection_made(self, transport):
        self.transport = transport
        self.sent = time.time()
        transport.write(self.request)
        if self.stall:
            transport.pause_reading()
            asyncio.get_running_loop().call_later(self.stall, transport.resume_reading)

    def data_received(self, data):
        self.reads.append((time.time(), data))
        if not self.has_content and _CONTENT in data:
            self.has_content = True
        tail = data[-7:] if len(data) >= 7 else b"".join(d for _, d in self.reads[-3:])[-7:]
        if tail == _END:
            self.transport.close()

    def connection_lost(self, exc):
        if exc is not None and self.error is None:
            self.error = str(exc)
        if not self.done.done():
            self.done.set_result(None)


async def run(url, n, ramp=1.0, timeout=120.0, hold=None, stall=None, rcvbuf=None, when_open=None):
    """Open ``n`` streams (spread over ``ramp`` seconds); return the ``Client``s when all ended.

    ``hold``: an async function called once every stream has shown content (or at the timeout),
    before the streams are cut: memory of open streams is measured there. ``when_open``: an async
    function called once every stream has shown content, the streams going on (bench/profile.py
    starts counting there). ``stall``: each client reads nothing for that many seconds after
    sending its request; ``rcvbuf``: the clients' socket receive buffer (a small one: a slow
    client's window).
    """
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    loop = asyncio.get_running_loop()
    clients = []
    start = loop.time() + 0.05

    async def one(i):
        done = loop.create_future()
        c = Client("bench-%d-%d" % (int(start * 1000), i), None, done)
        c.request = request_bytes(host, c.key)
        c.stall = stall
        clients.append(c)
        await asyncio.sleep(max(0.0, start + ramp * i / max(n, 1) - loop.time()))
        c.started = time.time()
        try:
            if rcvbuf:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connecting: sets the window
                sock.setblocking(False)
                await loop.sock_connect(sock, (host, int(port)))
                await loop.create_connection(lambda: c, sock=sock)
            else:
                await loop.create_connection(lambda: c, host, int(port))
        except OSError as e:
            c.error = "connect: %s" % e
            done.set_result(None)
        await done

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    deadline = loop.time() + timeout
    if when_open is not None:
        while loop.time() < deadline and not (len(clients) == n and all(c.has_content or c.done.done()
                                                                          for c in clients)):
            await asyncio.sleep(0.01)
        await when_open()
    if hold is not None:
        while loop.time() < deadline and not (len(clients) == n and all(c.has_content for c in clients)):
            await asyncio.sleep(0.1)
        await hold()
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    _, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()))
    for c in clients:
        if c.transport is not None and not c.done.done():
            c.error = c.error or "timed out"
            c.transport.abort()
    if pending:
        await asyncio.wait(pending, timeout=5)
    return clients


class Dechunker:
    """HTTP/1.1 chunked transfer decoding, fed read by read."""

    def __init__(self):
        self.buf = b""
        self.left = 0        # bytes of the current chunk still to come
        self.crlf = False    # a chunk's trailing CRLF is still to skip
        self.ended = False

    def feed(self, data):
        self.buf += data
        out = []
        while self.buf and not self.ended:
            if self.left:
                piece = self.buf[:self.left]
                out.append(piece)
                self.left -= len(piece)
                self.buf = self.buf[len(piece):]
                self.crlf = self.left == 0
            elif self.crlf:
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.crlf = False
            else:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                self.left = int(self.buf[:end].split(b";")[0], 16)
                self.buf = self.buf[end + 2:]
                if self.left == 0:
                    self.ended = True
        return b"".join(out)


class Result:
    """One stream, decoded: text, when each length of text arrived, and whether it completed."""

    def __init__(self, client):
        self.key = client.key
        self.started = client.started
        self.sent = client.sent
        self.error = client.error
        self.status = None
        self.text = ""
        self.arrivals = []   # (epoch seconds, characters so far)
        self.finished = False
        self._decode(client.reads)

    def _decode(self, reads):
        head = b""
        body = None
        sse = SSEDecoder()
        parts = []
        length = 0
        for t, data in reads:
            if body is None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                self.status = int(head.split(b" ", 2)[1])
                body = Dechunker() if b"chunked" in head[:end].lower() else None
                data = head[end + 4:]
                if body is None:
                    self.error = self.error or "HTTP %d: %s" % (self.status, data[:200])
                    return
            for ev in sse.feed(body.feed(data)):
                if ev.data == b"[DONE]":
                    continue
                obj = ujson.loads(ev.data)
                if "error" in obj:
                    self.error = "error event: %s" % obj["error"].get("message")
                    continue
                for choice in obj.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        parts.append(piece)
                        length += len(piece)
                        self.arrivals.append((t, length))
                    if choice.get("finish_reason"):
                        self.finished = True
        self.text = "".join(parts)
        if self.error is None and not (self.status == 200 and self.finished and body is not None and body.ended):
            self.error = "incomplete (HTTP %s)" % self.status

    @property
    def ok(self):
        return self.error is None

    def ttfb(self):
        """From the start of connecting (a refused or queued connection counts) to the first
        content byte."""
        return self.arrivals[0][0] - self.started if self.arrivals else None

    def lags(self, t0, revealed, interval):
        """Added lag of every frame: when the client had its text minus when it was due."""
        out = []
        arrivals = self.arrivals
        j = 0
        for i, chars in enumerate(revealed):
            while j < len(arrivals) and arrivals[j][1] < chars:
                j += 1
            if j == len(arrivals):
                break
            out.append(arrivals[j][0] - (t0 + i * interval))
        return out


class PassResult(Result):
    """One stream through a pass-through proxy (nginx): the upstream's own events, unchanged.

    ``text`` is the body's bytes (compared with the upstream's rendered events), ``arrivals``
    count bytes so far, so ``lags`` takes the byte offsets at which each frame is complete."""

    def _decode(self, reads):
        head = b""
        body = None
        parts = []
        length = 0
        for t, data in reads:
            if body is None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                self.status = int(head.split(b" ", 2)[1])
                body = Dechunker() if b"chunked" in head[:end].lower() else None
                data = head[end + 4:]
                if body is None or self.status != 200:
                    self.error = self.error or "HTTP %d: %s" % (self.status, data[:200])
                    return
            got = body.feed(data)
            if got:
                parts.append(got)
                length += len(got)
                self.arrivals.append((t, length))
        self.text = b"".join(parts)
        self.finished = body is not None and body.ended
        if self.error is None and not self.finished:
            self.error = "incomplete (HTTP %s)" % self.status


def percentile(values, p):
    """Nearest-rank percentile of ``values``; None when empty."""
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(-(-p * len(values) // 100)) - 1))
    return values[k]
