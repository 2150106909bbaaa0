"""What every endpoint shares: CORS, the API key, JSON bodies with a size limit, OpenAI errors."""

import logging
import re

import ujson
from tornado.web import RequestHandler, stream_request_body

from pgw.converters import openai_format
from pgw.errors import ApiError, bad_request

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


# What browser clients send: the openai SDK's x-stainless-* headers among them.
CORS_HEADERS = ", ".join((
    "Authorization", "Content-Type", "Accept", "OpenAI-Organization", "OpenAI-Project", "X-Requested-With",
    "x-stainless-os", "x-stainless-lang", "x-stainless-package-version", "x-stainless-runtime",
    "x-stainless-runtime-version", "x-stainless-arch", "x-stainless-retry-count", "x-stainless-timeout",
    "x-stainless-read-timeout"))


class ClientGone(Exception):
    """The client disconnected before its answer started: there is nothing left to do."""


class ApiHandler(RequestHandler):
    """Base for the gateway's endpoints. Every error leaves as an OpenAI error object."""

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
        else the scheme and Host the request came with (X-Forwarded-Proto is honoured)."""
        return self.gateway.settings.upload_base_url or "%s://%s" % (self.request.protocol, self.request.host)

    def write_json(self, obj):
        """Finish with a JSON body, UTF-8 as is and ``/`` unescaped, as OpenAI's API writes it."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(openai_format.dumps(obj))

    def send_error_json(self, error):
        self.clear()
        self.set_status(error.status)
        for name, value in (getattr(error, "headers", None) or {}).items():  # Retry-After, say
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
        return _without_lone_surrogates(body) if _SURROGATE_ESCAPE.search(raw) else body


class NotFoundHandler(ApiHandler):
    def prepare(self):
        if self.request.method != "OPTIONS":
            self.send_error(404)

    def options(self, *args):
        self.send_error(404)
