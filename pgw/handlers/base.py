"""What every endpoint shares: CORS, the API key, JSON bodies with a size limit, OpenAI errors."""

import logging
import re
import time

import ujson
from tornado.web import RequestHandler, stream_request_body

from pgw.converters import openai_format
from pgw import logs
from pgw.errors import ApiError, bad_request
from pgw.metrics import ENDPOINTS

log = logging.getLogger("gateway.http")


# A JSON escape of a UTF-16 surrogate: clients that cut text inside an emoji send half of one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _without_lone_surrogates(obj):
    """The body with each lone surrogate replaced by U+FFFD: such text cannot be encoded as
    UTF-8, so it could go neither upstream nor into an error message."""
    if isinstance(obj, str):
        return obj.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(obj, list):
        return [_without_lone_surrogates(x) for x in obj]
    if isinstance(obj, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in obj.items()}
    return obj


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
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                                "(your PandoraNext fk/share token or access token).",
                           "invalid_request_error", "invalid_api_key")
        return key

    def public_base_url(self):
        """Where clients reach this gateway, for links to saved images: UPLOAD_BASE_URL, or
        else the scheme and host the request came with: behind a reverse proxy (nginx) the
        ones it forwards in X-Forwarded-Proto (applied by Tornado's ``xheaders``) and
        X-Forwarded-Host (+ X-Forwarded-Port), when X-Forwarded-* headers are trusted."""
        return self.gateway.settings.upload_base_url or "%s://%s" % (self.request.protocol, self.public_host())

    def forwarded_headers_trusted(self):
        """Whether this request's X-Forwarded-* headers are believed (Tornado's ``xheaders``,
        passed to both the server and the Application in server.py)."""
        return bool(self.application.settings.get("xheaders"))

    def public_host(self):
        """``host[:port]`` clients used: X-Forwarded-Host's first entry when trusted and well
        formed (a link must not carry whatever a client wrote there), else the Host header."""
        request = self.request
        if self.forwarded_headers_trusted():
            forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
            if forwarded and _HOST.match(forwarded):
                port = request.headers.get("X-Forwarded-Port", "").split(",")[0].strip()
                default = "443" if request.protocol == "https" else "80"
                if port.isdigit() and port != default and not _HAS_PORT.search(forwarded):
                    forwarded += ":" + port
                return forwarded
        return request.host

    def write_json(self, obj):
        """Finish with a JSON body, UTF-8 as is and ``/`` unescaped, as OpenAI's API writes it."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(openai_format.dumps(obj))

    def send_error_json(self, error):
        self.clear()
        self.set_status(error.status)
        for name, value in error.headers.items():  # Retry-After, x-should-retry (pgw.errors)
            self.set_header(name, value)
        self.write_json(error.body())

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
            self._size = int(length)  # known to be too large: do not keep any of it

    def data_received(self, chunk):
        self._size += len(chunk)
        if self._size <= self._limit:
            self._chunks.append(chunk)

    def json_body(self):
        if self._size > self._limit:
            raise ApiError(413, "the request body is larger than the %d bytes this gateway accepts" % self._limit,
                           "invalid_request_error", "request_too_large")
        raw = b"".join(self._chunks)
        self._chunks = []
        if not raw.strip():
            raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
        try:
            body = ujson.loads(raw)
        except ValueError as e:
            raise bad_request("the request body is not valid JSON: %s" % e, code="invalid_json") from None
        self._note_request(body)
        return _without_lone_surrogates(body) if _SURROGATE_ESCAPE.search(raw) else body

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
