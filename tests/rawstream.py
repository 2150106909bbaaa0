"""Chat streams on raw sockets, for the fault and load tests: a client that reads when it
chooses (or never), and an asyncio client cheap enough to run hundreds at once.

``parse`` turns the bytes a client read into what a user would see: the status, the streamed
text, the error event (if any) and whether ``data: [DONE]`` ended it.
"""

import asyncio
import json
import socket
import time

import ujson


def request_bytes(url, key, stream=True, content="hi", model="gpt-3.5-turbo"):
    host = url.split("//", 1)[1]
    body = ujson.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (host.encode(), key.encode(), len(body), body))


def address(url):
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


class Answer:
    """What one client read, decoded."""

    def __init__(self, raw):
        self.raw = raw
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0].startswith(b"HTTP/") else None
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        self.complete_body = True
        if headers.get(b"transfer-encoding") == b"chunked":
            body, self.complete_body = _dechunk(body)
        self.body = body
        self.texts = []
        self.error = None
        self.done = False
        for line in body.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                assert not self.complete_body, data[:200]  # only a cut body may end in half an event
                continue
            if "error" in obj:
                self.error = obj["error"]
                continue
            for choice in obj.get("choices", ()):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    self.texts.append(piece)

    @property
    def text(self):
        return "".join(self.texts)

    def json(self):
        return json.loads(self.body)


def _dechunk(body):
    out, i = [], 0
    while True:
        end = body.find(b"\r\n", i)
        if end < 0:
            return b"".join(out), False
        size = int(body[i:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out), True
        out.append(body[end + 2:end + 2 + size])
        i = end + 2 + size + 2
        if i > len(body):
            return b"".join(out), False


def _ended(data):
    """Whether a response read so far is complete: the chunked end, or a whole sized body.
    (Called after every read: only the head is parsed, and only while it is short.)"""
    if data.endswith(b"\r\n0\r\n\r\n"):
        return True
    end = data.find(b"\r\n\r\n", 0, 65536)
    if end < 0:
        return False
    for line in bytes(data[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(data) - end - 4 >= int(value)
    return False


def connect(url, rcvbuf=None, timeout=10):
    """A blocking socket to the gateway; ``rcvbuf``: a small receive buffer (a slow client's)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(address(url))
    return sock


def read_until(sock, marker, timeout=10):
    """Read until ``marker`` has arrived (or the server closes, or ``timeout``): the bytes so far."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while marker not in data and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got = sock.recv(65536)
        except (socket.timeout, ConnectionError):
            break
        if not got:
            break
        data += got
    return bytes(data)


CONTENT = b'"delta":{"content":'  # how the gateway's content chunks begin


def read_answer(sock, timeout=30, data=b""):
    """Read until the response is complete, the server closes, or ``timeout`` passes; ``data``:
    what was read before (``read_until``)."""
    deadline = time.monotonic() + timeout
    data = bytearray(data)
    while not _ended(data):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            got = sock.recv(1 << 20)
        except (socket.timeout, ConnectionError):
            break
        if not got:
            break
        data += got
    return Answer(bytes(data))


def chat(url, key, timeout=30, **kw):
    sock = connect(url, timeout=timeout)
    try:
        sock.sendall(request_bytes(url, key, **kw))
        return read_answer(sock, timeout)
    finally:
        sock.close()


async def achat(url, key, timeout=30, **kw):
    """One chat request on asyncio streams: ``(Answer, seconds)``; a hang shows as a timeout
    (an incomplete Answer), never as a test that waits for ever."""
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address(url)), timeout)
    data = bytearray()
    try:
        writer.write(request_bytes(url, key, **kw))
        deadline = t0 + timeout
        while not _ended(data):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                got = await asyncio.wait_for(reader.read(65536), left)
            except (asyncio.TimeoutError, ConnectionError):
                break
            if not got:
                break
            data += got
    finally:
        writer.close()
    return Answer(bytes(data)), time.monotonic() - t0


def rss_kb(pid):
    """Resident memory of a process (KB), from /proc."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)
