"""OpenAI-shaped errors: the one place that knows their JSON shape and HTTP statuses.

Clients (the openai SDKs, NextChat, bot frameworks) read ``{"error": {"message", "type",
"code"}}`` and raise or show ``message``; an honest message here is what a user sees. The
openai SDKs also read two response headers: they retry 408/409/429/5xx twice by default (three
requests for one call) unless ``x-should-retry: false``, and wait ``Retry-After`` seconds first.
"""

import math

import ujson


class ApiError(Exception):
    """An error to send to the client as an OpenAI error object with an HTTP status.

    ``headers``: extra response headers (``Retry-After``, ``x-should-retry``), written by
    ``ApiHandler.send_error_json``; an error inside a stream under way cannot carry them."""

    def __init__(self, status, message, type="invalid_request_error", code=None, param=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message, param=None, code="invalid_request"):
    return ApiError(400, message, "invalid_request_error", code, param)


# Upstream HTTP status -> (our status, OpenAI error type, default code)
_UPSTREAM = {
    400: (400, "invalid_request_error", "upstream_bad_request"),
    401: (401, "invalid_request_error", "invalid_api_key"),
    403: (403, "permission_error", "forbidden"),
    404: (404, "invalid_request_error", "not_found"),
    413: (413, "invalid_request_error", "message_too_long"),
    422: (400, "invalid_request_error", "upstream_rejected_request"),
    429: (429, "rate_limit_error", "rate_limit_exceeded"),
}

# 429 codes of usage caps: the account is out of messages (or uploads) for minutes to hours, so
# the SDKs' immediate retries cannot succeed and only triple the load (upstream-protocol.md 5.8).
_CAP_CODES = {"model_cap_exceeded", "throttled", "usage_cap_exceeded"}

# What a wrong BASE_URL or PROXY_API_PREFIX gets: some other server's page, not backend-api's JSON.
WRONG_ADDRESS = ("the upstream answered HTTP %d with %s, not backend-api's JSON: BASE_URL or PROXY_API_PREFIX "
                 "probably points at the wrong server or path (the gateway calls "
                 "BASE_URL/PROXY_API_PREFIX/backend-api/...)")


def _header(headers, name):
    if not headers:
        return None
    value = headers.get(name)
    return value.strip() if isinstance(value, str) else None


def _retry_after(detail, headers):
    """Seconds until a retry can succeed: ``clears_in`` if the upstream gave it, else its
    ``Retry-After`` header (seconds only; an HTTP date is passed on as it came)."""
    clears_in = detail.get("clears_in") if isinstance(detail, dict) else None
    if isinstance(clears_in, (int, float)) and not isinstance(clears_in, bool) and clears_in > 0:
        return str(math.ceil(clears_in))
    return _header(headers, "Retry-After") or None


def _describe_page(text, headers):
    """``an HTML page`` / ``plain text "…"`` / ``an empty body``: what a non-JSON answer was, short."""
    stripped = text.strip()
    if not stripped:
        return "an empty body"
    content_type = (_header(headers, "Content-Type") or "").lower()
    if "html" in content_type or stripped[:1] == "<":
        return "an HTML page"
    return "plain text \"%s\"" % " ".join(stripped.split())[:80]


def _is_cloudflare(text, headers):
    return ("cf-please-wait" in text or "challenge-platform" in text
            or (_header(headers, "cf-mitigated") or "").lower() == "challenge")


def from_upstream(status, body, headers=None):
    """Turn an upstream non-200 answer (``body`` as bytes) into the matching ``ApiError``.

    The upstream puts its reason in ``detail``, a string or an object with ``message`` (and
    ``code``, ``clears_in`` for usage caps). Anything that is not such JSON is not the upstream
    talking: a Cloudflare challenge page, or a 404/5xx page of whatever server BASE_URL and
    PROXY_API_PREFIX lead to. That becomes a 502 naming the two settings, never a 404 (the SDKs
    raise NotFoundError, which reads like "model not found") and never the page itself.
    ``headers``: the upstream's response headers (``Retry-After``, ``Content-Type``), if known.
    """
    our_status, type_, code = _UPSTREAM.get(status, (502, "upstream_error", "upstream_error"))
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body or "")
    if _is_cloudflare(text, headers):
        return ApiError(502 if our_status == 404 else our_status,
                        "the upstream answered with a Cloudflare challenge page (HTTP %d), not the API; "
                        "the PandoraNext proxy's address or its Cloudflare clearance needs fixing" % status,
                        type_, "cloudflare_challenge")
    try:
        data = ujson.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        if status == 404 or status >= 500:
            return ApiError(502, WRONG_ADDRESS % (status, _describe_page(text, headers)),
                            "upstream_error", "upstream_not_backend_api")
        return ApiError(our_status, "upstream HTTP %d: %s" % (status, _describe_page(text, headers)), type_, code)
    detail = data.get("detail", data.get("error"))
    message = None
    if isinstance(detail, dict):
        message = detail.get("message") or detail.get("detail")
        code = detail.get("code") or code
        if message is not None and not isinstance(message, str):
            message = ujson.dumps(message, ensure_ascii=False)
    elif isinstance(detail, str):
        message = detail
    if status == 404 and message in (None, "Not Found", "Not found", "404 page not found"):
        # A router's generic 404, not "conversation not found": the path is wrong.
        return ApiError(502, WRONG_ADDRESS % (status, "a generic Not Found"), "upstream_error",
                        "upstream_not_backend_api")
    if not message:
        message = " ".join(text.split())[:200] or "no details given"
    headers_out = {}
    if status == 429:
        retry_after = _retry_after(detail, headers)
        if retry_after:
            headers_out["Retry-After"] = retry_after
        if code in _CAP_CODES or (isinstance(detail, dict) and "clears_in" in detail):
            headers_out["x-should-retry"] = "false"
    return ApiError(our_status, "upstream HTTP %d: %s" % (status, message), type_, code, headers=headers_out)
