"""The upstream client: the one place that knows the upstream's URLs, headers, timeouts and pycurl.

Conversations stream through ``tornado.curl_httpclient`` with a ``streaming_callback`` (bytes
reach the converter as they arrive) and a ``header_callback`` (the status is known as soon as
the upstream accepts, before any answer byte). Tornado's client cannot abandon a transfer, and
a client that goes away must not leave an orphan transfer running upstream, so
``CancellableCurlClient`` adds ``cancel``.
"""

import logging

import pycurl
import ujson
from tornado.concurrent import Future, future_set_result_unless_cancelled
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest, HTTPResponse

from logs import mask

log = logging.getLogger("gateway.upstream")

ERROR_BODY_LIMIT = 64 * 1024
# libcurl gives every transfer a 64 KB upload buffer, held while the answer streams; a request
# body is one JSON payload read once, so its 16 KB minimum is plenty. Saves ~32 KB RSS per open
# stream (bench S3).
UPLOAD_BUFFER = 16 * 1024
# Bytes libcurl may read from the upstream socket at once. A long answer arrives faster than a
# 16 KB read per loop turn passes it on; larger reads mean fewer callbacks and client writes per
# MB (bench S2 end to end +5-15%). libcurl 8 lends the read buffer per read, so open streams
# hold no more memory (bench S3 unchanged).
READ_BUFFER = 128 * 1024
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


class CancellableCurlClient(CurlAsyncHTTPClient):
    """Tornado's curl client, plus ``cancel(request)`` and a handle pool that grows on demand.

    ``cancel`` ends a running transfer the way libcurl ending it would (``_finish`` removes the
    handle from the multi, closing its connection, and answers the fetch with an error). This
    uses Tornado internals; tests cover it against the pinned Tornado version.
    """

    def initialize(self, max_clients=10, defaults=None, max_body_size=1 << 40):
        # Streamed bodies are never held, and a long answer repeats its text in every event
        # (O(n²) bytes): Tornado's 100 MB default would cut long answers short.
        self._limit = max_clients
        super().initialize(max_clients=min(max_clients, 16), defaults=defaults, max_body_size=max_body_size)

    def fetch_impl(self, request, callback):
        if not self._free_list and len(self._curls) < self._limit:
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)
        super().fetch_impl(request, callback)

    def cancel(self, request):
        for curl in self._curls:
            info = getattr(curl, "info", None)
            if info is not None and info["request"] is request:
                self._finish(curl, pycurl.E_ABORTED_BY_CALLBACK, "cancelled by the gateway")
                self._process_queue()
                return True
        for item in list(self._requests):
            if item[0] is request:
                self._requests.remove(item)
                item[1](HTTPResponse(request, 599, error=Exception("cancelled by the gateway")))
                return True
        return False


class Transfer:
    """One streaming upstream request.

    ``accepted`` resolves with the HTTP status once the upstream's headers are complete (or with
    None if the transfer failed before that); ``done`` resolves when the transfer has ended.
    Tornado queues header lines as callbacks but may deliver a body that arrived in the same
    read before them, so the first body chunk also reads the status from the curl handle.
    Body bytes of a 200 answer go to ``on_chunk``; other answers' bodies are kept in
    ``error_body`` (bounded) for the error message.
    """

    def __init__(self, client, request, on_chunk):
        self._client = client
        self.request = request
        self._on_chunk = on_chunk
        self.status = None
        self._line_status = None
        self._curl = None
        self.accepted = Future()
        self.error_body = bytearray()
        self.failure = None       # text of a transport failure (refused, timeout, dropped)
        self.cancelled = False
        request.header_callback = self._header_line
        request.streaming_callback = self._chunk
        request.prepare_curl_callback = self._prepare
        self.done = client.fetch(request, raise_error=False)
        self.done.add_done_callback(self._finished)

    def cancel(self, reason="cancelled"):
        if self.cancelled or self.done.done():
            return
        self.cancelled = True
        self.failure = reason
        self._client.cancel(self.request)

    def _prepare(self, curl):
        self._curl = curl
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER)
        curl.setopt(pycurl.BUFFERSIZE, READ_BUFFER)

    def _accept(self, status):
        if self.status is None:
            self.status = status
            future_set_result_unless_cancelled(self.accepted, status)

    def _header_line(self, line):
        if line.startswith("HTTP/"):
            parts = line.split(None, 2)
            try:
                self._line_status = int(parts[1])
            except (IndexError, ValueError):
                self._line_status = None
        elif line in ("\r\n", "\n") and self._line_status is not None and self._line_status >= 200:
            self._accept(self._line_status)

    def _chunk(self, data):
        if self.cancelled:
            return
        if self.status is None:
            self._accept(self._curl.getinfo(pycurl.RESPONSE_CODE))
        if self.status == 200:
            self._on_chunk(data)
        elif len(self.error_body) < ERROR_BODY_LIMIT:
            self.error_body += data[:ERROR_BODY_LIMIT - len(self.error_body)]

    def _finished(self, future):
        response = future.result()
        if response.error is not None and response.code == 599 and self.failure is None:
            self.failure = str(response.error)
        if self.status is None:
            if response.code == 599:
                future_set_result_unless_cancelled(self.accepted, None)
            else:
                self._accept(response.code)


class UpstreamClient:
    def __init__(self, settings):
        self.settings = settings
        prefix = settings.proxy_api_prefix
        self.root = settings.base_url + ("/" + prefix if prefix else "")
        self.http = CancellableCurlClient(force_instance=True, max_clients=settings.upstream_max_transfers)

    def url(self, path):
        """``path`` below ``backend-api``, e.g. ``conversation``."""
        return "%s/backend-api/%s" % (self.root, path)

    def _headers(self, key, accept="application/json"):
        return {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                "Accept": accept, "Oai-Language": "en-US", "User-Agent": USER_AGENT}

    def start_conversation(self, key, payload, on_chunk):
        """POST the conversation; return a ``Transfer`` streaming its answer into ``on_chunk``."""
        request = HTTPRequest(
            self.url("conversation"), method="POST",
            headers=self._headers(key, "text/event-stream"),
            body=ujson.dumps(payload, ensure_ascii=False),
            connect_timeout=self.settings.upstream_connect_timeout,
            request_timeout=0,  # no total limit: silence is what times a stream out (see handlers)
            follow_redirects=False)
        log.debug("conversation for key %s, model %s", mask(key), payload.get("model"))
        return Transfer(self.http, request, on_chunk)

    async def call(self, method, path, key, body=None, timeout=30):
        """A plain JSON call below ``backend-api``: ``(status, decoded JSON or None, raw bytes)``.

        Status 599 means the upstream could not be reached; its error text is the raw body."""
        response = await self.http.fetch(HTTPRequest(
            self.url(path), method=method, headers=self._headers(key),
            body=None if body is None else ujson.dumps(body, ensure_ascii=False),
            connect_timeout=self.settings.upstream_connect_timeout,
            request_timeout=timeout, follow_redirects=False, allow_nonstandard_methods=True),
            raise_error=False)
        raw = response.body or b""
        if response.code == 599:
            return 599, None, str(response.error).encode()
        try:
            data = ujson.loads(raw) if raw else None
        except ValueError:
            data = None
        return response.code, data, raw

    async def hide_conversation(self, key, conversation_id):
        """Hide a finished conversation from the account's history; failures are only logged."""
        status, data, raw = await self.call("PATCH", "conversation/" + conversation_id, key, {"is_visible": False})
        if status != 200:
            log.warning("hiding conversation %s failed: HTTP %s %s", conversation_id, status, raw[:200])

    async def fetch_url(self, url, timeout=60, max_bytes=None):
        """GET a plain URL (a download_url); ``(status, bytes, content type)``."""
        response = await self.http.fetch(HTTPRequest(
            url, connect_timeout=self.settings.upstream_connect_timeout, request_timeout=timeout,
            follow_redirects=True, max_redirects=3), raise_error=False)
        return response.code, response.body or b"", response.headers.get("Content-Type", "")

    def close(self):
        self.http.close()
