"""The gateway's own stack doing nothing but passing bytes through: the second floor of bench S1.

    .venv/bin/python -m bench.tornado_floor --upstream http://127.0.0.1:PORT [--loop uvloop]

nginx (bench/procs.py ``Nginx``) is the floor of a plain C proxy. This one is the floor of the
stack the gateway is built on: Tornado (the pinned version, on asyncio, or uvloop with
``--loop uvloop``), its ``HTTPServer`` and ``RequestHandler``, and its ``CurlAsyncHTTPClient`` over
pycurl with the gateway's ``max_clients`` (``UPSTREAM_MAX_TRANSFERS``). ``POST
/v1/chat/completions`` starts a streaming fetch of the upstream's ``backend-api/conversation``
(the URL, headers and a body of the shape the gateway sends, the client's bearer token passed
on) and writes each chunk libcurl hands over to the client as it comes, ``self.write(chunk);
self.flush()``: no SSE parsing, no JSON, no conversion, no limits, logs or metrics. What the
gateway costs above this is the gateway's own code; what this costs above nginx is the stack's.

Only configuration the gateway also applies is taken over (it changes no code path): libcurl's
``NOSIGNAL`` (else three ``rt_sigaction`` per ``socket_action``), its read and upload buffer
sizes, the listen backlog, the fd limit and the garbage collector's tuning (``tune_gc``). The
stock client creates all ``max_clients`` curl handles at start (the gateway grows its pool on
demand), which costs start-up time and memory, not CPU while streams run.

``--lean`` takes the two short cuts around Tornado that the gateway takes (pgw/upstream.py
``QueuedBuffer``, pgw/runtime.py ``StreamSink._write``): libcurl's chunks are delivered right
after ``socket_action`` returns instead of from a loop callback per chunk (the gateway's
``CancellableCurlClient``, which also grows its handle pool on demand), and after the first
chunk (which sends the headers through Tornado) each chunk is HTTP-framed here and handed to
the socket directly when Tornado has nothing queued for it. That is the floor of the path the
gateway actually runs: what it costs above it is conversion and the gateway's own bookkeeping.
"""

import argparse
import asyncio
import json
import os
import sys

import pycurl
import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest

from pgw.server import LISTEN_BACKLOG, raise_fd_limit, tune_gc
from pgw.upstream import READ_BUFFER, UPLOAD_BUFFER, USER_AGENT, CancellableCurlClient, QueuedBuffer

_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pgw", "conf", "config.json")

# A body of the shape and size the gateway sends for the load generator's one-message request
# (pgw/converters/payload.py ``conversation_payload``, UPSTREAM_ENCODING=legacy); the bench
# upstream ignores it, but libcurl uploads it.
BODY = json.dumps({
    "action": "next",
    "messages": [{"id": "9b2f3c1e-6a4d-4e8b-9f1a-2c3d4e5f6a7b", "author": {"role": "user"},
                  "content": {"content_type": "text", "parts": ["bench"]}, "metadata": {}}],
    "parent_message_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "model": "text-davinci-002-render-sha",
    "timezone_offset_min": -480, "history_and_training_disabled": False,
    "conversation_mode": {"kind": "primary_assistant"}, "force_paragen": False, "force_rate_limit": False,
})


def _prepare(curl):
    curl.setopt(pycurl.NOSIGNAL, 1)
    curl.setopt(pycurl.BUFFERSIZE, READ_BUFFER)
    curl.setopt(pycurl.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER)


class PassThrough(tornado.web.RequestHandler):
    """One stream: the upstream's bytes to the client, chunk by chunk, unchanged."""

    def initialize(self, client, url):
        self.client = client
        self.url = url

    def _prepare(self, curl):
        _prepare(curl)

    async def post(self):
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        request = HTTPRequest(
            self.url, method="POST", body=BODY, connect_timeout=10, request_timeout=0, follow_redirects=False,
            headers={"Authorization": self.request.headers.get("Authorization", ""),
                     "Content-Type": "application/json", "Accept": "text/event-stream",
                     "Oai-Language": "en-US", "User-Agent": USER_AGENT},
            streaming_callback=self.chunk, prepare_curl_callback=self._prepare)
        response = await self.client.fetch(request, raise_error=False)
        if response.code != 200 and not self._headers_written:
            self.set_status(502)
            self.set_header("Content-Type", "application/json")
            self.write({"error": {"message": "upstream: %s" % (response.error or response.code)}})
        self.finish()

    def chunk(self, data):
        self.write(data)
        self.flush()


class LeanPassThrough(PassThrough):
    """``PassThrough`` with the gateway's short cuts: chunks delivered right after libcurl's
    ``socket_action`` (``QueuedBuffer``), then framed here and sent on the socket directly when
    Tornado holds nothing for it (else queued behind Tornado's buffer, in order)."""

    _stream = None

    def _prepare(self, curl):
        _prepare(curl)
        buffer = QueuedBuffer(self.client, curl, self.chunk)
        curl.info["streaming_buffer"] = buffer
        curl.setopt(pycurl.WRITEFUNCTION, buffer.write)

    def chunk(self, data):
        stream = self._stream
        if stream is None:  # the first chunk: the headers go through Tornado
            self.write(data)
            self.flush()
            if getattr(self.request.connection, "_chunking_output", False) is True:
                self._stream = self.request.connection.stream
            return
        if stream.closed():
            return
        framed = b"%x\r\n%s\r\n" % (len(data), data)
        if not stream._write_buffer:
            try:
                sent = stream.socket.send(framed)
            except OSError:
                sent = 0
            if sent == len(framed):
                return
            framed = memoryview(framed)[sent:]
        stream.write(framed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the bench upstream's base URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--lean", action="store_true", help="the gateway's short cuts around Tornado (see above)")
    with open(_CONFIG) as f:
        default_clients = json.load(f)["UPSTREAM_MAX_TRANSFERS"]
    p.add_argument("--max-clients", type=int, default=default_clients,
                   help="curl handles (default: the gateway's UPSTREAM_MAX_TRANSFERS, %d)" % default_clients)
    args = p.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    raise_fd_limit()

    async def serve():
        kind = CancellableCurlClient if args.lean else CurlAsyncHTTPClient
        client = kind(force_instance=True, max_clients=args.max_clients, max_body_size=1 << 40)
        url = args.upstream.rstrip("/") + "/backend-api/conversation"
        handler = LeanPassThrough if args.lean else PassThrough
        app = tornado.web.Application([(r"/v1/chat/completions", handler, {"client": client, "url": url})],
                                      log_function=lambda handler: None)
        server = tornado.httpserver.HTTPServer(app)
        sockets = tornado.netutil.bind_sockets(args.port, args.host, backlog=LISTEN_BACKLOG)
        server.add_sockets(sockets)
        print("tornado floor listening on http://%s:%d (%s loop, max_clients %d%s)"
              % (args.host, sockets[0].getsockname()[1], args.loop, args.max_clients, ", lean" if args.lean else ""),
              flush=True)
        tune_gc()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
