"""Upstream answers become errors that point at the fix (pgw.errors.from_upstream)."""

import pytest

from pgw.errors import from_upstream

NGINX_404 = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1>"
             b"</center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n")


@pytest.mark.parametrize("status, body, headers", [
    (404, NGINX_404, {"Content-Type": "text/html"}),
    (404, b"404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"}),  # Go's net/http default
    (404, b'{"detail": "Not Found"}', {"Content-Type": "application/json"}),     # a router's generic 404
    (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", None),
    (500, b"Internal Server Error", None),
    (503, b"", None),
])
def test_a_page_that_is_not_backend_api_json_is_a_502_naming_the_two_settings(status, body, headers):
    error = from_upstream(status, body, headers)
    assert error.status == 502  # never 404: the SDKs raise NotFoundError, which reads like "model not found"
    assert error.code == "upstream_not_backend_api"
    assert "BASE_URL" in error.message and "PROXY_API_PREFIX" in error.message
    assert "HTTP %d" % status in error.message
    assert "<" not in error.message and "nginx" not in error.message  # never the page pasted in


def test_a_real_conversation_not_found_stays_a_404():
    error = from_upstream(404, b'{"detail": "Conversation not found"}')
    assert (error.status, error.code) == (404, "not_found") and "Conversation not found" in error.message


def test_an_html_error_of_another_status_is_described_not_pasted():
    error = from_upstream(401, b"<!DOCTYPE html><html><body><script>x()</script>Login</body></html>",
                          {"Content-Type": "text/html"})
    assert error.status == 401 and "an HTML page" in error.message and "script" not in error.message


def test_cloudflare_challenge_recognised_by_its_header_too():
    error = from_upstream(403, b"<html>Just a moment...</html>", {"cf-mitigated": "challenge"})
    assert error.code == "cloudflare_challenge" and "<html>" not in error.message


def test_a_usage_cap_carries_retry_after_from_clears_in_and_asks_sdks_not_to_retry():
    body = b'{"detail": {"code": "model_cap_exceeded", "message": "You have sent too many messages", "clears_in": 251.2}}'
    error = from_upstream(429, body, {"Retry-After": "10"})
    assert error.status == 429
    assert error.headers == {"Retry-After": "252", "x-should-retry": "false"}


def test_an_upload_throttle_without_clears_in_is_not_retried_and_keeps_the_upstream_retry_after():
    body = b'{"detail": {"code": "throttled", "message": "You\'ve reached our limit of file uploads."}}'
    error = from_upstream(429, body, {"Retry-After": "54000"})
    assert error.headers == {"Retry-After": "54000", "x-should-retry": "false"}


def test_one_message_at_a_time_may_be_retried_later():
    body = b'{"detail": "Only one message at a time. Please allow any other responses to complete."}'
    error = from_upstream(429, body, {"Retry-After": "30"})
    assert error.headers == {"Retry-After": "30"}  # the other answer ends soon: a retry can succeed
    assert from_upstream(429, body).headers == {}


def test_other_errors_carry_no_extra_headers():
    assert from_upstream(401, b'{"detail": "Unauthorized"}', {"Retry-After": "5"}).headers == {}


def test_transport_failures_are_told_without_tornados_internal_code():
    from tornado.curl_httpclient import CurlError

    from pgw.upstream import describe, failure_text
    error = CurlError(7, "Failed to connect to 127.0.0.1 port 9: Couldn't connect to server")
    assert str(error).startswith("HTTP 599")  # what Tornado would have put in the message
    assert failure_text(error) == "Failed to connect to 127.0.0.1 port 9: Couldn't connect to server"
    assert describe(599, failure_text(error).encode()).startswith("no answer: Failed to connect")
    assert describe(404, b'{"detail": "File not found"}') == 'HTTP 404: {"detail": "File not found"}'
