"""The lean set-up of a streamed POST (``CancellableCurlClient._curl_setup_request``) puts on
the wire exactly what Tornado's own set-up does, whatever the handle did before, and refuses a
header with CR or LF as Tornado does. The reference is Tornado's stock client, not our code:
a raw loopback server records the request bytes each one sends.
"""

import asyncio

from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest

from pgw.upstream import CancellableCurlClient

ANSWER = b"data: [DONE]\n\n"


async def _recorder():
    """A loopback server that keeps each request's raw bytes and answers a one-event stream."""
    seen = []

    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        seen.append(head + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(ANSWER), ANSWER))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1], seen


def _streamed_post(url, chunks, body, **extra):
    headers = {"Authorization": "Bearer eyJ" + "t" * 900, "Content-Type": "application/json",
               "Accept": "text/event-stream", "Oai-Language": "en-US", "User-Agent": "Mozilla/5.0 test"}
    headers.update(extra.pop("headers", {}))
    return HTTPRequest(url + "/backend-api/conversation", method="POST", headers=headers, body=body,
                       streaming_callback=chunks.append, header_callback=lambda line: None,
                       connect_timeout=5, request_timeout=0, follow_redirects=False, **extra)


def _run(test):
    asyncio.run(asyncio.wait_for(test(), 20))


def test_a_streamed_post_goes_out_byte_for_byte_as_tornado_sends_it():
    async def main():
        server, url, seen = await _recorder()
        ours, stock = CancellableCurlClient(force_instance=True), CurlAsyncHTTPClient(force_instance=True)
        # non-ASCII, a NUL byte (the body's length is given, never measured as a C string), 20 KB
        body = ('{"action": "next", "parts": ["你好", "a\x00b"], "x": "%s"}' % ("y" * 20000)).encode()
        try:
            for client in (stock, ours):
                chunks = []
                response = await client.fetch(_streamed_post(url, chunks, body), raise_error=False)
                assert response.code == 200 and b"".join(chunks) == ANSWER
        finally:
            ours.close(), stock.close()
            server.close()
        assert len(seen) == 2 and seen[1] == seen[0]
        assert seen[0].endswith(body)
        assert b"\r\nExpect:" not in seen[0] and b"\r\nPragma:" not in seen[0]  # libcurl's own, both off
    _run(main)


def test_a_handle_another_kind_of_request_set_up_carries_nothing_into_the_next():
    """One handle (max_clients=1): a GET, a PUT and a PATCH that Tornado sets up (options of their
    own: redirects, an upload, a custom method), then the streamed POST, as on a fresh handle."""
    async def main():
        server, url, seen = await _recorder()
        ours, stock = CancellableCurlClient(force_instance=True, max_clients=1), CurlAsyncHTTPClient(force_instance=True)
        try:
            for other in (HTTPRequest(url + "/a", follow_redirects=True, max_redirects=1, decompress_response=False),
                          HTTPRequest(url + "/b", method="PUT", body=b"x" * 3000),
                          HTTPRequest(url + "/c", method="PATCH", body=b"{}", allow_nonstandard_methods=True)):
                assert (await ours.fetch(other, raise_error=False)).code == 200
            for client in (ours, stock):
                chunks = []
                assert (await client.fetch(_streamed_post(url, chunks, "{}"), raise_error=False)).code == 200
                assert b"".join(chunks) == ANSWER
        finally:
            ours.close(), stock.close()
            server.close()
        assert len(ours._curls) == 1 and len(seen) == 5
        assert seen[3] == seen[4] and seen[3].startswith(b"POST /backend-api/conversation ")
    _run(main)


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async def main():
        server, url, seen = await _recorder()
        ours = CancellableCurlClient(force_instance=True)
        try:
            response = await ours.fetch_any(_streamed_post(url, [], "{}", headers={"X-Bad": "a\r\nInjected: 1"}))
        finally:
            ours.close()
            server.close()
        assert response.code == 599 and "CR or LF" in str(response.error)
        assert seen == []
    _run(main)
