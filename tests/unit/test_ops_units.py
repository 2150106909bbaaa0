"""Operator-facing pieces that need no process: the readiness cache, start-up warnings and
listen failures, the access line, and the metrics text."""

import asyncio
import logging
import socket

import pytest
from tornado.curl_httpclient import CurlError
from tornado.httpclient import HTTPResponse

from pgw import logs
from pgw.conf.settings import load
from pgw.metrics import Metrics
from pgw.server import StartupError, listen_sockets, startup_warnings
from pgw.upstream import UpstreamHealth


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeUpstreamClient:
    """What UpstreamHealth uses of UpstreamClient: ``http.fetch_any``, ``url``, ``settings``."""

    def __init__(self, answers):
        self.answers = list(answers)   # HTTP status, or an exception text for a transport failure
        self.calls = 0
        self.http = self
        self.settings = load(environ={"BASE_URL": "http://127.0.0.1:9"})
        self.release = None

    def url(self, path):
        return "http://127.0.0.1:9/backend-api/" + path

    async def fetch_any(self, request):
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            return HTTPResponse(request, answer)
        return HTTPResponse(request, 599, error=CurlError(7, answer))


def test_readiness_is_probed_at_most_every_few_seconds_and_shared():
    async def main():
        up = FakeUpstreamClient([401, "Failed to connect to 127.0.0.1 port 9", 503])
        clock = FakeClock()
        health = UpstreamHealth(up, every=5.0, clock=clock)
        up.release = asyncio.Event()
        checks = [asyncio.ensure_future(health.check()) for _ in range(3)]
        await asyncio.sleep(0)
        up.release.set()
        results = await asyncio.gather(*checks)
        assert up.calls == 1 and results == [(True, 401, None)] * 3  # a 401 without a key: it answers
        clock.now += 4.9
        assert await health.check() == (True, 401, None) and up.calls == 1  # cached
        clock.now += 0.2
        assert await health.check() == (False, None, "Failed to connect to 127.0.0.1 port 9")
        clock.now += 5
        assert await health.check() == (False, 503, None) and up.calls == 3
    asyncio.run(main())


def settings(**env):
    env.setdefault("BASE_URL", "http://127.0.0.1:8181")
    return load(environ={k.upper(): str(v) for k, v in env.items()})


@pytest.mark.parametrize("env, warned", [
    ({"HOST": "127.0.0.1"}, False),
    ({"HOST": "::1"}, False),
    ({"HOST": "localhost", "BOT_MODE": "true"}, True),
    ({"HOST": "0.0.0.0"}, True),
    ({"HOST": "0.0.0.0", "UPLOAD_BASE_URL": "http://1.2.3.4:33333"}, False),
    ({"HOST": "127.0.0.1", "BOT_MODE": "true", "UPLOAD_BASE_URL": "http://1.2.3.4:33333"}, False),
])
def test_upload_base_url_warning_when_links_would_point_at_the_wrong_address(env, warned):
    lines = startup_warnings(settings(IMAGES_MAX_AGE_HOURS=24, **env))
    assert bool([w for w in lines if w.startswith("UPLOAD_BASE_URL is empty")]) is warned
    assert len(lines) == int(warned)


def test_images_kept_for_ever_warning():
    lines = startup_warnings(settings(HOST="127.0.0.1", IMAGES_MAX_AGE_HOURS=0, IMAGES_MAX_TOTAL_MB=0))
    assert len(lines) == 1 and lines[0].startswith("IMAGES_MAX_AGE_HOURS=0") and "IMAGES_MAX_AGE_HOURS (e.g." in lines[0]
    # A size budget (IMAGES_MAX_TOTAL_MB, on by default) bounds the directory: nothing to warn about.
    assert startup_warnings(settings(HOST="127.0.0.1", IMAGES_MAX_AGE_HOURS=0)) == []


def test_a_busy_port_is_a_startup_error_naming_port_and_setting():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        with pytest.raises(StartupError) as e:
            listen_sockets(settings(HOST="127.0.0.1", PORT=port))
    finally:
        busy.close()
    assert "port %d is already in use" % port in str(e.value) and "set PORT" in str(e.value)


def test_an_unknown_host_name_is_a_startup_error_naming_host():
    with pytest.raises(StartupError) as e:
        listen_sockets(settings(HOST="no-such-host.invalid", PORT=0))
    assert "HOST 'no-such-host.invalid'" in str(e.value)


def test_the_access_line_escapes_what_a_client_wrote(caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        logs.access(False, "POST", "/v1/chat/completions\nFAKE 200", 400, model="gpt 4\nx", stream=None,
                    ttfb=None, total=0.01234, bytes=10, key=None, upstream=None)
        logs.access(True, "GET", "/healthz", 200, total=0.001)
    (record,) = caplog.records  # the probe is at DEBUG
    assert record.getMessage() == ("POST /v1/chat/completions\\nFAKE 200 400 model=gpt_4\\nx stream=- ttfb=- "
                                   "total=0.012 bytes=10 key=- upstream=-")


def test_account_and_queue_wait_appear_when_the_pool_sets_them(caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        logs.access(False, "POST", "/v1/chat/completions", 200, model="gpt-4-s", stream=True, ttfb=0.5, total=2,
                    bytes=99, key="fk-a…9xQz", account="acct-3", queued=0.25, upstream=200)
    assert caplog.records[0].getMessage().endswith("key=fk-a…9xQz account=acct-3 queued=0.250 upstream=200")


def test_metrics_text_has_the_documented_names():
    m = Metrics()
    m.request_done("/v1/chat/completions", 200, "gpt-4-s", 0.1, 1.5, 200, [10, 20])
    m.request_done("/v1/chat/completions", 429, "gpt-4-s", 0.05, 0.05, 429, None)
    m.swept(3, 2)
    text = m.render().decode()
    for line in ('pgw_requests_total{endpoint="/v1/chat/completions",model="gpt-4-s",status="200"} 1.0',
                 'pgw_upstream_errors_total{status="429"} 1.0', "pgw_open_streams 3.0", "pgw_keepalives_total 2.0",
                 "pgw_saved_files_total 2.0", "pgw_saved_file_bytes_total 30.0",
                 'pgw_time_to_first_byte_seconds_count{endpoint="/v1/chat/completions"} 2.0',
                 'pgw_request_duration_seconds_bucket{endpoint="/v1/chat/completions",le="2.0"} 2.0'):
        assert line in text.splitlines(), line
    assert "_created" not in text
