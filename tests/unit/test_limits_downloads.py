"""The upstream's download URLs pass the address guard of client URLs: BASE_URL's host (and
UPLOAD_HOST_OVERRIDE's) is trusted, anything else must be public or in FILE_FETCH_ALLOW."""

import asyncio

from pgw.conf import settings as conf_settings
from pgw.upstream import UpstreamClient
from pgw.urlguard import download_guard


class RecordingUpstream:
    """Stands in for ``UpstreamClient``: records what would be fetched, answers 200."""

    failed_fetch = staticmethod(UpstreamClient.failed_fetch)

    def __init__(self):
        self.fetched = []

    async def fetch_guarded(self, url, host, port, address, max_bytes, connect_timeout, timeout):
        self.fetched.append((url, address))
        got = UpstreamClient.failed_fetch(None)
        got.status, got.headers = 200, {}
        got.body.extend(b"bytes")
        return got


def _get(url, **env):
    settings = conf_settings.load(environ=dict({"BASE_URL": "http://127.0.0.1:8181"}, **env))
    upstream = RecordingUpstream()
    got = asyncio.run(download_guard(settings, upstream).get(url, 1000, 5))
    return got, upstream.fetched


def test_a_download_url_on_the_upstreams_own_host_is_fetched():
    got, fetched = _get("http://127.0.0.1:8181/_fake/blob/file/x?sig=1")
    assert got.status == 200 and fetched == [("http://127.0.0.1:8181/_fake/blob/file/x?sig=1", "127.0.0.1")]


def test_download_urls_to_private_or_metadata_addresses_are_refused_before_any_connection():
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/admin", "http://[::1]:22/"):
        got, fetched = _get(url)
        assert got.status == 599 and "FILE_FETCH_ALLOW" in got.failure and fetched == [], url


def test_file_fetch_allow_and_upload_host_override_extend_the_trust():
    assert _get("http://10.1.2.3/f", FILE_FETCH_ALLOW="10.0.0.0/8")[0].status == 200
    assert _get("http://10.9.9.9/f", UPLOAD_HOST_OVERRIDE="http://10.9.9.9:9000")[0].status == 200
