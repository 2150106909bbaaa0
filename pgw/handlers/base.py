"""What every endpoint shares: CORS, the API key, JSON bodies with a size limit, OpenAI errors."""

import logging
import re
import time

import ujson
from tornado.web import RequestHandler, stream_request_body

from pgw import logs
from pgw.converters import openai_format
from pgw.errors import ApiError, bad_request
from pgw.listener import peer_address, trusted_proxies
from pgw.metrics import ENDPOINTS

log = logging.getLogger("gateway.http")


# A JSON escape of a UTF-16 surrogate: clients that cut text inside an emoji send half of one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A surrogate encoded as UTF-8 bytes (CESU-8, or "WTF-8"): never valid UTF-8, yet ujson 6.1
# decodes it into a str that cannot be encoded again (a 500 later, upstream or in a log line).
_ENCODED_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
# A JSON string, or the byte opening an object or array outside strings.
_STRING_OR_OPENING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]')


def _fix_surrogates(text):
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _containers_over(raw, limit):
    """Whether ``raw`` opens more than ``limit`` objects and arrays, without decoding it.

    Counting ``{`` and ``[`` bytes is an upper bound (C speed, ~10 ms for 30 MB); only a body
    over it is scanned exactly, skipping strings, and the scan stops at the limit (a body of a
    million messages: 0.2 s, and nothing decoded)."""
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    count = 0
    for m in _STRING_OR_OPENING.finditer(raw):
        if m.end() - m.start() == 1:
            count += 1
            if count > limit:
                return True
    return False


def check_depth_and_repair(body, max_depth, repair):
    """Walk the decoded body without recursion: raise a 400 if it nests deeper than
    ``max_depth``; with ``repair``, replace each lone surrogate by U+FFFD (such text cannot be
    encoded as UTF-8, so it could go neither upstream nor into an error message). Returns the body."""
    if repair and isinstance(body, str):
        return _fix_surrogates(body)
    stack = [(body, 1)] if isinstance(body, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise bad_request("the request body nests objects and arrays more than %d deep (MAX_JSON_DEPTH)"
                              % max_depth, code="json_too_deep")
        if isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (list, dict)):
                    stack.append((v, depth + 1))
                elif repair and isinstance(v, str):
                    node[i] = _fix_surrogates(v)
        else:
            items = list(node.items())
            if repair:
                node.clear()
            for k, v in items:
                if isinstance(v, (list, dict)):
                    stack.append((v, depth + 1))
                elif repair and isinstance(v, str):
                    v = _fix_surrogates(v)
                if repair:
                    node[_fix_surrogates(k)] = v
    return body


# A host name or address with an optional port, as a Host header may hold it.
_HOST = re.compile(r"\A(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
_HAS_PORT = re.compile(r":[0-9]{1,5}\Z")

# What browser clients send: the openai SDK's x-stainless-* headers among them.
CORS_HEADERS = ", ".join((
    "Authorization", "Content-Type", "Accept", "OpenAI-Organization", "OpenAI-Project", "X-Requested-With",
    "x-stainless-os", "x-stainless-lang", "x-stainless-package-version", "x-stainless-runtime",
    "x-stainless-runtime-version", "x-stainless-arch", "x-stainless-retry-count", "x-stainless-timeout",
    "x-stainless-read-timeout"))


def metrics_endpoint(handler):
    """The ``endpoint`` label of a handler: its route, or ``other`` (unknown paths, 404s)."""
    return ENDPOINTS.get(type(handler).__name__, "other")


class ClientGone(Exception):
    """The client disconnected before its answer started: there is nothing left to do."""


class ApiHandler(RequestHandler):
    """Base for the gateway's endpoints. Every error leaves as an OpenAI error object."""

    # What the access log line and the metrics report (``log_request``). Subclasses (and the
    # account pool: ``account_label``, ``queued_s``) set them as they learn them.
    log_model = None
    log_stream = None
    account_label = None
    queued_s = None
    _first_byte_at = None
    _bytes_out = 0
    _logged = False

    @property
    def gateway(self):
        """The ``Gateway`` holding settings, model table, upstream client (see server.py)."""
        return self.application.gateway

    def set_default_headers(self):
        # Browser UIs (ChatGPT-Next-Web and the like) call us cross-origin.
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Allow-Headers", CORS_HEADERS)
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Max-Age", "86400")

    def options(self, *args):
        self.set_status(204)
        self.finish()

    def flush(self, include_footers=False):
        """Tornado's flush, noting the time of the first byte and the bytes sent: once per loop
        turn of a stream (``StreamSink`` flushes a turn's chunks at once), not per event."""
        if self._first_byte_at is None:
            self._first_byte_at = time.time()
        if self._write_buffer:
            self._bytes_out += sum(len(part) for part in self._write_buffer)
        return super().flush(include_footers)

    def count_sent(self, nbytes):
        """What ``flush`` notes, for bytes a ``StreamSink`` sent past Tornado's write path."""
        if self._first_byte_at is None:
            self._first_byte_at = time.time()
        self._bytes_out += nbytes

    def on_finish(self):
        self.log_request()

    def log_request(self):
        """One access-log line and the request's metrics, once per request: when it finished,
        or when the client left before there was anything to answer (``ClientGone``)."""
        if self._logged:
            return
        self._logged = True
        try:
            self._log_request()
        except Exception:  # the answer is already out: a bug here must not touch it
            log.exception("access log for %s %s failed", self.request.method, self.request.path[:200])

    def _log_request(self):
        request = self.request
        total = request.request_time()
        ttfb = self._first_byte_at - request._start_time if self._first_byte_at is not None else None
        run = getattr(self, "_run", None)  # the upstream conversation, if one ran (ConversationHandler)
        transfer = run.transfer if run is not None else None
        upstream_status = None
        if transfer is not None:
            upstream_status = transfer.status if transfer.status is not None else "no_answer"
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        gw = self.gateway
        status = self.get_status()
        logs.access(type(self).__name__ in logs.QUIET_HANDLERS, request.method, request.path, status,
                    model=self.log_model, stream=self.log_stream, ttfb=ttfb, total=total, bytes=self._bytes_out,
                    key=logs.mask(key.strip()) if scheme.lower() == "bearer" else None,
                    account=self.account_label, queued=self.queued_s, upstream=upstream_status,
                    client_gone=getattr(self, "_gone", False))
        metrics = getattr(gw, "metrics", None)
        if metrics is not None:
            saved = [len(raw) for _action, _url, raw in run.downloads.saved] if run is not None else None
            metrics.request_done(metrics_endpoint(self), status, metrics.model_label(self.log_model, gw.models),
                                 ttfb, total, upstream_status, saved)

    def api_key(self):
        """The caller's key from ``Authorization: Bearer <key>``; it is forwarded unchanged."""
        auth = self.request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        logs.remember(key or scheme)  # masked in every log line from now on, even for a 401
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                                "(your PandoraNext fk/share token or access token).",
                           "invalid_request_error", "invalid_api_key")
        return key

    def public_base_url(self):
        """Where clients reach this gateway, for links to saved images: UPLOAD_BASE_URL when set
        (no header can change it); else the scheme and host the client used (``public_host``):
        behind a reverse proxy in TRUSTED_PROXIES (nginx) the ones it forwards in
        X-Forwarded-Proto (applied by the listener) and X-Forwarded-Host (+ X-Forwarded-Port)."""
        return self.gateway.settings.upload_base_url or "%s://%s" % (self.request.protocol, self.public_host())

    def forwarded_headers_trusted(self):
        """Whether this request's X-Forwarded-* headers are believed: it came from an address
        in TRUSTED_PROXIES (pgw/listener.py), never from just any client."""
        return trusted_proxies(self.gateway.settings.trusted_proxies).trusts(peer_address(self.request))

    def public_host(self):
        """``host[:port]`` clients used: X-Forwarded-Host's first entry when trusted and well
        formed (a link must not carry whatever a client wrote there), else the Host header, or
        if that is not a plain host[:port] either, the address the connection came in on. A link
        built from the Host header goes back only to the client that sent it."""
        request = self.request
        if self.forwarded_headers_trusted():
            forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
            if forwarded and _HOST.match(forwarded):
                port = request.headers.get("X-Forwarded-Port", "").split(",")[0].strip()
                default = "443" if request.protocol == "https" else "80"
                if port.isdigit() and port != default and not _HAS_PORT.search(forwarded):
                    forwarded += ":" + port
                return forwarded
        if _HOST.match(request.host or ""):
            return request.host
        address = request.connection.stream.socket.getsockname()
        return "[%s]:%d" % address[:2] if ":" in address[0] else "%s:%d" % address[:2]

    def write_json(self, obj):
        """Finish with a JSON body, UTF-8 as is and ``/`` unescaped, as OpenAI's API writes it."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(openai_format.dumps(obj))

    def send_error_json(self, error):
        self.clear()
        self.set_status(error.status)
        for name, value in error.headers.items():  # Retry-After, x-should-retry (pgw.errors)
            self.set_header(name, value)
        if error.status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))  # RFC 9110 wants it with a 405
        self.write_json(error.body())

    def allowed_methods(self):
        """The methods this endpoint answers: those its class implements, and OPTIONS (CORS)."""
        own = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
               if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]
        return own + ["OPTIONS"]

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            error = exc
        elif status_code == 404:
            error = ApiError(404, "no such endpoint: %s %s" % (self.request.method, self.request.path),
                             "invalid_request_error", "not_found")
        elif status_code == 405:
            error = ApiError(405, "method %s is not allowed here" % self.request.method,
                             "invalid_request_error", "method_not_allowed")
        elif status_code < 500:
            error = ApiError(status_code, self._reason, "invalid_request_error", None)
        else:
            error = ApiError(500, "internal error in the gateway", "server_error", "internal_error")
        if self._headers_written:
            return  # a stream already under way reports its own errors
        self.send_error_json(error)

    def _handle_request_exception(self, e):
        if isinstance(e, ClientGone):
            self.log_request()
            return  # nobody to answer
        if isinstance(e, ApiError):
            if e.status >= 500:
                log.warning("%s %s -> %d: %s", self.request.method, self.request.path, e.status, e.message)
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


@stream_request_body
class JsonBodyHandler(ApiHandler):
    """Reads a JSON body up to MAX_REQUEST_BODY; anything larger is drained and answered 413."""

    def prepare(self):
        self._chunks = []
        self._size = 0
        self._limit = self.gateway.settings.max_request_body
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._limit:
            raise self._too_large()  # answered now; nothing of the body is read

    def data_received(self, chunk):
        self._size += len(chunk)
        if self._size <= self._limit:
            self._chunks.append(chunk)
        elif not self._finished:  # a chunked body past the limit: answer now, read no more of it
            self.send_error_json(self._too_large())

    def _too_large(self):
        """The 413 naming MAX_REQUEST_BODY. Answering before the body has been read makes Tornado
        close the connection once the answer is out (it reads no more of the body); its own cap,
        which would cut in with a bare 400 first, is lifted for this request."""
        self.request.connection.set_max_body_size(1 << 62)
        return ApiError(413, "the request body is larger than the %d bytes this gateway accepts (MAX_REQUEST_BODY)"
                        % self._limit, "invalid_request_error", "request_too_large")

    def json_body(self):
        """The decoded body, checked: size (413), UTF-8, JSON, object count and depth (400)."""
        settings = self.gateway.settings
        if self._size > self._limit:
            raise self._too_large()
        raw = b"".join(self._chunks)
        self._chunks = []
        if not raw.strip():
            raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
        bad = _ENCODED_SURROGATE.search(raw)
        if bad:
            raise bad_request("the request body is not valid UTF-8: an encoded UTF-16 surrogate at byte %d "
                              "(CESU-8); send text as UTF-8" % bad.start(), code="invalid_json")
        if _containers_over(raw, settings.max_json_containers):
            raise bad_request("the request body has more than %d objects and arrays (MAX_JSON_CONTAINERS)"
                              % settings.max_json_containers, code="json_too_large")
        try:
            body = ujson.loads(raw)  # ujson 6.1 stops at 1024 levels itself, in C
        except ValueError as e:
            if "depth" in str(e):
                raise bad_request("the request body nests objects and arrays more than %d deep (MAX_JSON_DEPTH)"
                                  % settings.max_json_depth, code="json_too_deep") from None
            raise bad_request("the request body is not valid JSON: %s" % e, code="invalid_json") from None
        self._note_request(body)
        return check_depth_and_repair(body, settings.max_json_depth, bool(_SURROGATE_ESCAPE.search(raw)))

    def _note_request(self, body):
        """The model and stream flag for the access log (what the client asked, checked or not)."""
        if isinstance(body, dict):
            model = body.get("model")
            self.log_model = model[:100] if isinstance(model, str) else None
            self.log_stream = body.get("stream") is True


class NotFoundHandler(ApiHandler):
    def prepare(self):
        if self.request.method != "OPTIONS":
            self.send_error(404)

    def options(self, *args):
        self.send_error(404)
