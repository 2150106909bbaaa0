"""Answered requests leave no reference cycles behind: everything a request made is freed by
reference counting when it ends, not found later by the cyclic garbage collector.

Why a user notices: with cycles, every finished answer (handler, run, relay, sink, conversion,
transfer: ~130 objects) waited for a full collection, and one that freed 27,000 of them held
the event loop for 31 ms: every open stream stalled, and bench Q1's queue handoff p99 was that
pause. The server runs under ``tests/gcprobe.py``, which reports what a full collection finds.
"""

import json
import os
import signal
import socket
import sys
import time
import uuid

from fakeupstream.app import mint_jwt
from tests.helpers import Gateway, http


def chat(gw, key, text, stream=False):
    return http("POST", gw.url + "/v1/chat/completions",
                {"model": "gpt-3.5-turbo", "stream": stream, "messages": [{"role": "user", "content": text}]},
                {"Authorization": "Bearer " + key, "Content-Type": "application/json"}, timeout=30)


def leave_mid_stream(gw, key):
    """Ask for a stream, read until its first event, then hang up."""
    host, port = gw.url.split("//", 1)[1].split(":")
    body = json.dumps({"model": "gpt-3.5-turbo", "stream": True,
                       "messages": [{"role": "user", "content": "a long answer"}]}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body))
        got = b""
        while b"data:" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk


def garbage(gw, out):
    """What a full collection in the server finds now: ``{type: count}``."""
    os.kill(gw.proc.pid, signal.SIGUSR1)
    done = out + ".done"
    deadline = time.monotonic() + 10
    while not os.path.exists(done):
        assert time.monotonic() < deadline, "the probe did not answer"
        time.sleep(0.02)
    with open(done) as f:
        found = json.load(f)
    os.remove(done)
    return found


def test_requests_of_every_kind_leave_no_garbage_cycles(upstream, tmp_path):
    subs = ["gc%s%d" % (uuid.uuid4().hex[:10], i) for i in range(2)]
    tokens = [mint_jwt(sub, int(time.time()) + 86400) for sub in subs]
    upstream.plan(subs[0], status=502)  # the pool's first account refuses: the request moves on
    access_key = "ak-" + uuid.uuid4().hex
    out = str(tmp_path / "garbage.json")
    gw = Gateway({"BASE_URL": upstream.url, "GC_PROBE_OUT": out, "UPSTREAM_KEYS": ",".join(tokens),
                  "ACCESS_KEYS": access_key, "NEED_DELETE_CONVERSATION_AFTER_RESPONSE": "false",
                  "KEEPALIVE_INTERVAL": "0.2"},
                 args=[sys.executable, "-m", "tests.gcprobe"])
    try:
        key = "fk-gc-" + uuid.uuid4().hex
        assert chat(gw, key, "warm up")[0] == 200
        garbage(gw, out)  # what start-up and the first answer (lazy imports, caches) left

        for i in range(5):
            assert chat(gw, key, "plain %d" % i)[0] == 200
            status, _, body = chat(gw, key, "streamed %d" % i, stream=True)
            assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
        refused = "fk-gc-refused-" + uuid.uuid4().hex
        upstream.plan(refused, status=429, detail="Only one message at a time. Please allow any other "
                                                  "responses to complete before sending another message.")
        assert chat(gw, refused, "refused")[0] == 429
        assert chat(gw, refused, "refused", stream=True)[0] == 429
        assert http("POST", gw.url + "/v1/chat/completions", b"{not json",
                    {"Authorization": "Bearer " + key})[0] == 400
        status, _, body = chat(gw, access_key, "pooled")
        assert status == 200 and "pooled" in json.loads(body)["choices"][0]["message"]["content"]
        slow = "fk-gc-slow-" + uuid.uuid4().hex
        upstream.plan(slow, pace_ms=100)
        leave_mid_stream(gw, slow)
        # the gateway abandons the transfer: the fake sees its answer end
        upstream.wait_log(slow, lambda records: records and all(r.get("ended") for r in records), timeout=10)
        time.sleep(0.2)

        found = garbage(gw, out)
        ours = {name: n for name, n in found.items() if name.startswith(("pgw.", "tornado.", "_asyncio."))}
        assert ours == {}, "garbage cycles left by answered requests: %s" % sorted(found.items(), key=lambda kv: -kv[1])
    finally:
        gw.stop()
