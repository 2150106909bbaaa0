"""OpenAI-shaped errors: the one place that knows their JSON shape and HTTP statuses.

Clients (the openai SDKs, NextChat, bot frameworks) read ``{"error": {"message", "type",
"code"}}`` and raise or show ``message``; an honest message here is what a user sees.
"""

import ujson


class ApiError(Exception):
    """An error to send to the client as an OpenAI error object with an HTTP status."""

    def __init__(self, status, message, type="invalid_request_error", code=None, param=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

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


def from_upstream(status, body):
    """Turn an upstream non-200 answer (``body`` as bytes) into the matching ``ApiError``.

    The upstream puts its reason in ``detail``, a string or an object with ``message`` (and
    ``code`` for usage caps). A Cloudflare challenge page is HTML, not JSON: say so plainly.
    """
    our_status, type_, code = _UPSTREAM.get(status, (502, "upstream_error", "upstream_error"))
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body or "")
    message = None
    if "cf-please-wait" in text or "challenge-platform" in text:
        message = "the upstream answered with a Cloudflare challenge page (HTTP %d), not the API" % status
        code = "cloudflare_challenge"
    else:
        try:
            data = ujson.loads(text)
        except ValueError:
            data = None
        detail = data.get("detail", data.get("error")) if isinstance(data, dict) else None
        if isinstance(detail, dict):
            message = detail.get("message") or detail.get("detail")
            code = detail.get("code") or code
            if message is not None and not isinstance(message, str):
                message = ujson.dumps(message, ensure_ascii=False)
        elif isinstance(detail, str):
            message = detail
        if not message:
            snippet = " ".join(text.split())[:200]
            message = snippet or "no details given"
    return ApiError(our_status, "upstream HTTP %d: %s" % (status, message), type_, code)
