"""Q1, the account queue: N concurrent requests over K accounts that answer one message at a time.

The upstream is the fake (fakeupstream/, paced answers; it refuses a second message at once on
an account and logs when each answer started and ended). Three runs, one after the other:

- baseline, no pool: K clients, each chaining its requests on its own account (the best a client
  can do alone: the next request leaves when the previous answer has arrived);
- pool, one process (memory back end): all N requests at once through one access key;
- pool, Redis (PROCESS_WORKERS=2, a redis-server of its own on a free port).

Per run: throughput against the ideal K / answer time (no account idles while anything waits),
and the handoff gap: how long an account idles between the end of one answer and the start of
the next (p50/p99), as the upstream sees it; and, from the gateway's own count (``GET
/admin/accounts``, "handoff"), what queueing adds per request: from the moment an account is
free to the moment the waiting request calls the upstream. Every answer must contain its own question
("exact"), and no account may ever refuse a message as busy.
"""

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
import uuid

from bench.procs import Process, Server
from devkit.procs import ChildProcess
from fakeupstream.app import mint_jwt

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Fake(Process):
    def __init__(self):
        super().__init__([sys.executable, "-m", "fakeupstream", "--port", "0"])

    def plan(self, key, **plan):
        plan["key"] = key
        req = urllib.request.Request(self.url + "/_fake/plan", json.dumps(plan).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def log(self, key):
        with urllib.request.urlopen(self.url + "/_fake/log?key=" + key, timeout=30) as r:
            return [x for x in json.loads(r.read()) if x.get("path", "").endswith("/conversation")]


class Redis(ChildProcess):
    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        super().__init__([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                         pattern=r"Ready to accept connections", prefix="bench-redis-")
        self.url = "redis://127.0.0.1:%d/0" % port


async def _ask(url, key, text):
    """One non-stream chat completion over a fresh connection: (status, answer text)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": text}]}).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (host.encode(), key.encode(), len(body), body))
    await writer.drain()
    raw = await reader.read(-1)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(None, 2)[1]) if head else 0
    try:
        answer = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        answer = payload.decode("utf-8", "replace")[:200]
    return status, answer


async def _burst(url, key, texts):
    return await asyncio.gather(*(_ask(url, key, t) for t in texts))


def _accounts(k):
    subs = ["q%s%d" % (uuid.uuid4().hex[:8], i) for i in range(k)]
    return subs, [mint_jwt(s, int(time.time()) + 86400) for s in subs]


def _measure(fake, subs, results, texts):
    spans, gaps, busy = [], [], 0
    for sub in subs:
        records = fake.log(sub)
        busy += sum(1 for r in records if r.get("refused") == "busy")
        mine = sorted((r["time"], r["ended"]) for r in records if not r.get("refused") and r.get("ended"))
        spans += mine
        gaps += [b[0] - a[1] for a, b in zip(mine, mine[1:], strict=False)]
    exact = sum(1 for (status, answer), text in zip(results, texts, strict=True) if status == 200 and text in answer)
    answer_time = sum(e - s for s, e in spans) / len(spans) if spans else 0
    wall = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0
    return exact, busy, answer_time, wall, gaps


def _warm(url):
    """One answer on a key of its own first: the gateway's first answer loads the token counter
    (~100 ms), which would otherwise show as the first handoff of every account."""
    async def some():  # several at once, so that every worker process answers one
        await asyncio.gather(*(_ask(url, "warm-up-%d-%s" % (i, uuid.uuid4().hex), "warm up") for i in range(6)))
    asyncio.run(some())


def _handoff(url, admin_key):
    req = urllib.request.Request(url + "/admin/accounts", headers={"Authorization": "Bearer " + admin_key})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["handoff"]


def _row(table, label, n, k, pace_ms, results, texts, fake, subs, baseline_p99=None, handoff=None):
    exact, busy, answer_time, wall, gaps = _measure(fake, subs, results, texts)
    p99 = _pct(gaps, 0.99) or 0
    added = "" if baseline_p99 is None else " (%+.2f ms vs the baseline)" % (1000 * (p99 - baseline_p99))
    if handoff is not None:
        added += "; queueing adds (account freed -> next upstream call, in the gateway) p50 %.2f ms p99 %.2f ms" % (
            handoff.get("p50_ms", 0), handoff.get("p99_ms", 0))
    ideal = k / answer_time if answer_time else 0
    got = n / wall if wall else 0
    failed = sum(1 for status, _ in results if status != 200)
    table.add("Q1 queue %s" % label, "N=%d over K=%d accounts, answers %.0f ms (pace %g ms)"
              % (n, k, answer_time * 1000, pace_ms),
              "throughput %.1f/s = %.1f%% of K/answer time; handoff gap p50 %.2f ms p99 %.2f ms%s; "
              "busy refusals %d; failed %d; exact %d/%d"
              % (got, 100 * got / ideal if ideal else 0, 1000 * (_pct(gaps, 0.5) or 0), 1000 * p99, added,
                 busy, failed, exact, n),
              exact=exact == n and busy == 0)
    return p99


def q1(table, n, k, pace_ms):
    fake = Fake()
    try:
        texts = ["question %04d" % i for i in range(n)]

        # baseline: no pool, K clients each chaining its requests on its own account
        subs, tokens = _accounts(k)
        for sub in subs:
            fake.plan(sub, pace_ms=pace_ms)
        with Server(fake.url) as server:
            _warm(server.url)

            async def chains():
                results = [None] * n

                async def chain(j):
                    for i in range(j, n, k):
                        results[i] = await _ask(server.url, tokens[j], texts[i])
                await asyncio.gather(*(chain(j) for j in range(k)))
                return results
            results = asyncio.run(chains())
        base = _row(table, "baseline (no pool, K chained clients)", n, k, pace_ms, results, texts, fake, subs)

        for label, redis in (("pool, one process", False), ("pool, Redis, 2 processes", True)):
            if redis and not os.path.exists(REDIS):
                table.add("Q1 queue %s" % label, "-", "skipped: no redis-server on this machine")
                continue
            subs, tokens = _accounts(k)
            for sub in subs:
                fake.plan(sub, pace_ms=pace_ms)
            directory = tempfile.mkdtemp(prefix="bench-pool-")
            path = os.path.join(directory, "accounts.json")
            access_key = "ak-" + uuid.uuid4().hex
            with open(path, "w") as f:
                json.dump({"accounts": [{"label": "a%d" % i, "access_token": t} for i, t in enumerate(tokens)],
                           "access_keys": [access_key]}, f)
            admin_key = "admin-" + uuid.uuid4().hex
            settings = dict(ACCOUNTS_FILE=path, QUEUE_TIMEOUT=3600, DATA_DIR=directory, ADMIN_KEY=admin_key)
            store = Redis() if redis else None
            try:
                if store is not None:
                    settings["REDIS_URL"] = store.url
                with Server(fake.url, workers=2 if redis else 1, **settings) as server:
                    _warm(server.url)
                    results = asyncio.run(_burst(server.url, access_key, texts))
                    handoff = _handoff(server.url, admin_key)
            finally:
                if store is not None:
                    store.stop()
                shutil.rmtree(directory, ignore_errors=True)
            _row(table, label, n, k, pace_ms, results, texts, fake, subs, base, handoff)
    finally:
        fake.stop()
