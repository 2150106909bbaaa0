"""The account pool end to end (one gateway process, memory back end): access keys, the FIFO
queue over accounts that answer one message at a time, retries and benching, refresh tokens.

Each test makes its own accounts (JWTs whose ``sub`` names a fresh account on the fake
upstream, which then refuses a second message at once on it, as ChatGPT does) and reads the
fake's log for what each account saw: start and end times of every conversation.
"""

from http.client import HTTPConnection
import json
import os
import shutil
import socket
import threading
import time
import uuid

import pytest

from devkit.procs import ChildProcess
from fakeupstream.app import mint_jwt
from tests.helpers import http

ADMIN = "admin-" + uuid.uuid4().hex
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer(ChildProcess):
    """A redis-server of the test's own on a free loopback port, nothing saved."""

    def __init__(self, port=None):
        self.port = port or free_port()
        super().__init__([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                         pattern=r"Ready to accept connections", prefix="redis-")
        self.url = "redis://127.0.0.1:%d/0" % self.port


@pytest.fixture(scope="module")
def module_redis():
    if not os.path.exists(REDIS):
        pytest.fail("redis-server is not installed: run .ci/run (it installs the Debian package redis-server)")
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    """The pool's settings for each back end: the same behaviour is asked of both."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("module_redis")
    return {"REDIS_URL": server.url, "REDIS_PREFIX": "t" + uuid.uuid4().hex[:8]}


def new_accounts(n, prefix="acct"):
    """n fresh account names (the fake's plan and log keys) and their access tokens."""
    subs = ["%s%s%d" % (prefix, uuid.uuid4().hex[:10], i) for i in range(n)]
    return subs, [mint_jwt(sub, int(time.time()) + 86400) for sub in subs]


def start_pool(gateway_factory, tmp_path, accounts, access_keys=None, **settings):
    access_keys = access_keys or ["ak-" + uuid.uuid4().hex]
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"accounts": accounts, "access_keys": list(access_keys)}))
    settings.setdefault("QUEUE_TIMEOUT", 20)
    settings.setdefault("KEEPALIVE_INTERVAL", 0.2)
    settings.setdefault("NEED_DELETE_CONVERSATION_AFTER_RESPONSE", "false")
    gw = gateway_factory(ACCOUNTS_FILE=str(path), ADMIN_KEY=ADMIN, **settings)
    gw.access_key = access_keys[0]
    gw.accounts_path = path
    return gw


def chat(gw, key, text, stream=False, timeout=30, model="gpt-3.5-turbo"):
    return http("POST", gw.url + "/v1/chat/completions", {"model": model, "stream": stream,
                "messages": [{"role": "user", "content": text}]},
                {"Authorization": "Bearer " + key, "Content-Type": "application/json"}, timeout=timeout)


def assert_served_in_arrival_order(upstream, subs, results, texts, waves=3):
    """Every request answered with its own text, never two at once on one account, and in
    arrival order: accounts free up in waves of ``waves``, so a later request never starts
    before one that arrived that many places earlier."""
    assert [r[0] for r in results] == [200] * len(texts)
    for i, (_, _, body) in enumerate(results):
        assert texts[i] in answer_text(body)
    assert_one_at_a_time(upstream, subs)
    started = sorted(answered(upstream, subs), key=lambda x: x[1]["time"])
    order = [int(r["body"]["messages"][-1]["content"]["parts"][0].split()[-1]) for _, r in started]
    assert sorted(order) == list(range(len(texts)))
    for pos, n in enumerate(order):
        assert all(m < n + waves for m in order[:pos]), " ".join(map(str, order))


def answer_text(body):
    return json.loads(body)["choices"][0]["message"]["content"]


def admin(gw):
    status, _, body = http("GET", gw.url + "/admin/accounts", headers={"Authorization": "Bearer " + ADMIN})
    assert status == 200, body
    return json.loads(body)


def send_on_connection(gw, text, stream=True, model="gpt-3.5-turbo"):
    """Send a chat request through the access key on a connection of its own and return the
    connection, its answer not read yet (to read it, or to hang up while it waits or answers)."""
    host, port = gw.url.split("//")[1].split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": "Bearer " + gw.access_key, "Content-Type": "application/json"})
    return conn


def reload_accounts(gw, accounts):
    """Rewrite the accounts file with ``accounts`` (the access key kept) and ask for a reload:
    ``(status, body)`` of ``POST /admin/accounts/reload``."""
    gw.accounts_path.write_text(json.dumps({"accounts": accounts, "access_keys": [gw.access_key]}))
    status, _, body = http("POST", gw.url + "/admin/accounts/reload", b"", {"Authorization": "Bearer " + ADMIN})
    return status, body


def wait_until(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def conversations(upstream, sub):
    return [r for r in upstream.log(sub) if r.get("path", "").endswith("/conversation")]


def answered(upstream, subs):
    """Every conversation the accounts answered: (sub, record), refusals left out."""
    return [(sub, r) for sub in subs for r in conversations(upstream, sub) if not r.get("refused")]


def assert_one_at_a_time(upstream, subs):
    for sub in subs:
        records = conversations(upstream, sub)
        assert not [r for r in records if r.get("refused") == "busy"], "an account got two messages at once"
        spans = sorted((r["time"], r["ended"]) for r in records if not r.get("refused"))
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, "account %s answered two messages at once" % sub


def run_threads(fns):
    results = [None] * len(fns)

    def one(i):
        results[i] = fns[i]()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    return threads, results


def test_burst_of_40_over_3_accounts_all_succeed_one_at_a_time_in_arrival_order(gateway_factory, upstream, tmp_path):
    subs, tokens = new_accounts(3)
    for sub in subs:  # every account holds its first answer until released: the queue fills up
        # answers of ~450 ms: a process starved of CPU for a while cannot reorder waves (as in
        # test_pool_redis.py's two instances, which at ~150 ms failed one run in five under load)
        upstream.plan(sub, gate=1, pace_ms=15)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)])
    texts = ["question %02d" % i for i in range(40)]
    threads, results = [], [None] * 40

    def send(i):
        def one():
            results[i] = chat(gw, gw.access_key, texts[i])
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)

    for i in range(3):
        send(i)
    wait_until(lambda: all(conversations(upstream, s) for s in subs), what="every account answering")
    for i in range(3, 40):  # one at a time, each in the queue before the next arrives
        send(i)
        wait_until(lambda i=i: admin(gw)["queued"] == i - 2, what="request %d queued" % i)
    for sub in subs:
        upstream.release(sub)
    for t in threads:
        t.join(60)
    assert_served_in_arrival_order(upstream, subs, results, texts)
    rows = admin(gw)["accounts"]
    assert sum(r["served"] for r in rows) == 40 and all(r["in_flight"] == 0 for r in rows)
    assert all(tok not in json.dumps(rows) for tok in tokens)  # the admin view masks tokens


def test_other_keys_are_forwarded_unless_access_keys_are_required(gateway_factory, upstream, tmp_path, key, backend):
    subs, tokens = new_accounts(1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], **backend)
    status, _, body = chat(gw, key, "direct")
    assert status == 200 and "direct" in answer_text(body)
    assert conversations(upstream, key)[0]["authorization"] == "Bearer " + key
    status, _, body = chat(gw, gw.access_key, "pooled")
    assert status == 200
    assert conversations(upstream, subs[0])[0]["authorization"] == "Bearer " + tokens[0]

    strict = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}],
                        ACCESS_KEYS_REQUIRED="true", **backend)
    status, _, body = chat(strict, key, "direct")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, body = chat(strict, gw.access_key[:-1] + "x", "nearly")
    assert status == 401
    assert "direct" not in json.dumps(conversations(upstream, key)[1:])


def test_refusals_before_the_answer_move_the_request_to_another_account(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(4)
    upstream.plan(subs[0], status=502)
    upstream.plan(subs[1], status=403, detail="Unusual activity has been detected from your device. Try again later.")
    upstream.plan(subs[2], caps={"text-davinci-002-render-sha": {"after": 0, "clears_in": 120}})
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)],
                    RETRY_ATTEMPTS=4, **backend)
    status, _, body = chat(gw, gw.access_key, "retried")
    assert status == 200 and "retried" in answer_text(body)
    assert [len(conversations(upstream, s)) for s in subs] == [1, 1, 1, 1]
    rows = {r["label"]: r for r in admin(gw)["accounts"]}
    assert rows["a1"]["health"] == "benched" and "403" in rows["a1"]["bench_why"]
    assert "text-davinci-002-render-sha" in rows["a2"]["models"] and rows["a2"]["health"] == "ok"
    assert rows["a3"]["served"] == 1 and rows["a3"]["last_error"] is None
    # The benched accounts are skipped now: the next request goes straight to a0 (5xx, not benched) or a3.
    status, _, _ = chat(gw, gw.access_key, "again")
    assert status == 200
    assert len(conversations(upstream, subs[1])) == 1 and len(conversations(upstream, subs[2])) == 1


def test_at_most_retry_attempts_accounts_then_the_last_refusal(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(3)
    for sub in subs:
        upstream.plan(sub, status=500)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)],
                    RETRY_ATTEMPTS=2, **backend)
    status, _, body = chat(gw, gw.access_key, "x")
    assert status == 502 and "HTTP 500" in json.loads(body)["error"]["message"]
    assert sum(len(conversations(upstream, s)) for s in subs) == 2


def test_when_every_account_is_benched_429_says_when(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(2)
    for sub in subs:
        upstream.plan(sub, caps={"text-davinci-002-render-sha": {"after": 0, "clears_in": 90}})
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)], **backend)
    status, headers, body = chat(gw, gw.access_key, "x")
    assert status == 429
    error = json.loads(body)["error"]
    assert error["code"] == "accounts_benched" and 85 <= int(headers["Retry-After"]) <= 90
    assert "back in" in error["message"]
    status, headers, body = chat(gw, gw.access_key, "y")  # no upstream call: the pool knows
    assert status == 429 and json.loads(body)["error"]["code"] == "accounts_benched"
    assert sum(len(conversations(upstream, s)) for s in subs) == 2
    # Another model is not capped.
    status, _, body = chat(gw, gw.access_key, "z", model="gpt-4-s")
    assert status == 200


def test_queue_timeout_non_stream_and_stream(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gate=1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], QUEUE_TIMEOUT=0.7, **backend)
    threads, results = run_threads([lambda: chat(gw, gw.access_key, "holder")])
    wait_until(lambda: conversations(upstream, subs[0]), what="the account answering")
    status, headers, body = chat(gw, gw.access_key, "waits")
    assert status == 429 and json.loads(body)["error"]["code"] == "queue_timeout"
    assert int(headers["Retry-After"]) >= 1

    # A stream gets its headers and keep-alives while it waits, then an error event.
    conn = send_on_connection(gw, "waits")
    response = conn.getresponse()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    text = response.read().decode()
    assert text.count(": keep-alive") >= 1
    assert "queue_timeout" in text and text.rstrip().endswith("data: [DONE]")
    upstream.release(subs[0])
    threads[0].join(10)
    assert results[0][0] == 200
    assert len(conversations(upstream, subs[0])) == 1  # neither waiter reached the account


def test_a_client_that_leaves_the_queue_is_out_of_it_at_once(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gate=1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], **backend)
    threads, results = run_threads([lambda: chat(gw, gw.access_key, "holder")])
    wait_until(lambda: conversations(upstream, subs[0]), what="the account answering")
    conn = send_on_connection(gw, "leaver", stream=False)
    wait_until(lambda: admin(gw)["queued"] == 1, what="the second request queued")
    conn.close()
    wait_until(lambda: admin(gw)["queued"] == 0, what="the leaver out of the queue")
    upstream.release(subs[0])
    threads[0].join(10)
    assert results[0][0] == 200
    status, _, body = chat(gw, gw.access_key, "after")
    assert status == 200 and "after" in answer_text(body)
    asked = [r["body"]["messages"][-1]["content"]["parts"][0] for r in conversations(upstream, subs[0])]
    assert asked == ["holder", "after"]
    # (with Redis the slot goes back a round trip after the response: wait for it, briefly)
    wait_until(lambda: admin(gw)["accounts"][0]["in_flight"] == 0, timeout=2, what="the account given back")


def test_a_client_gone_mid_answer_frees_its_account(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gate=1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], **backend)
    conn = send_on_connection(gw, "gone")
    conn.getresponse()
    wait_until(lambda: admin(gw)["accounts"][0]["in_flight"] == 1, what="the account held")
    conn.close()
    wait_until(lambda: admin(gw)["accounts"][0]["in_flight"] == 0, what="the account given back")


def test_refresh_token_accounts_refresh_and_retry_after_401(gateway_factory, upstream, tmp_path):
    sub = "rtacct" + uuid.uuid4().hex[:10]
    upstream.plan(sub, token_ttl=7200, rotate=True)
    rt = "rt-%s-%s" % (sub, uuid.uuid4().hex)
    settings = dict(REFRESH_URL=upstream.url + "/_fake/oauth/token", DATA_DIR=str(tmp_path / "data"))
    gw = start_pool(gateway_factory, tmp_path, [{"label": "r", "refresh_token": rt}], **settings)
    status, _, body = chat(gw, gw.access_key, "first")
    assert status == 200 and "first" in answer_text(body)
    # The account signs out elsewhere: its cached token is refused (401), refreshed once and retried.
    upstream.plan(sub, token_ttl=7200, rotate=True, tokens_valid_after=time.time())
    status, _, body = chat(gw, gw.access_key, "second")
    assert status == 200 and "second" in answer_text(body)
    grants = [r["grant"] for r in upstream.log(sub) if r.get("grant")]
    assert len(grants) == 2 and grants[1]["refresh_token"] != rt  # the rotated token was used
    assert grants[0]["client_id"] and grants[0]["grant_type"] == "refresh_token" and grants[0]["redirect_uri"]
    records = conversations(upstream, sub)
    assert [r["body"]["messages"][-1]["content"]["parts"][0] for r in records] == ["first", "second", "second"]
    assert records[1]["authorization"] != records[2]["authorization"]
    cache = tmp_path / "data" / "tokens.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert rt not in cache.read_text()  # keyed by a hash; only the rotated token is kept
    row = admin(gw)["accounts"][0]
    assert row["kind"] == "refresh_token" and row["token_expires"] > time.time() + 3600

    # The cache survives a restart: a new process answers without exchanging the token again.
    again = start_pool(gateway_factory, tmp_path, [{"label": "r", "refresh_token": rt}], **settings)
    status, _, _ = chat(again, again.access_key, "third")
    assert status == 200
    assert len([r for r in upstream.log(sub) if r.get("grant")]) == 2


def test_an_account_whose_token_is_refused_is_unhealthy_and_skipped(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(3)
    upstream.plan(subs[0], tokens_valid_after=time.time() + 5)  # signed out elsewhere: 401
    expired = mint_jwt(subs[2], int(time.time()) - 10)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "refused", "access_token": tokens[0]},
                                                {"label": "ok", "access_token": tokens[1]},
                                                {"label": "old", "access_token": expired}], **backend)
    for text in ("one", "two", "three"):
        status, _, _ = chat(gw, gw.access_key, text)
        assert status == 200
    assert len(conversations(upstream, subs[0])) <= 1  # tried at most once, then left alone
    assert conversations(upstream, subs[2]) == []  # a token past its exp is never sent
    rows = {r["label"]: r for r in admin(gw)["accounts"]}
    assert rows["old"]["health"] == "expired" and rows["ok"]["served"] == 3  # every answer came from "ok"
    if conversations(upstream, subs[0]):
        assert rows["refused"]["health"] == "unhealthy" and "401" in rows["refused"]["last_error"]

    only_expired = start_pool(gateway_factory, tmp_path, [{"label": "old", "access_token": expired}], **backend)
    status, _, body = chat(only_expired, only_expired.access_key, "x")
    assert status == 503 and json.loads(body)["error"]["code"] == "accounts_expired"


def test_client_refresh_tokens_are_exchanged(gateway_factory, upstream, tmp_path):
    sub = "clientrt" + uuid.uuid4().hex[:10]
    rt = "rt-%s-%s" % (sub, uuid.uuid4().hex)
    gw = gateway_factory(CLIENT_REFRESH_TOKENS="true", REFRESH_URL=upstream.url + "/_fake/oauth/token",
                         DATA_DIR=str(tmp_path / "data"))
    for text in ("a", "b"):
        status, _, body = chat(gw, rt, text)
        assert status == 200
    assert len([r for r in upstream.log(sub) if r.get("grant")]) == 1  # cached
    assert conversations(upstream, sub)[0]["authorization"].startswith("Bearer eyJ")


def test_admin_endpoint_needs_the_admin_key_and_reload_keeps_streams(gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(2)
    upstream.plan(subs[0], gate=1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], **backend)
    assert http("GET", gw.url + "/admin/accounts")[0] == 401
    assert http("GET", gw.url + "/admin/accounts", headers={"Authorization": "Bearer nope"})[0] == 403
    plain = gateway_factory()
    assert http("GET", plain.url + "/admin/accounts", headers={"Authorization": "Bearer x"})[0] == 404

    threads, results = run_threads([lambda: chat(gw, gw.access_key, "held", stream=True)])
    wait_until(lambda: conversations(upstream, subs[0]), what="the stream running")
    status, body = reload_accounts(gw, [{"label": "a", "access_token": tokens[0]},
                                        {"label": "b", "access_token": tokens[1]}])
    assert status == 200 and json.loads(body)["accounts"] == 2
    status, _, body = chat(gw, gw.access_key, "new account")  # a is busy: b answers
    assert status == 200 and "new account" in answer_text(body)
    assert len(conversations(upstream, subs[1])) == 1
    upstream.release(subs[0])
    threads[0].join(10)
    assert results[0][0] == 200 and b"data: [DONE]" in results[0][2]

    gw.accounts_path.write_text("{not json")
    status, _, body = http("POST", gw.url + "/admin/accounts/reload", b"", {"Authorization": "Bearer " + ADMIN})
    assert status == 400 and len(admin(gw)["accounts"]) == 2  # the old accounts stay


def test_sighup_reloads_the_accounts_file(gateway_factory, upstream, tmp_path):
    import os
    import signal
    subs, tokens = new_accounts(2)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}])
    gw.accounts_path.write_text(json.dumps({"accounts": [{"label": "b", "access_token": tokens[1]}],
                                            "access_keys": [gw.access_key]}))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: [r["label"] for r in admin(gw)["accounts"]] == ["b"], what="the reload")
    assert chat(gw, gw.access_key, "via b")[0] == 200
    assert len(conversations(upstream, subs[1])) == 1


@pytest.mark.parametrize("workers", [2])
def test_a_pool_with_several_workers_needs_redis(gateway_factory, tmp_path, workers):
    subs, tokens = new_accounts(1)
    with pytest.raises(RuntimeError, match="REDIS_URL"):
        start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], PROCESS_WORKERS=workers)


def test_files_and_team_headers_use_the_leased_account(gateway_factory, upstream, tmp_path):
    import base64
    import io

    from PIL import Image
    subs, tokens = new_accounts(1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "team", "access_token": tokens[0], "account_id": "acc-77"}])
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    status, _, body = http("POST", gw.url + "/v1/chat/completions", {"model": "gpt-4-s", "messages": [{
        "role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]}]},
        {"Authorization": "Bearer " + gw.access_key, "Content-Type": "application/json"})
    assert status == 200, body
    records = upstream.log(subs[0])
    paths = [r["path"].rsplit("/", 2)[-2:] for r in records if r.get("method") == "POST"]
    assert ["backend-api", "files"] in paths and ["backend-api", "conversation"] in paths
    for r in records:
        if r.get("authorization"):
            assert r["authorization"] == "Bearer " + tokens[0] and r["account_id"] == "acc-77"
    assert not upstream.log(gw.access_key)  # the access key itself never reaches the upstream


def test_an_unhealthy_refresh_token_account_comes_back_after_its_background_recheck(gateway_factory, upstream,
                                                                                       tmp_path):
    sub = "recheck" + uuid.uuid4().hex[:10]
    subs, tokens = new_accounts(1)
    rt = "rt-%s-%s" % (sub, uuid.uuid4().hex)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "ok", "access_token": tokens[0]},
                                                {"label": "r", "refresh_token": rt}],
                    REFRESH_URL=upstream.url + "/_fake/oauth/token", DATA_DIR=str(tmp_path / "data"),
                    UNHEALTHY_RECHECK=1.5)
    wait_until(lambda: [r for r in upstream.log(sub) if r.get("grant")], what="the start-up exchange")
    upstream.plan(sub, tokens_valid_after=time.time() + 1)  # even a token refreshed now is refused for 1 s
    upstream.plan(subs[0], gate=1)
    threads, results = run_threads([lambda: chat(gw, gw.access_key, "holds ok")])
    wait_until(lambda: conversations(upstream, subs[0]), what="ok answering")
    threads2, results2 = run_threads([lambda: chat(gw, gw.access_key, "tries r")])

    def health(label):
        return {r["label"]: r for r in admin(gw)["accounts"]}[label]["health"]
    wait_until(lambda: health("r") == "unhealthy", what="r refused twice (401, refreshed, 401)")
    upstream.release(subs[0])
    for t in threads + threads2:
        t.join(20)
    assert results[0][0] == 200 and results2[0][0] == 200  # "tries r" was answered by ok
    assert len(conversations(upstream, sub)) == 2
    wait_until(lambda: health("r") == "ok", what="the background re-check")
    status, _, body = chat(gw, gw.access_key, "r again")  # r is the least recently used now
    assert status == 200 and "r again" in answer_text(body)
    answered_by_r = [r for r in conversations(upstream, sub) if r.get("completed")]
    assert [r["body"]["messages"][-1]["content"]["parts"][0] for r in answered_by_r] == ["r again"]
    assert len(conversations(upstream, sub)) == 3  # the re-check's token worked the first time


def test_gpt_details_with_an_access_key_are_fetched_with_an_account(gateway_factory, upstream, tmp_path):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gizmos={"g-pooled1": {"name": "Pooled GPT"}})
    gpts = tmp_path / "gpts.json"
    gpts.write_text(json.dumps({"pooled-gpt": {"id": "g-pooled1"}}))
    access_key = "ak-" + uuid.uuid4().hex
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a", "access_token": tokens[0]}], [access_key],
                    GPTS_CONFIG=str(gpts), KEY_FOR_GPTS_INFO=access_key)
    records = upstream.wait_log(subs[0], lambda rs: any("/gizmos/" in r["path"] for r in rs))
    assert [r["authorization"] for r in records if "/gizmos/" in r["path"]] == ["Bearer " + tokens[0]]
    assert not upstream.log(access_key)
    status, _, body = http("GET", gw.url + "/v1/models")
    assert "Pooled GPT" in body.decode()


def probes(upstream, sub):
    """The re-checks the gateway made with an account's token: GETs of conversations that do not exist."""
    return [r for r in upstream.log(sub) if r.get("method") == "GET" and "/backend-api/conversation/" in r["path"]]


def test_a_refused_access_token_is_rechecked_in_the_background_and_no_user_request_is_its_probe(
        gateway_factory, upstream, tmp_path, backend):
    subs, tokens = new_accounts(2)
    revoked, other = subs
    upstream.plan(revoked, tokens_valid_after=time.time() + 3600)  # signed out elsewhere: every call gets 401
    gw = start_pool(gateway_factory, tmp_path, [{"label": "team", "access_token": tokens[0], "account_id": "acc-42"},
                                                {"label": "b", "access_token": tokens[1]}],
                    UNHEALTHY_RECHECK=0.5, **backend)
    status, _, body = chat(gw, gw.access_key, "first")  # team is tried first (never used), refuses, b answers
    assert status == 200 and "first" in answer_text(body)
    assert len(conversations(upstream, revoked)) == 1 and len(conversations(upstream, other)) == 1

    wait_until(lambda: len(probes(upstream, revoked)) >= 2, timeout=10, what="two background re-checks (refused)")
    row = {r["label"]: r for r in admin(gw)["accounts"]}["team"]
    assert row["health"] == "unhealthy" and "401" in row["last_error"] and isinstance(row["recheck_at"], float)
    assert tokens[0] not in json.dumps(row)
    for text in ("second", "third"):  # team is the least recently used, and still left alone
        status, _, body = chat(gw, gw.access_key, text)
        assert status == 200 and text in answer_text(body)
    assert len(conversations(upstream, revoked)) == 1 and len(conversations(upstream, other)) == 3

    accepted_at = time.time()
    upstream.plan(revoked)  # the token works again
    wait_until(lambda: {r["label"]: r for r in admin(gw)["accounts"]}["team"]["health"] == "ok", timeout=10,
               what="the re-check bringing team back")
    status, _, body = chat(gw, gw.access_key, "back")  # team is the least recently used: it answers
    assert status == 200 and "back" in answer_text(body)
    posts = conversations(upstream, revoked)
    assert [r["body"]["messages"][-1]["content"]["parts"][0] for r in posts] == ["first", "back"]
    checks = probes(upstream, revoked)
    ok_probe = next(r for r in checks if r["time"] > accepted_at)
    assert posts[1]["time"] > ok_probe["time"]  # no user request before a re-check found the token accepted
    assert len({r["path"] for r in checks}) == len(checks)  # a fresh random conversation id each time
    assert all(r["authorization"] == "Bearer " + tokens[0] and r["account_id"] == "acc-42" for r in checks)
    assert probes(upstream, other) == []  # a healthy account is never re-checked


def test_a_reload_renaming_an_answering_account_does_not_double_book_its_token(gateway_factory, upstream, tmp_path,
                                                                               backend):
    subs, tokens = new_accounts(1)
    upstream.plan(subs[0], gate=1)  # a JWT account: one message at a time, the second gets 429
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a1", "access_token": tokens[0]}], **backend)
    threads, results = run_threads([lambda: chat(gw, gw.access_key, "first", stream=True)])
    wait_until(lambda: conversations(upstream, subs[0]), what="the stream running")
    assert reload_accounts(gw, [{"label": "b1", "access_token": tokens[0]}])[0] == 200
    more, results2 = run_threads([lambda: chat(gw, gw.access_key, "second")])
    wait_until(lambda: admin(gw)["queued"] == 1, what="the second request waiting for b1")
    assert len(conversations(upstream, subs[0])) == 1  # nothing sent to the token while it answers
    row = admin(gw)["accounts"][0]
    assert row["label"] == "b1" and row["in_flight"] == 1  # the renamed account is the one answering the stream
    upstream.release(subs[0])
    for t in threads + more:
        t.join(20)
    assert results[0][0] == 200 and b"data: [DONE]" in results[0][2]
    assert results2[0][0] == 200 and "second" in answer_text(results2[0][2])
    assert_one_at_a_time(upstream, subs)
    asked = [r["body"]["messages"][-1]["content"]["parts"][0] for r in conversations(upstream, subs[0])]
    assert asked == ["first", "second"]


def test_a_label_given_a_new_token_does_not_inherit_the_old_tokens_count(gateway_factory, upstream, tmp_path,
                                                                         backend):
    subs, tokens = new_accounts(2)
    upstream.plan(subs[0], gate=1)
    gw = start_pool(gateway_factory, tmp_path, [{"label": "a1", "access_token": tokens[0]}], QUEUE_TIMEOUT=3,
                    **backend)
    threads, results = run_threads([lambda: chat(gw, gw.access_key, "old token", stream=True)])
    wait_until(lambda: conversations(upstream, subs[0]), what="the stream running")
    assert reload_accounts(gw, [{"label": "a1", "access_token": tokens[1]}])[0] == 200
    status, _, body = chat(gw, gw.access_key, "new token")  # answered at once while the old token streams
    assert status == 200 and "new token" in answer_text(body)
    assert len(conversations(upstream, subs[1])) == 1
    upstream.release(subs[0])
    threads[0].join(20)
    assert results[0][0] == 200
    wait_until(lambda: admin(gw)["accounts"][0]["in_flight"] == 0, timeout=2, what="the account given back")
