"""The upstream client: the one place that knows the upstream's URLs, headers, timeouts and pycurl.

Conversations stream through ``tornado.curl_httpclient`` with a ``streaming_callback`` (bytes
reach the converter as they arrive) and a ``header_callback`` (the status is known as soon as
the upstream accepts, before any answer byte). Tornado's client cannot abandon a transfer, and
a client that goes away must not leave an orphan transfer running upstream, so
``CancellableCurlClient`` adds ``cancel``. A client that reads slower than the upstream sends
must not make the gateway hold the difference, so a ``Transfer`` can be paused (libcurl stops
reading the upstream socket; TCP then slows the upstream down) and resumed.
"""

import asyncio
import functools
import logging
import time
import urllib.parse

import pycurl
import ujson
from tornado.concurrent import Future, future_set_result_unless_cancelled
from tornado.curl_httpclient import CurlAsyncHTTPClient, _CurlStreamingBuffer, curl_log
from tornado.log import app_log
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

from pgw.errors import ApiError, from_upstream
from pgw.logs import mask, remember

log = logging.getLogger("gateway.upstream")

ERROR_BODY_LIMIT = 64 * 1024
DOWNLOAD_LIMIT = 256 * 1024 * 1024  # an image or a file the code interpreter wrote
# libcurl gives every transfer a 64 KB upload buffer, held while the answer streams; a request
# body is one JSON payload read once, so its 16 KB minimum is plenty. Saves ~32 KB RSS per open
# stream (bench S3).
UPLOAD_BUFFER = 16 * 1024
# Bytes libcurl may read from the upstream socket at once. A long answer arrives faster than a
# 16 KB read per loop turn passes it on; larger reads mean fewer callbacks and client writes per
# MB (bench S2 end to end +5-15%). libcurl 8 lends the read buffer per read, so open streams
# hold no more memory (bench S3 unchanged).
READ_BUFFER = 128 * 1024
# Body bytes Tornado may queue between libcurl and the converter before it pauses the transfer
# itself (Tornado's default is 1 MB): with the client paused too, what one stream holds is this
# plus the client's high-water mark (STREAM_BUFFER_BYTES). Two reads: at full speed the queue
# holds at most one read between loop turns, so this never pauses a transfer a client keeps up with.
QUEUE_LIMIT = 2 * READ_BUFFER
HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS  # what a transfer and its redirects may speak (as Tornado)
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/120.0 Safari/537.36")


# libcurl errors that mean no connection was made: BASE_URL (or the proxy) is wrong or down. A
# conversation has no total time limit (request_timeout=0), so a timeout there is the connect's.
CONNECT_ERRORS = {pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY,
                  pycurl.E_OPERATION_TIMEDOUT}


def failure_text(error):
    """A transport failure in words, without Tornado's internal "HTTP 599: " in front."""
    if isinstance(error, HTTPClientError):
        return error.message or "the transfer failed"
    return str(error) or type(error).__name__


class QueuedBuffer(_CurlStreamingBuffer):
    """Tornado's queue between libcurl's write callback and a ``streaming_callback``, delivered
    as soon as ``socket_action`` has returned instead of from a loop callback per transfer.

    libcurl calls the write callback from inside ``socket_action``, where application code must
    not run, so Tornado queues each chunk and adds one loop callback per transfer to deliver it:
    with thousands of paced streams that is a loop callback (and a loop turn) per streamed event.
    ``CancellableCurlClient`` delivers every queued buffer right after ``socket_action`` returns,
    in the same callback (bench/profile.py pyspy: the curl path 14.7% -> see the commit).
    Outside ``socket_action`` (a resumed transfer) it falls back to one loop callback for all.
    """

    def _schedule_flush(self):
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.client.deliver_later(self)


class CancellableCurlClient(CurlAsyncHTTPClient):
    """Tornado's curl client, plus ``cancel(request)``, a handle pool that grows on demand, and
    body chunks delivered right after libcurl's ``socket_action`` (``QueuedBuffer``).

    ``cancel`` ends a running transfer the way libcurl ending it would (``_finish`` removes the
    handle from the multi, closing its connection, and answers the fetch with an error). This
    uses Tornado internals; tests cover it against the pinned Tornado version.
    """

    def initialize(self, max_clients=10, defaults=None, max_body_size=1 << 40):
        # Streamed bodies are never held, and a long answer repeats its text in every event
        # (O(n²) bytes): Tornado's 100 MB default would cut long answers short.
        self._limit = max_clients
        self._ready = []            # QueuedBuffers holding chunks, in the order they got them
        self._acting = False        # inside _handle_events/_handle_timeout, before delivery
        self._delivery_due = False  # a loop callback will deliver
        super().initialize(max_clients=min(max_clients, 16), defaults=defaults, max_body_size=max_body_size)
        self._plain_defaults = self.defaults == HTTPRequest._DEFAULTS  # (the lean set-up assumes them)

    def deliver_later(self, buffer):
        """``buffer`` holds chunks: delivered when the running ``socket_action`` returns, or
        (outside one) from a single loop callback shared by every buffer."""
        self._ready.append(buffer)
        if not self._acting and not self._delivery_due:
            self._delivery_due = True
            self.io_loop.add_callback(self._deliver)

    def _deliver(self):
        self._delivery_due = False
        self._acting = False  # what the callbacks cause (a resume) is delivered by a callback
        ready = self._ready
        if not ready:
            return
        self._ready = []
        for buffer in ready:
            try:
                buffer.flush()
            except Exception:  # as Tornado's loop would for a callback; the buffer retries the rest
                app_log.exception("exception in a streaming callback")

    def _handle_events(self, fd, events):
        self._acting = True
        try:
            super()._handle_events(fd, events)
        finally:
            self._acting = False

    def _handle_timeout(self):
        self._acting = True
        try:
            super()._handle_timeout()
        finally:
            self._acting = False

    def _finish_pending_requests(self):
        # socket_action has returned: chunks first, then the transfers it finished (in order)
        self._deliver()
        super()._finish_pending_requests()

    def _curl_setup_request(self, curl, request, buffer, headers):
        """Set up a streamed POST (a conversation, a resumed turn) in a third of Tornado's time;
        any other request is set up by Tornado.

        Tornado's set-up is written for every request its client can express: ~40 option reads
        through ``_RequestProxy``, ~27 ``setopt`` calls (a dozen restoring what the handle's reset
        already restored), a regex search per header line. Measured warm in process, the same
        request 5,000 times: 142 µs there, 40 µs here; in a whole call start (payload, run,
        request, set-up) 171 of 320 µs there, 68 here. Here the handle is reset first (whatever
        set it up before: Tornado resets it after each transfer too), then only what a streamed
        POST needs is set, the body handed to libcurl as it is (``POSTFIELDS``). What goes on the
        wire is byte for byte Tornado's (tests/unit/test_curl_setup.py)."""
        r = request.request  # fetch wraps the HTTPRequest in a _RequestProxy (client defaults)
        if not (r.method == "POST" and r.streaming_callback is not None and r.body is not None) or (
                r.proxy_host or r.auth_username is not None or r.client_cert or r.client_key or r.ssl_options
                or r.network_interface or r.ca_certs or r.user_agent or r.validate_cert is False
                or r.allow_ipv6 is False or not self._plain_defaults or curl_log.isEnabledFor(logging.DEBUG)):
            return super()._curl_setup_request(curl, request, buffer, headers)
        curl.reset()
        curl.setopt(pycurl.PROTOCOLS, HTTP_ONLY)
        curl.setopt(pycurl.REDIR_PROTOCOLS, HTTP_ONLY)
        curl.setopt(pycurl.URL, r.url)
        lines = [b"%s: %s" % (name.encode("ascii"), value.encode("latin-1")) for name, value in r.headers.get_all()]
        joined = b"".join(lines)  # (two searches of one string: a search per line cost 7 µs)
        if b"\r" in joined or b"\n" in joined:
            raise ValueError("Illegal characters in header (CR or LF)")
        if "Expect" not in r.headers:
            lines.append(b"Expect: ")  # no "100-continue" round trip (as Tornado)
        if "Pragma" not in r.headers:
            lines.append(b"Pragma: ")  # no libcurl "no-cache" (as Tornado)
        curl.setopt(pycurl.HTTPHEADER, lines)
        curl.setopt(pycurl.HEADERFUNCTION, functools.partial(self._curl_header_callback, headers, r.header_callback))
        streaming = curl.info["streaming_buffer"] = _CurlStreamingBuffer(self, curl, r.streaming_callback)
        curl.setopt(pycurl.WRITEFUNCTION, streaming.write)
        defaults = request.defaults
        follow = r.follow_redirects
        curl.setopt(pycurl.FOLLOWLOCATION, defaults["follow_redirects"] if follow is None else follow)
        redirects = r.max_redirects
        curl.setopt(pycurl.MAXREDIRS, defaults["max_redirects"] if redirects is None else redirects)
        connect = r.connect_timeout
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * (defaults["connect_timeout"] if connect is None else connect)))
        total = r.request_timeout
        curl.setopt(pycurl.TIMEOUT_MS, int(1000 * (defaults["request_timeout"] if total is None else total)))
        curl.setopt(pycurl.USERAGENT, "Mozilla/5.0 (compatible; pycurl)")  # Tornado's, under our header
        if r.decompress_response is not False:
            curl.setopt(pycurl.ENCODING, "gzip,deflate")
        body = r.body
        curl.setopt(pycurl.POSTFIELDSIZE, len(body))
        curl.setopt(pycurl.POSTFIELDS, body)  # (pycurl holds the bytes while the handle uses them)
        if r.prepare_curl_callback is not None:
            r.prepare_curl_callback(curl)

    def fetch_impl(self, request, callback):
        if not self._free_list and len(self._curls) < self._limit:
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)
        super().fetch_impl(request, callback)

    async def fetch_any(self, request):
        """Fetch and always return a response: Tornado raises for transport failures (code 599)
        even with ``raise_error=False``, and raises whatever setting up the transfer raised (a
        URL curl cannot take, say); here all of them are responses with ``code`` 599.

        Cancelling the awaiting task ends the transfer too (Tornado's future would otherwise be
        dropped while libcurl goes on fetching or uploading)."""
        try:
            future = self.fetch(request, raise_error=False)
        except Exception as e:
            return HTTPResponse(request, 599, error=e.with_traceback(None))
        try:
            # Shielded: a cancelled Tornado future would make the abort below log an ERROR
            # ("Exception after Future was cancelled") each time a client leaves mid-fetch.
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
            self.cancel(request)
            raise
        except Exception as e:
            # without its traceback: that would hold this frame, which holds the future, which
            # holds the error (a cycle only the garbage collector frees); failure_text says it all
            return HTTPResponse(request, 599, error=e.with_traceback(None))

    def cancel(self, request):
        """End ``request`` (the HTTPRequest given to fetch) now, as if the transfer had failed."""
        for curl in self._curls:
            info = getattr(curl, "info", None)
            # fetch wraps the request in a _RequestProxy holding it as .request
            if info is not None and getattr(info["request"], "request", info["request"]) is request:
                self._finish(curl, pycurl.E_ABORTED_BY_CALLBACK, "cancelled by the gateway")
                self._process_queue()
                return True
        for item in list(self._requests):
            if getattr(item[0], "request", item[0]) is request:
                self._requests.remove(item)
                item[1](HTTPResponse(request, 599, error=Exception("cancelled by the gateway")))
                return True
        return False


class _PausableBuffer(QueuedBuffer):
    """Tornado's queue between libcurl's write callback and ``streaming_callback``, which also
    pauses for the gateway's reasons (``hold``) and then resumes only on ``release``.

    Tornado's own buffer resumes a transfer it paused as soon as its queue is delivered; a
    transfer paused with ``curl.pause`` from outside would be resumed by that too. Here both
    reasons to pause are one state: ``paused`` says libcurl is paused, ``held`` that the gateway
    wants it so. Chunks already queued are still delivered while held (they are bounded by
    ``max_buffer_size``). Relies on Tornado 6.6 internals (``_CurlStreamingBuffer``); tests
    cover it against the pinned version.
    """

    held = False

    def write(self, chunk):
        if self.held:
            self.paused = True
            return pycurl.WRITEFUNC_PAUSE  # libcurl keeps the chunk and offers it again on resume
        return super().write(chunk)

    def flush(self):
        self.flush_scheduled = False
        try:
            while self.chunks:
                chunk = self.chunks.popleft()
                self.size -= len(chunk)
                self.callback(chunk)
        finally:
            if self.chunks:
                self._schedule_flush()  # the callback raised: deliver the rest later
            elif self.paused and not self.held:
                self._resume()

    def hold(self):
        if self.held or self.curl is None:
            return
        self.held = True
        self.paused = True
        try:
            self.curl.pause(pycurl.PAUSE_RECV)  # outside libcurl's callbacks: allowed
        except pycurl.error:
            pass  # the transfer failed meanwhile: _finish reports it

    def release(self):
        if not self.held:
            return
        self.held = False
        if self.chunks:
            self._schedule_flush()  # resumes once the queue is delivered
        elif self.paused:
            self._resume()

    def _resume(self):
        self.paused = False
        if self.curl is None:
            return
        try:
            self.curl.pause(pycurl.PAUSE_CONT)  # may call write() again with what libcurl kept
        except pycurl.error:
            return
        # Make the multi handle act on the resumed transfer now (Tornado does the same).
        self.client._set_timeout(0)


class Transfer:
    """One streaming upstream request.

    ``accepted`` resolves with the HTTP status once the upstream's headers are complete (or with
    None if the transfer failed before that); ``done`` resolves when the transfer has ended.
    Tornado queues header lines as callbacks but may deliver a body that arrived in the same
    read before them, so the first body chunk also reads the status from the curl handle.
    Body bytes of a 200 answer go to ``on_chunk``; other answers' bodies are kept in
    ``error_body`` (bounded) and their headers in ``headers`` (``Retry-After``, ``Content-Type``)
    for the error message. ``pause``/``resume``: stop and restart reading the upstream (a slow
    client); ``paused`` says which.
    """

    def __init__(self, client, request, on_chunk):
        self._client = client
        self.request = request
        self._on_chunk = on_chunk
        self.status = None
        self._line_status = None
        self.content_type = None  # of the answer, lower case, as its headers say
        self._curl = None
        self._buffer = None
        self.paused = False
        self.accepted = Future()
        self.error_body = bytearray()
        self.headers = None       # the final answer's headers, kept only when it is not a 200
        self.failure = None       # text of a transport failure (refused, timeout, dropped)
        self.connect_failed = False  # the failure was that no connection could be made
        self.cancelled = False
        request.header_callback = self._header_line
        request.streaming_callback = self._chunk
        request.prepare_curl_callback = self._prepare
        self.done = asyncio.ensure_future(client.fetch_any(request))
        self.done.add_done_callback(self._finished)

    def cancel(self, reason="cancelled"):
        if self.cancelled or self.done.done():
            return
        self.cancelled = True
        self.failure = reason
        self._client.cancel(self.request)

    def pause(self):
        """Stop reading the upstream until ``resume`` (what was already read is still delivered)."""
        if not self.paused and not self.done.done():
            self.paused = True
            if self._buffer is not None:
                self._buffer.hold()

    def resume(self):
        if self.paused:
            self.paused = False
            if self._buffer is not None:
                self._buffer.release()

    def _prepare(self, curl):
        self._curl = curl
        # Tornado has just made the streaming buffer; put ours in its place: delivered in batches
        # after socket_action (QueuedBuffer) and pausable for backpressure (_PausableBuffer).
        buffer = _PausableBuffer(self._client, curl, self._chunk)
        curl.info["streaming_buffer"] = buffer
        curl.setopt(pycurl.WRITEFUNCTION, buffer.write)
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER)
        curl.setopt(pycurl.BUFFERSIZE, READ_BUFFER)
        buffer.max_buffer_size = QUEUE_LIMIT
        self._buffer = buffer
        if self.paused:
            buffer.hold()
        # Without NOSIGNAL libcurl saves, ignores and restores SIGPIPE around every socket_action:
        # three rt_sigaction calls per streamed event (strace -c, bench S1). Python already ignores
        # SIGPIPE, and libcurl's resolver is threaded (no SIGALRM for DNS timeouts), so nothing is lost.
        curl.setopt(pycurl.NOSIGNAL, 1)

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
            if self._line_status == 200 and "connection established" in line.lower():
                self._line_status = None  # an HTTPS proxy's answer to CONNECT, not the upstream's
            self.headers = None if self._line_status in (None, 200) else HTTPHeaders()
        elif line in ("\r\n", "\n") and self._line_status is not None and self._line_status >= 200:
            self._accept(self._line_status)
        else:
            if line[:13].lower() == "content-type:":
                self.content_type = line[13:].strip().lower()
            if self.headers is not None and len(self.headers) < 100:
                try:
                    self.headers.parse_line(line)
                except Exception:  # a malformed line only loses a header of an error answer
                    pass

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
        response = future.result()  # fetch_any never raises
        if response.error is not None and response.code == 599 and self.failure is None:
            self.failure = failure_text(response.error)
            self.connect_failed = getattr(response.error, "errno", None) in CONNECT_ERRORS
        if self.status is None:
            if response.code == 599:
                future_set_result_unless_cancelled(self.accepted, None)
            else:
                self._accept(response.code)
        # Over: the callbacks that tie the request and libcurl's buffer back to this object go,
        # so that all of it is freed by reference counting, not left for the cyclic collector.
        request = self.request
        request.header_callback = request.streaming_callback = request.prepare_curl_callback = None
        self._buffer = None
        if response._error_is_response_code:  # Tornado's HTTPClientError of a non-2xx holds the response
            response.error = None              # (the status is ours already)


def split_key(key):
    """``(token, account id or "")`` of a client key ``<token>[,<account id>]``."""
    token, _, account = key.partition(",")
    return token.strip(), account.strip()


class UpstreamClient:
    def __init__(self, settings):
        self.settings = settings
        prefix = settings.proxy_api_prefix
        self.root = settings.base_url + ("/" + prefix if prefix else "")
        self.http = CancellableCurlClient(force_instance=True, max_clients=settings.upstream_max_transfers)
        # Files (client URLs, download URLs, uploads) have their own handles: a burst of slow
        # file URLs waits for these FILE_FETCH_MAX_TRANSFERS, never for the conversations' pool.
        self.files_http = CancellableCurlClient(force_instance=True, max_clients=settings.file_fetch_max_transfers)
        self.downloads = None   # a urlguard.GuardedFetcher for download URLs (set by Gateway via guard_downloads)

    def guard_downloads(self, fetcher):
        """Send the upstream's ``download_url`` fetches through ``fetcher`` (``urlguard.GuardedFetcher``)."""
        self.downloads = fetcher

    def url(self, path):
        """``path`` below ``backend-api``, e.g. ``conversation``."""
        return "%s/backend-api/%s" % (self.root, path)

    def _headers(self, key, accept="application/json"):
        """The headers of every call below ``backend-api``. The one place a key is split:
        ``<token>,<account id>`` (a Team/Business account, the convention among gateways) is sent
        as the token plus ``ChatGPT-Account-Id``; keys stay plain strings everywhere else."""
        token, account = split_key(key)
        remember(key)  # a pool account's token, refreshed or not, is masked in every log line too
        headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                   "Accept": accept, "Oai-Language": "en-US", "User-Agent": USER_AGENT}
        if account:
            headers["ChatGPT-Account-Id"] = account
        return headers

    def start_conversation(self, key, payload, on_chunk):
        """POST the conversation; return a ``Transfer`` streaming its answer into ``on_chunk``."""
        request = HTTPRequest(
            self.url("conversation"), method="POST",
            headers=self._headers(key, "text/event-stream"),
            body=ujson.dumps(payload, ensure_ascii=False),
            connect_timeout=self.settings.upstream_connect_timeout,
            request_timeout=0,  # no total limit: silence is what times a stream out (see handlers)
            follow_redirects=False)
        if log.isEnabledFor(logging.DEBUG):  # (masking costs even when the line is not written)
            log.debug("conversation for key %s, model %s", mask(key), payload.get("model"))
        return Transfer(self.http, request, on_chunk)

    def resume_conversation(self, key, token, conversation_id, on_chunk):
        """POST ``f/conversation/resume`` for a turn the stream handed off (``stream_handoff``):
        the ``x-conduit-token`` is the stream's ``resume_conversation_token``; the answer streams
        into ``on_chunk`` as a conversation's does."""
        headers = self._headers(key, "text/event-stream")
        headers["x-conduit-token"] = token
        request = HTTPRequest(
            self.url("f/conversation/resume"), method="POST", headers=headers,
            body=ujson.dumps({"conversation_id": conversation_id, "offset": 0}),
            connect_timeout=self.settings.upstream_connect_timeout, request_timeout=0, follow_redirects=False)
        log.debug("resuming conversation %s for key %s", conversation_id, mask(key))
        return Transfer(self.http, request, on_chunk)

    async def get_conversation(self, key, conversation_id, timeout=30):
        """``GET conversation/{id}``: the whole conversation (``mapping``), polled while an
        answer finishes elsewhere. ``(status, decoded JSON or None, raw bytes)`` as ``call``."""
        return await self.call("GET", "conversation/" + urllib.parse.quote(conversation_id, safe=""), key,
                               timeout=timeout)

    async def call(self, method, path, key, body=None, timeout=30):
        """A plain JSON call below ``backend-api``: ``(status, decoded JSON or None, raw bytes)``.

        Status 599 means no answer came (refused, timed out, cut); the raw body is then the
        failure in words (``failure_text``)."""
        response = await self.http.fetch_any(HTTPRequest(
            self.url(path), method=method, headers=self._headers(key),
            body=None if body is None else ujson.dumps(body, ensure_ascii=False),
            connect_timeout=self.settings.upstream_connect_timeout,
            request_timeout=timeout, follow_redirects=False, allow_nonstandard_methods=True))
        raw = response.body or b""
        if response.code == 599:
            return 599, None, failure_text(response.error).encode()
        try:
            data = ujson.loads(raw) if raw else None
        except ValueError:
            data = None
        return response.code, data, raw

    async def hide_conversation(self, key, conversation_id):
        """Hide a finished conversation from the account's history; failures are only logged."""
        status, data, raw = await self.call("PATCH", "conversation/" + urllib.parse.quote(conversation_id, safe=""),
                                            key, {"is_visible": False})
        if status != 200:
            log.warning("hiding conversation %s failed: %s", conversation_id, describe(status, raw))

    async def download_url(self, key, path, **query):
        """Ask ``backend-api/<path>`` for a file's ``download_url``: ``(url, None)`` or
        ``(None, reason)``. Used for ``files/{id}/download``,
        ``conversation/{cid}/attachment/{file_id}/download`` (``sediment://`` pictures) and
        ``conversation/{cid}/interpreter/download``."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        status, data, raw = await self.call("GET", path, key)
        url = data.get("download_url") if isinstance(data, dict) else None
        if status == 200 and isinstance(url, str) and url:
            return url, None
        return None, describe(status, raw)

    async def fetch_url(self, url, max_bytes=DOWNLOAD_LIMIT, timeout=60):
        """GET a plain URL the upstream gave (a ``download_url``), at most ``max_bytes`` of it,
        through the address guard when one is set (``guard_downloads``): a ``Fetched``."""
        if self.downloads is not None:
            return await self.downloads.get(url, max_bytes, timeout)
        return await self._fetch_limited(url, max_bytes, self.settings.upstream_connect_timeout, timeout,
                                         lambda curl: None, follow=True)

    async def fetch_guarded(self, url, host, port, address, max_bytes, connect_timeout, timeout):
        """GET a URL a client gave, connecting only to ``address`` (already checked by the caller).

        The connection is pinned to the checked address (``CONNECT_TO``), so a DNS answer that
        changes between the check and the connection cannot lead anywhere else; TLS still checks
        the certificate against ``host``. Only http/https, no redirects followed here (the caller
        checks each hop), a fresh connection, and the body is cut off past ``max_bytes``.
        Tornado resets every curl handle after use, so none of this leaks into other transfers.
        """
        def pin(curl):
            curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            curl.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            curl.setopt(pycurl.FRESH_CONNECT, 1)
            curl.setopt(pycurl.FORBID_REUSE, 1)
            if host != address:
                target = "[%s]" % address if ":" in address else address
                curl.setopt(pycurl.CONNECT_TO, ["%s:%d:%s:%d" % (host, port, target, port)])
        return await self._fetch_limited(url, max_bytes, connect_timeout, timeout, pin, follow=False)

    @staticmethod
    def failed_fetch(reason):
        """A ``Fetched`` for a GET that never started (``reason``: why)."""
        result = Fetched()
        result.status = 599
        result.failure = reason
        return result

    async def _fetch_limited(self, url, max_bytes, connect_timeout, timeout, prepare_more, follow):
        """A GET whose body is kept only up to ``max_bytes`` (then the transfer is aborted)."""
        result = Fetched()
        body = result.body

        def write(chunk):
            if len(body) + len(chunk) > max_bytes:
                result.too_big = True
                return 0  # any count but len(chunk) makes libcurl abort the transfer
            body.extend(chunk)
            return None

        def prepare(curl):
            curl.setopt(pycurl.WRITEFUNCTION, write)
            curl.setopt(pycurl.MAXFILESIZE_LARGE, max_bytes)  # refuses early when Content-Length says so
            prepare_more(curl)

        response = await self.files_http.fetch_any(HTTPRequest(
            url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"}, connect_timeout=connect_timeout,
            request_timeout=timeout, follow_redirects=follow, max_redirects=3, prepare_curl_callback=prepare))
        result.status = response.code
        result.headers = response.headers
        if getattr(response.error, "errno", None) == pycurl.E_FILESIZE_EXCEEDED:
            result.too_big = True
        if response.code == 599 and not result.too_big:
            result.failure = failure_text(response.error)
            result.connect_failed = getattr(response.error, "errno", None) == pycurl.E_COULDNT_CONNECT
        return result

    def upload_url(self, url):
        """``upload_url`` with its host replaced by UPLOAD_HOST_OVERRIDE, when that is set."""
        override = self.settings.upload_host_override
        if not override:
            return url
        new, old = urllib.parse.urlsplit(override), urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit((new.scheme, new.netloc, new.path.rstrip("/") + old.path, old.query, ""))

    async def upload_file(self, key, info, timeout=120):
        """The web client's 3-step upload of one checked file (``converters.files.FileInfo``).

        Returns the upstream ``file_id``; raises an ``ApiError`` naming the step that failed.
        """
        status, data, raw = await self.call("POST", "files", key, {
            "file_name": info.name, "file_size": info.size, "use_case": info.use_case})
        if status != 200 or not isinstance(data, dict) or not data.get("file_id") or not data.get("upload_url"):
            raise _upload_error(1, "POST backend-api/files", status, raw)
        file_id = data["file_id"]
        response = await self.files_http.fetch_any(HTTPRequest(
            self.upload_url(data["upload_url"]), method="PUT", body=info.data,
            headers={"x-ms-blob-type": "BlockBlob", "Content-Type": info.mime, "User-Agent": USER_AGENT},
            connect_timeout=self.settings.upstream_connect_timeout, request_timeout=timeout,
            follow_redirects=False))
        if response.code not in (200, 201):
            raw = failure_text(response.error).encode() if response.code == 599 else (response.body or b"")
            raise _upload_error(2, "PUT upload_url", response.code, raw)
        status, data, raw = await self.call("POST", "files/%s/uploaded" % file_id, key, {})
        if status != 200:
            raise _upload_error(3, "POST backend-api/files/%s/uploaded" % file_id, status, raw)
        log.debug("uploaded %s (%s, %d bytes) for key %s", file_id, info.mime, info.size, mask(key))
        return file_id

    def close(self):
        self.http.close()
        self.files_http.close()


class UpstreamHealth:
    """Whether the upstream answers, probed at most every ``every`` seconds and cached, for
    ``/readyz`` (Docker and Kubernetes poll it) and the start-up check.

    The probe is a GET of ``backend-api/models`` without a key: a working PandoraNext answers
    it (401 without a key), so any answer below 500 means the address is right and up; no
    answer or a 5xx means requests would fail now. Concurrent checks share one probe.
    """

    def __init__(self, upstream, every=5.0, timeout=5.0, clock=None):
        self.upstream = upstream
        self.every = every
        self.timeout = timeout
        self.clock = clock or time.monotonic
        self.result = None        # (answers, status or None, failure text or None)
        self._checked_at = None
        self._probe = None

    async def check(self):
        """``(answers, status, failure)``, fresh or at most ``every`` seconds old."""
        if self._checked_at is not None and self.clock() - self._checked_at < self.every:
            return self.result
        if self._probe is None:
            self._probe = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._probe)

    def age(self):
        return None if self._checked_at is None else self.clock() - self._checked_at

    async def _run(self):
        try:
            u = self.upstream
            response = await u.http.fetch_any(HTTPRequest(
                u.url("models"), headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                connect_timeout=min(u.settings.upstream_connect_timeout, self.timeout),
                request_timeout=self.timeout, follow_redirects=False))
            if response.code == 599:
                self.result = (False, None, failure_text(response.error))
            else:
                self.result = (response.code < 500, response.code, None)
            self._checked_at = self.clock()
            return self.result
        finally:
            self._probe = None


class Fetched:
    """What ``fetch_url`` or ``fetch_guarded`` got: status (599: no answer), headers, body, and why it stopped."""
    __slots__ = ("status", "headers", "body", "too_big", "failure", "connect_failed")

    def __init__(self):
        self.status = None
        self.headers = None
        self.body = bytearray()
        self.too_big = False
        self.failure = None
        self.connect_failed = False


def describe(status, raw):
    """A short account of a plain call's outcome for a log line: ``HTTP 404: …`` for an answer,
    ``no answer: …`` for a transport failure (never Tornado's internal code 599)."""
    text = " ".join(bytes(raw[:200]).decode("utf-8", "replace").split())
    if status == 599:
        return "no answer: %s" % text
    return "HTTP %s: %s" % (status, text or "(empty body)")


def _upload_error(step, what, status, raw):
    prefix = "uploading the file failed at step %d of 3 (%s): " % (step, what)
    if status == 599:
        return ApiError(502, prefix + "no answer from the upstream: %s" % raw.decode("utf-8", "replace"),
                        "upstream_error", "upload_failed")
    error = from_upstream(status, raw)
    error.message = prefix + error.message
    return error
