"""Work per request against the real server: file URLs that stall take their own curl handles
(other users' chats stay fast), at most FILE_FETCH_CONCURRENCY fetches per request, and every
fetch of a request ends when the client leaves or a sibling fails (the handles come free)."""

import json
import socket
import time
import urllib.parse

import pytest

from tests.helpers import http


@pytest.fixture(scope="module")
def tight(gateway_factory):
    # Four handles for conversations, four for files: without separate pools (or without
    # cancellation) four stalled fetches would take every handle there is.
    return gateway_factory(FILE_FETCH_ALLOW="127.0.0.1", UPSTREAM_MAX_TRANSFERS="4", FILE_FETCH_MAX_TRANSFERS="4",
                           FILE_FETCH_CONCURRENCY="2", FILE_FETCH_TIMEOUT="60", MAX_FILE_BYTES_PER_REQUEST="3000")


def _stalling(upstream, gate, i):
    return upstream.url + "/_fake/bytes?n=100&type=text/plain&gate=%s&i=%d" % (gate, i)


def _body(urls, text="read these"):
    return json.dumps({"model": "gpt-4-s", "messages": [{"role": "user", "content": [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls]}]}).encode()


def _send(gw, key, body):
    """POST without waiting for the answer: the open socket."""
    u = urllib.parse.urlsplit(gw.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
    return sock


def _chat(gw, key, body, timeout=10):
    return http("POST", gw.url + "/v1/chat/completions", body,
                {"Authorization": "Bearer " + key, "Content-Type": "application/json"}, timeout=timeout)


def test_stalled_file_urls_leave_other_chats_fast_and_free_their_handles_when_clients_leave(tight, upstream, key):
    gate = key + "-stall"
    # Three requests of one user, five stalling URLs each.
    socks = [_send(tight, key + "-%d" % n, _body([_stalling(upstream, gate, n * 10 + i) for i in range(5)]))
             for n in range(3)]
    fetching = upstream.wait_log(gate, lambda rs: len(rs) >= 4)
    assert len(fetching) >= 4
    time.sleep(0.3)  # more fetches could start now if a limit were missing
    started = upstream.log(gate)
    assert len(started) == 4, "FILE_FETCH_MAX_TRANSFERS is 4: %d fetches started" % len(started)
    per_request = {}
    for record in started:
        i = int(urllib.parse.parse_qs(record["query"])["i"][0])
        per_request[i // 10] = per_request.get(i // 10, 0) + 1
    assert max(per_request.values()) <= 2, per_request  # FILE_FETCH_CONCURRENCY

    other = "fk-other-" + key[-8:]
    t0 = time.monotonic()
    status, _, body = _chat(tight, other, json.dumps(
        {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hello"}]}).encode())
    assert status == 200, body
    assert time.monotonic() - t0 < 5, "another user's chat waited for stalled file fetches"

    for s in socks:
        s.close()
    # The stalled transfers were aborted: a new request's file is fetched on the freed handles.
    ok = upstream.url + "/_fake/bytes?n=10&type=text/plain"
    status, _, body = _chat(tight, key + "-after", _body([ok]), timeout=10)
    upstream.release(gate)
    assert status == 200, body
    assert "Traceback" not in tight.log_text()  # abandoned fetches end quietly


def test_a_failing_file_cancels_its_stalled_siblings(tight, upstream, key):
    gate = key + "-sibling"
    missing = upstream.url + "/_fake/static/no-such-file.png"
    urls = [_stalling(upstream, gate, i) for i in range(3)]
    t0 = time.monotonic()
    # FILE_FETCH_CONCURRENCY=2: the first stalled URL and the missing one start together.
    status, _, body = _chat(tight, key, _body([urls[0], missing, urls[1], urls[2]]), timeout=20)
    elapsed = time.monotonic() - t0
    upstream.release(gate)
    assert status == 400 and json.loads(body)["error"]["code"] == "file_fetch_failed", body
    assert elapsed < 5, "the stalled sibling was waited for"
    assert len(upstream.log(gate)) == 1  # the other stalled ones never started
    assert upstream.conversations(key) == []
    assert "Traceback" not in tight.log_text()


def test_files_over_the_request_budget_are_refused(tight, upstream, key):
    urls = [upstream.url + "/_fake/bytes?n=2000&type=text/plain", upstream.url + "/_fake/bytes?n=1500&type=text/plain"]
    status, _, body = _chat(tight, key, _body(urls))
    error = json.loads(body)["error"]
    assert status == 400 and error["code"] == "files_too_large", body
    assert "MAX_FILE_BYTES_PER_REQUEST" in error["message"]
    assert upstream.conversations(key) == []
    status, _, body = _chat(tight, key + "-one", _body(urls[:1]))
    assert status == 200, body


def test_saved_files_are_streamed_whole_and_symlinks_are_not_followed(gateway, tmp_path):
    import os
    data = os.urandom(3 * 1024 * 1024 + 17)
    name = "report_20240101000000_0123abcd.bin"
    with open(os.path.join(gateway.images_dir, name), "wb") as f:
        f.write(data)
    status, headers, body = http("GET", gateway.url + "/images/" + name)
    assert status == 200 and body == data and headers["Content-Length"] == str(len(data))
    assert headers["Content-Disposition"].startswith("attachment")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the images directory")
    link = "image_20240101000000_0123abcd.png"
    os.symlink(secret, os.path.join(gateway.images_dir, link))
    status, _, body = http("GET", gateway.url + "/images/" + link)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_cancelling_a_fetch_aborts_its_curl_transfer(upstream, key, caplog):
    """What ``while_connected`` and a failing sibling rely on: cancelling the task awaiting
    ``fetch_any`` ends the libcurl transfer and frees its handle (one handle here: the next fetch
    could not start otherwise), quietly (no ERROR logged for the abandoned future)."""
    import asyncio

    from tornado.httpclient import HTTPRequest

    from pgw.upstream import CancellableCurlClient

    gate = key + "-cancel"

    async def run():
        client = CancellableCurlClient(force_instance=True, max_clients=1)
        try:
            for i in range(2):
                stalled = asyncio.ensure_future(client.fetch_any(HTTPRequest(
                    _stalling(upstream, gate, i), request_timeout=60)))
                for _ in range(200):
                    if client._free_list == [] and len(client._curls) == 1:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
                stalled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await stalled
                got = await asyncio.wait_for(client.fetch_any(HTTPRequest(
                    upstream.url + "/_fake/bytes?n=10", request_timeout=10)), 5)
                assert got.code == 200 and got.body == b"x" * 10
        finally:
            client.close()

    asyncio.run(run())
    upstream.release(gate)
    assert len(upstream.log(gate)) == 2
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_the_gateway_keeps_saved_files_within_images_max_total_mb(gateway_factory, tmp_path):
    import os
    old, new = "a_20240101000000_00000001.bin", "b_20240101000000_00000002.bin"
    for i, name in enumerate((old, new)):
        (tmp_path / name).write_bytes(b"x" * 800)
        os.utime(tmp_path / name, (1_000_000 + i, 1_000_000 + i))
    gateway_factory(IMAGES_DIR=str(tmp_path), IMAGES_MAX_TOTAL_MB="0.001", IMAGES_MAX_AGE_HOURS="0")  # 1,048 bytes
    deadline = time.monotonic() + 10
    while (tmp_path / old).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(tmp_path)) == [new]
