"""The account pool: the one place that knows which upstream account answers a request.

Operators list ChatGPT accounts (``ACCOUNTS_FILE`` / ``UPSTREAM_KEYS``) and invent access keys
(``ACCESS_KEYS``) for their bots and users. A request carrying an access key asks the pool for
a ``Lease`` on one account and gives it back when its answer has ended; any other key is
forwarded as it is, as RefreshToV1Api did. One account answers one message at a time (the
upstream's 429 "Only one message at a time"), so requests that find no free account wait in
one FIFO queue: the earliest waiter gets the next account that frees up; among free accounts
the least busy, then the least recently used, is chosen.

``AccountPool`` is the interface handlers see; ``MemoryPool`` keeps its state in this process
(the default) and ``pgw.pool_redis.RedisPool`` keeps it in Redis, shared by processes and
machines. What an upstream refusal means for an account (benched, unhealthy, retry elsewhere)
is decided here too (``verdict``), so both back ends and the handlers agree.

An account's state (in-flight count, benches, health) belongs to its credentials, not to its
label: both back ends key it by ``Account.ident``, a short hash of the token and account id. A
reload that renames an account keeps its count (the upstream sees one account, answering one
message at a time, whatever we call it), and one that gives a label a new token starts that
token clean. Labels are for people: logs and the admin view.

A token the upstream refuses (401) makes its account unhealthy: it is handed to no request
until a background re-check (``recheck``, every UNHEALTHY_RECHECK) finds the token accepted
again, with one cheap authenticated call (``probe``: the upstream's 404 for a conversation that
does not exist means the token got through). Users' requests are never the probe.
"""

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import time
import uuid

import ujson
from tornado.ioloop import IOLoop

from pgw.errors import ApiError
from pgw.logs import mask
from pgw.tokens import jwt_exp
from pgw.upstream import describe

log = logging.getLogger("gateway.pool")

KINDS = ("access_token", "share_token", "refresh_token")
# 403s bench an account FORBIDDEN_BENCH, doubling each time, up to an hour. (A one-at-a-time 429
# benches it BUSY_BENCH, 10 s by default: the upstream says "or wait one minute", but it usually
# means another client of the same account is mid-answer, and answers take seconds.)
FORBIDDEN_BACKOFF_MAX = 3600.0
HANDOFFS_KEPT = 1000  # the last handoff times kept for the admin view and the bench
PROBE_TIMEOUT = 15.0  # seconds a re-check's call may take; no answer by then: the next re-check


class Account:
    """One upstream account as the operator configured it (the live token is the pool's)."""

    __slots__ = ("label", "kind", "token", "account_id", "max_concurrent", "exp", "ident")

    def __init__(self, label, kind, token, account_id=None, max_concurrent=None):
        # An access token is a JWT: past its exp it is refused (401), so it is not even tried.
        self.exp = jwt_exp(token) if kind == "access_token" else None
        # What the pool's state is keyed by (in memory and in Redis): the credentials, never the
        # label an operator may change under a running answer; a hash, safe in keys and logs.
        self.ident = hashlib.sha256(("%s\n%s" % (token, account_id or "")).encode()).hexdigest()[:16]
        self.label = label
        self.kind = kind              # access_token | share_token | refresh_token
        self.token = token            # the access/share token, or the refresh token
        self.account_id = account_id  # team accounts: sent as ChatGPT-Account-Id
        self.max_concurrent = max_concurrent

    def key_with(self, token):
        """The upstream key for ``token``: ``"<token>,<account id>"`` for a team account."""
        return "%s,%s" % (token, self.account_id) if self.account_id else token

    def expired(self, wall_now):
        return self.exp is not None and self.exp <= wall_now


class AccountsError(ValueError):
    """The accounts file or UPSTREAM_KEYS cannot be used; the message says where."""


def parse_accounts(data, source):
    """``(accounts, access_keys)`` from the accounts file's JSON: a list of account objects or
    ``{"accounts": [...], "access_keys": [...]}``."""
    access_keys = []
    if isinstance(data, dict):
        access_keys = data.get("access_keys") or []
        data = data.get("accounts") or []
        if not isinstance(access_keys, list) or not all(isinstance(k, str) and k.strip() for k in access_keys):
            raise AccountsError("%s: access_keys must be a list of non-empty strings" % source)
    if not isinstance(data, list):
        raise AccountsError("%s must hold a list of accounts or {\"accounts\": [...], \"access_keys\": [...]}"
                            % source)
    accounts = []
    for i, item in enumerate(data):
        where = "%s, account %d" % (source, i + 1)
        if not isinstance(item, dict):
            raise AccountsError("%s is not an object" % where)
        given = [k for k in KINDS if item.get(k)]
        if len(given) != 1:
            raise AccountsError("%s needs exactly one of access_token, share_token, refresh_token" % where)
        kind = given[0]
        token = item[kind]
        if not isinstance(token, str) or not token.strip() or "," in token:
            raise AccountsError("%s: %s must be a non-empty string without commas" % (where, kind))
        account_id = item.get("account_id") or None
        if account_id is not None and (not isinstance(account_id, str) or "," in account_id):
            raise AccountsError("%s: account_id must be a string" % where)
        limit = item.get("max_concurrent")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000):
            raise AccountsError("%s: max_concurrent must be a whole number from 1 to 1000" % where)
        label = item.get("label") or "account-%d" % (i + 1)
        if not isinstance(label, str):
            raise AccountsError("%s: label must be a string" % where)
        accounts.append(Account(label, kind, token.strip(), account_id, limit))
    return accounts, [k.strip() for k in access_keys]


def load_accounts(settings):
    """The accounts and access keys the settings name: ACCOUNTS_FILE (a missing file is no
    accounts), then UPSTREAM_KEYS (comma-separated; commas separate keys there, so a team
    account is written ``token:account-id``), then ACCESS_KEYS. Raises ``AccountsError``
    naming the problem."""
    accounts, access_keys = [], []
    path = settings.accounts_file
    if path and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise AccountsError("ACCOUNTS_FILE %s cannot be read: %s" % (path, e)) from None
        accounts, access_keys = parse_accounts(data, "ACCOUNTS_FILE %s" % path)
    for i, key in enumerate(k.strip() for k in settings.upstream_keys.split(",")):
        if not key:
            continue
        token, _, account_id = key.partition(":")
        accounts.append(Account("key-%d" % (i + 1), "access_token", token, account_id or None))
    access_keys += [k.strip() for k in settings.access_keys.split(",") if k.strip()]
    labels = [a.label for a in accounts]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise AccountsError("two accounts have the label %s" % sorted(dup)[0])
    seen = {}
    for a in accounts:
        if a.ident in seen:  # one upstream account listed twice would be handed two messages at once
            raise AccountsError("accounts %s and %s have the same token%s: list an account once (max_concurrent "
                                "lets it answer more at once)" % (seen[a.ident], a.label,
                                                                  " and account_id" if a.account_id else ""))
        seen[a.ident] = a.label
    return accounts, access_keys


class AccessKeys:
    """The operator's access keys, compared in constant time (``hmac.compare_digest`` against
    every key, so the time taken says nothing about which one nearly matched)."""

    def __init__(self, keys):
        self._keys = [k.encode() for k in keys]

    def __len__(self):
        return len(self._keys)

    def match(self, key):
        raw = key.encode()
        found = False
        for k in self._keys:
            found |= hmac.compare_digest(k, raw)
        return found


class Lease:
    """One account held by one request: ``key`` is the upstream key to send, ``queued_s`` how
    long the request waited; ``ident`` the account's ``Account.ident`` (what its count, benches
    and health are kept under), ``label`` its name for logs. Give it back with ``await
    pool.release(lease)`` (idempotent)."""

    __slots__ = ("label", "ident", "key", "queued_s", "model", "released", "token_id", "freed_at", "since")

    def __init__(self, label, ident, key, queued_s, model, token_id=None):
        self.label = label
        self.ident = ident
        self.key = key
        self.queued_s = queued_s
        self.model = model
        self.released = False
        self.token_id = token_id   # the Redis back end's slot id
        self.freed_at = None       # a waiter's lease: when (monotonic) its account became free
        self.since = time.monotonic()


class Verdict:
    """What an upstream refusal before the first answer byte means: ``retry`` on another
    account or not; ``bench`` seconds for the account (or, with ``model``, the account and that
    model); ``refresh``: try refreshing the token and the same account once more; ``unhealthy``."""

    __slots__ = ("retry", "bench", "model", "why", "refresh", "unhealthy")

    def __init__(self, retry, bench=0.0, model=None, why="", refresh=False, unhealthy=False):
        self.retry = retry
        self.bench = bench
        self.model = model
        self.why = why
        self.refresh = refresh
        self.unhealthy = unhealthy


def _detail(body):
    try:
        data = ujson.loads(body)
    except ValueError:
        return None
    return data.get("detail") if isinstance(data, dict) else None


def verdict(status, body, model, settings, forbidden_streak=0):
    """Judge an upstream refusal (``status`` None: no answer at all) of one account."""
    if status is None or status >= 500:
        return Verdict(True, why="upstream %s" % ("unreachable" if status is None else "HTTP %d" % status))
    detail = _detail(body)
    if status == 429:
        if isinstance(detail, str) and "one message at a time" in detail.lower():
            return Verdict(True, settings.busy_bench, why="busy with another message (429)")
        clears_in = detail.get("clears_in") if isinstance(detail, dict) else None
        if isinstance(clears_in, (int, float)) and not isinstance(clears_in, bool) and clears_in > 0:
            return Verdict(True, float(clears_in), model, why="usage cap for %s (429)" % model)
        return Verdict(True, settings.busy_bench * 6, why="rate limited (429)")
    if status == 401:
        return Verdict(True, settings.unhealthy_recheck, refresh=True, unhealthy=True, why="unauthorized (401)")
    if status == 403:
        backoff = min(settings.forbidden_bench * (2 ** forbidden_streak), FORBIDDEN_BACKOFF_MAX)
        return Verdict(True, backoff, why="forbidden (403)")
    return Verdict(False)


def all_benched_error(seconds, model):
    seconds = max(1, math.ceil(seconds))
    error = ApiError(429, "every upstream account is resting (benched) for %s; the soonest is back in %d s"
                     % (model or "this model", seconds), "rate_limit_error", "accounts_benched")
    # The openai SDKs retry a 429 at once twice unless told not to: no account is back that soon.
    error.headers = {"Retry-After": str(seconds), "x-should-retry": "false"}
    return error


def queue_timeout_error(waited, retry_after):
    error = ApiError(429, "no upstream account became free within %g s (QUEUE_TIMEOUT); try again in %d s"
                     % (waited, retry_after), "rate_limit_error", "queue_timeout")
    error.headers = {"Retry-After": str(retry_after)}
    return error


def queue_full_error(limit):
    error = ApiError(429, "%d requests are already waiting for an account (QUEUE_MAX); try again shortly" % limit,
                     "rate_limit_error", "queue_full")
    error.headers = {"Retry-After": "1"}
    return error


def all_expired_error():
    return ApiError(503, "the access token of every upstream account has expired; put new tokens in ACCOUNTS_FILE "
                    "and reload it (SIGHUP or POST /admin/accounts/reload), or use refresh tokens",
                    "server_error", "accounts_expired")


def no_accounts_error():
    return ApiError(503, "this gateway has no upstream accounts configured (ACCOUNTS_FILE, UPSTREAM_KEYS)",
                    "server_error", "no_accounts")


class AccountPool:
    """The interface handlers use; back ends implement the abstract parts.

    ``acquire(model, exclude)`` waits (FIFO) for a lease or raises an ``ApiError`` (``exclude``:
    the idents of accounts already tried); ``release`` gives it back; ``refused(lease, status,
    body)`` records what a refusal means and returns its ``Verdict``; ``succeeded(lease)``
    clears an account's 403 streak; ``snapshot()`` is for the admin endpoint; ``reload(accounts,
    access_keys)`` swaps the configuration in place. ``upstream`` (``pgw.upstream.UpstreamClient``)
    is what re-checks of unhealthy accounts call.
    """

    def __init__(self, settings, accounts, access_keys, tokens, upstream=None):
        self.settings = settings
        self.tokens = tokens
        self.upstream = upstream
        self.access = AccessKeys(access_keys)
        self._set_accounts(accounts)
        self.handoffs = collections.deque(maxlen=HANDOFFS_KEPT)

    def _set_accounts(self, accounts):
        self.accounts = {a.label: a for a in accounts}   # in the file's order (the admin view's)
        self.by_ident = {a.ident: a for a in accounts}

    def is_access_key(self, key):
        return self.access.match(key)

    def usable(self):
        """The accounts worth trying: all but those whose access token is known to have expired."""
        now = time.time()
        found = {label: a for label, a in self.accounts.items() if not a.expired(now)}
        if not found and self.accounts:
            raise all_expired_error()
        return found

    def max_concurrent(self, account):
        return account.max_concurrent or self.settings.max_concurrent_per_account

    async def key_for(self, account):
        """The upstream key for ``account`` now (a refresh-token account's cached access token)."""
        if account.kind == "refresh_token":
            token = await self.tokens.access_token(account.token)
            return account.key_with(token)
        return account.key_with(account.token)

    async def lease_key(self, ident, model, queued_s, token_id=None):
        """A ``Lease`` for an assigned account, its token resolved; a refresh that fails makes
        the account unhealthy, gives the slot back and raises ``TokenError``."""
        account = self.by_ident.get(ident)
        lease = Lease(account.label if account is not None else ident, ident, None, queued_s, model, token_id)
        try:
            if account is None:
                raise KeyError(ident)  # taken out by a reload in the instant it was assigned
            lease.key = await self.key_for(account)
        except BaseException as e:
            await self.release(lease)
            if isinstance(e, Exception) and account is not None:
                await self.mark(account, Verdict(True, self.settings.unhealthy_recheck, unhealthy=True,
                                                 why="token refresh failed: %s" % e))
            raise
        return lease

    async def refresh_after_401(self, lease):
        """Refresh the leased account's token (once): the new key, or None when it cannot."""
        account = self.by_ident.get(lease.ident)
        if account is None or account.kind != "refresh_token":
            return None
        try:
            token = await self.tokens.access_token(account.token, force=True)
        except Exception as e:
            log.warning("refreshing the token of %s failed: %s", lease.label, e)
            return None
        lease.key = account.key_with(token)
        return lease.key

    def note_handoff(self, lease):
        """A waiter's request is about to call the upstream: how long its account stood free
        in between (what queueing adds to a request; the bench and the admin view report it)."""
        if lease.freed_at is not None:
            self.handoffs.append(time.monotonic() - lease.freed_at)

    def handoff_stats(self, values=None):
        values = sorted(self.handoffs if values is None else values)
        if not values:
            return {"n": 0}
        return {"n": len(values), "p50_ms": round(1000 * values[len(values) // 2], 3),
                "p99_ms": round(1000 * values[min(len(values) - 1, int(0.99 * len(values)))], 3),
                "max_ms": round(1000 * values[-1], 3)}

    # -- what back ends implement
    async def acquire(self, model, exclude=(), waiting=None):
        """``waiting(future)``: a context manager around each wait of the queue (the handler's:
        it cancels the wait when the client leaves); the caller then needs no task of its own
        for the wait, and a grant wakes it in one loop callback."""
        raise NotImplementedError

    async def release(self, lease):
        raise NotImplementedError

    def free(self, lease):
        """The upstream is done with the lease's account (its answer's body ended, nothing more
        will be posted): give it back now, before the response is finished. In the background
        where that needs IO (Redis); ``release`` afterwards does nothing.

        Returns None, or a future the caller awaits before finishing its response: it resolves
        once every request this process has just handed an account to has started its upstream
        call (``MemoryPool``; with Redis the handover takes a round trip, which no finishing
        holds up)."""
        IOLoop.current().spawn_callback(self.release, lease)
        return None

    async def mark(self, who, verdict):
        """Record a ``Verdict`` against an account (``who``: an ``Account`` or a ``Lease``; its
        ``ident`` says which, its label names it in logs): bench it (or its model), or mark it
        unhealthy, which keeps it out until a re-check (``recheck``) finds its token accepted."""
        raise NotImplementedError

    async def succeeded(self, lease):
        raise NotImplementedError

    async def snapshot(self):
        raise NotImplementedError

    async def reload(self, accounts, access_keys):
        raise NotImplementedError

    def start(self):
        pass

    def close(self):
        pass

    async def refused(self, lease, status, body):
        forbidden_streak = await self.forbidden_streak(lease) if status == 403 else 0
        v = verdict(status, body, lease.model, self.settings, forbidden_streak)
        if v.bench or v.unhealthy or v.why:
            await self.mark(lease, v)
        return v

    async def probe(self, account):
        """Does the upstream accept the account's token now? ``("ok" | "refused" | "unknown",
        why)``. The call is ``GET conversation/<a random id>`` with the account's key (and its
        ChatGPT-Account-Id): authenticated, cheap, and it changes nothing; the upstream answers
        404 "Conversation not found" (200 would do too) only to a token it accepts, 401/403 to
        one it refuses. No answer, a 5xx or anything else proves nothing: "unknown". A
        refresh-token account exchanges its token again first (the old one was refused)."""
        if account.expired(time.time()):
            return "refused", "its access token has expired"
        if self.upstream is None:
            return "unknown", "no upstream client to re-check with"
        try:
            if account.kind == "refresh_token":
                key = account.key_with(await self.tokens.access_token(account.token, force=True))
            else:
                key = account.key_with(account.token)
        except Exception as e:
            return "refused", "the token still cannot be refreshed: %s" % e
        status, _, raw = await self.upstream.get_conversation(key, str(uuid.uuid4()), timeout=PROBE_TIMEOUT)
        if status in (200, 404):
            return "ok", "HTTP %d" % status
        if status in (401, 403):
            return "refused", "still refused (%s)" % describe(status, raw)
        return "unknown", describe(status, raw)

    async def recheck(self, account):
        """One background re-check of an unhealthy account: True when its token is accepted
        and the account is back in the pool (``clear``), for every process sharing the pool.
        A refusal is recorded as its last error; the back end schedules the next re-check."""
        try:
            outcome, why = await self.probe(account)
        except Exception as e:  # a bug here must not end the re-checks
            outcome, why = "unknown", "the re-check failed: %s" % e
        if outcome == "ok":
            log.info("re-check of account %s: its token is accepted (%s), back in the pool", account.label, why)
            await self.clear(account)
            return True
        log.warning("re-check of account %s: %s; still unhealthy, next re-check in %g s", account.label, why,
                    self.settings.unhealthy_recheck)
        if outcome == "refused":
            await self.note_error(account, "re-check: " + why)
        return False

    async def clear(self, who):
        """Lift an account's bench and unhealthy mark (its per-model caps stay)."""
        raise NotImplementedError

    async def note_error(self, who, why):
        """Record ``why`` as the account's last error (the admin view shows it)."""
        raise NotImplementedError

    async def forbidden_streak(self, who):
        return 0


def unwatched(future):
    """``acquire``'s default ``waiting``: nobody cancels the queue's wait from outside."""
    return contextlib.nullcontext()


class _State:
    """What the memory back end knows about one account (one ``Account.ident``)."""

    __slots__ = ("in_flight", "last_used", "served", "benched_until", "bench_why", "models", "unhealthy",
                 "recheck_at", "last_error", "forbidden_streak")

    def __init__(self):
        self.in_flight = 0
        self.last_used = 0.0
        self.served = 0
        self.benched_until = 0.0
        self.bench_why = ""
        self.models = {}          # model -> (until, why)
        self.unhealthy = False
        self.recheck_at = 0.0     # unhealthy: when (monotonic) the next re-check is due
        self.last_error = ""
        self.forbidden_streak = 0

    def resting(self, model, now):
        """Seconds until this account may answer ``model`` again (0: now). An unhealthy one
        rests until a re-check clears it: the next re-check's due time, and a little more while
        one is under way (so an all-unhealthy pool says "benched", with a Retry-After)."""
        until = self.benched_until
        m = self.models.get(model)
        if m is not None and m[0] > until:
            until = m[0]
        if self.unhealthy:
            return max(until - now, self.recheck_at - now, 0.001)
        return max(0.0, until - now)


class _Waiter:
    __slots__ = ("future", "model", "exclude", "since", "granted")

    def __init__(self, model, exclude, since):
        self.granted = None
        self.future = asyncio.get_running_loop().create_future()
        self.model = model
        self.exclude = exclude
        self.since = since


class MemoryPool(AccountPool):
    """The pool for one process: counts, queue and benches in memory, keyed by ``Account.ident``.

    The queue is served by ``_dispatch`` whenever a slot may have freed (a release, a bench
    ending, a reload): the earliest waiter that some free account can serve gets it. A waiter
    whose every account is benched is told so at once rather than left to time out. An
    unhealthy account is re-checked by a timer of its own (``_recheck_later``).
    """

    def __init__(self, settings, accounts, access_keys, tokens, upstream=None):
        super().__init__(settings, accounts, access_keys, tokens, upstream)
        self.state = {a.ident: _State() for a in accounts}
        self.waiters = collections.deque()
        self._hold_ewma = 5.0   # seconds an answer holds an account, for Retry-After estimates
        self._handing = 0       # waiters given an account whose request has not yet resumed
        self._after = []        # futures of answers that finish once those have (``free``)

    # -- choosing
    def _free(self, model, exclude, now, accounts):
        best, best_rank = None, None
        for account in accounts.values():
            s = self.state[account.ident]
            if account.ident in exclude or s.in_flight >= self.max_concurrent(account) or s.resting(model, now):
                continue
            rank = (s.in_flight, s.last_used)
            if best_rank is None or rank < best_rank:
                best, best_rank = account.ident, rank
        return best

    def _soonest(self, model, exclude, now, accounts):
        """0 when some account not in ``exclude`` could answer ``model`` now or once a slot
        frees; else the seconds until the first bench ends (excluded accounts count: they may
        be tried again then), ``math.inf`` when nothing is benched (no account left to try)."""
        soonest = math.inf
        for account in accounts.values():
            rest = self.state[account.ident].resting(model, now)
            if rest == 0:
                if account.ident not in exclude:
                    return 0.0
            else:
                soonest = min(soonest, rest)
        return soonest

    def _take(self, ident, now):
        s = self.state[ident]
        s.in_flight += 1
        s.last_used = now
        s.served += 1

    def _capacity(self):
        return sum(self.max_concurrent(a) for a in self.accounts.values()) or 1

    async def acquire(self, model, exclude=(), waiting=None):
        waiting = waiting or unwatched
        now = time.monotonic()
        if not self.accounts:
            raise no_accounts_error()
        accounts = self.usable()
        soonest = self._soonest(model, exclude, now, accounts)
        if soonest:
            raise all_benched_error(soonest, model) if soonest < math.inf else no_accounts_error()
        if not self.waiters:
            ident = self._free(model, exclude, now, accounts)
            if ident is not None:
                self._take(ident, now)
                return await self.lease_key(ident, model, 0.0)
        if len(self.waiters) >= self.settings.queue_max:
            raise queue_full_error(self.settings.queue_max)
        waiter = _Waiter(model, exclude, now)
        if exclude:  # a request moved to another account arrived before everyone who queued since
            at = next((i for i, w in enumerate(self.waiters) if not w.exclude), len(self.waiters))
            self.waiters.insert(at, waiter)
        else:
            self.waiters.append(waiter)
        self._dispatch()
        # The future is awaited directly and the timeout is a timer of its own: a grant then
        # reaches this coroutine in one loop callback (``asyncio.wait`` would add another, and
        # each one waits behind everything else ready in that loop turn: bench Q1's p99).
        timer = asyncio.get_running_loop().call_later(self.settings.queue_timeout, self._expire, waiter)
        try:
            with waiting(waiter.future):
                ident = await waiter.future  # raises the all-benched (or timeout) error a dispatch decided
        except BaseException:  # cancelled, the client gone, shutdown: out of the queue (idempotent)
            self._leave(waiter)
            raise
        finally:
            timer.cancel()
            if waiter.granted is not None:
                self._resumed()
        lease = await self.lease_key(ident, model, time.monotonic() - waiter.since)
        lease.freed_at = waiter.granted
        return lease

    def _expire(self, waiter):
        """QUEUE_TIMEOUT has passed for ``waiter``: out of the queue, with a 429 that says when to
        come back (from how long answers hold accounts, and how many wait)."""
        if waiter.future.done():
            return
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass
        retry = max(1, math.ceil(self._hold_ewma * (len(self.waiters) + 1) / self._capacity()))
        waiter.future.set_exception(queue_timeout_error(self.settings.queue_timeout, retry))

    def _leave(self, waiter):
        """The waiter gave up (timeout, client gone): out of the queue, and an account handed
        to it in the same instant goes back."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass
        f = waiter.future
        if f.done() and not f.cancelled() and f.exception() is None:
            self._put_back(f.result())
        else:
            f.cancel()

    def _free_slots(self):
        return sum(max(0, self.max_concurrent(a) - self.state[a.ident].in_flight) for a in self.accounts.values())

    def _dispatch(self):
        """Serve waiters in order. With no slot free (the common case under load) nothing is
        looked at: a release frees one slot, the head waiter takes it, the loop stops there."""
        if not self.waiters:
            return
        now = time.monotonic()
        served = []
        free = self._free_slots()
        try:
            accounts = self.usable()
        except ApiError as e:
            for waiter in self.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(e)
            self.waiters.clear()
            return
        for waiter in self.waiters:
            if free <= 0 and not self._soonest(waiter.model, (), now, accounts):
                break  # nothing free and some account will be: this waiter, and everyone behind, waits
            if waiter.future.done():
                served.append(waiter)
                continue
            ident = self._free(waiter.model, waiter.exclude, now, accounts)
            if ident is not None:
                self._take(ident, now)
                free -= 1
                waiter.granted = now
                self._handing += 1
                waiter.future.set_result(ident)
                served.append(waiter)
                continue
            soonest = self._soonest(waiter.model, waiter.exclude, now, accounts)
            if soonest:
                waiter.future.set_exception(all_benched_error(soonest, waiter.model) if soonest < math.inf
                                            else no_accounts_error())
                served.append(waiter)
        for waiter in served:
            self.waiters.remove(waiter)

    def _put_back(self, ident):
        s = self.state.get(ident)
        if s is not None and s.in_flight > 0:
            s.in_flight -= 1
            if s.in_flight == 0 and ident not in self.by_ident:
                del self.state[ident]  # a reload took the account out while it answered: forgotten now
        self._dispatch()

    async def release(self, lease):
        self.free(lease)

    def free(self, lease):
        if lease.released:
            return None
        lease.released = True
        self._hold_ewma = 0.9 * self._hold_ewma + 0.1 * (time.monotonic() - lease.since)
        self._put_back(lease.ident)
        if not self._handing:
            return None
        # The account went to a waiter (and maybe others' did, in this loop turn): this answer's
        # finishing (body, usage, write, access line: ~1.5 ms on a slow machine) waits until
        # their requests have resumed and started their upstream calls, or it would run first
        # whenever it is ahead of them in the loop's queue (bench Q1's p99).
        after = asyncio.get_running_loop().create_future()
        self._after.append(after)
        return after

    def _resumed(self):
        """A request given an account has resumed (or left): answers waiting on it go on."""
        self._handing -= 1
        if not self._handing and self._after:
            after, self._after = self._after, []
            for f in after:
                if not f.done():
                    f.set_result(None)

    def _wake_at(self, seconds):
        """Serve the queue again when a bench ends (the account may be the one waiters need)."""
        IOLoop.current().call_later(seconds + 0.001, self._dispatch)

    async def mark(self, who, v):
        s = self.state.get(who.ident)
        if s is None:
            return
        now = time.monotonic()
        s.last_error = v.why
        if v.why.startswith("forbidden"):
            s.forbidden_streak += 1
        if v.bench:
            if v.model is not None:
                s.models[v.model] = (now + v.bench, v.why)
            else:
                s.benched_until, s.bench_why = now + v.bench, v.why
            self._wake_at(v.bench)
            log.warning("account %s benched for %g s: %s", who.label, v.bench, v.why)
        if v.unhealthy and not s.unhealthy:  # (already unhealthy: its re-checks are under way)
            s.unhealthy = True
            self._recheck_later(who.ident, s)
            log.warning("account %s is unhealthy (%s): out of the pool until a re-check, every %g s, finds its "
                        "token accepted", who.label, v.why, self.settings.unhealthy_recheck)

    def _recheck_later(self, ident, s):
        """The next re-check of unhealthy state ``s`` in UNHEALTHY_RECHECK; the chain ends when
        the account is cleared, or its state forgotten (a reload took its token out)."""
        s.recheck_at = time.monotonic() + self.settings.unhealthy_recheck

        async def due():
            if self.state.get(ident) is not s or not s.unhealthy:
                return
            account = self.by_ident.get(ident)  # (None: out of the file for now, its state kept)
            if account is not None and await self.recheck(account):
                return
            if self.state.get(ident) is s and s.unhealthy:
                self._recheck_later(ident, s)
        IOLoop.current().call_later(self.settings.unhealthy_recheck, lambda: IOLoop.current().spawn_callback(due))

    async def note_error(self, who, why):
        s = self.state.get(who.ident)
        if s is not None:
            s.last_error = why

    async def forbidden_streak(self, who):
        s = self.state.get(who.ident)
        return s.forbidden_streak if s is not None else 0

    async def clear(self, who):
        s = self.state.get(who.ident)
        if s is not None:
            s.benched_until, s.bench_why, s.unhealthy = 0.0, "", False
            self._dispatch()

    async def succeeded(self, lease):
        """An answer went through: the 403 back-off starts over. (An unhealthy mark stays: this
        answer's request was accepted before the token was refused; only a re-check lifts it.)"""
        s = self.state.get(lease.ident)
        if s is not None:
            s.forbidden_streak = 0

    async def snapshot(self):
        now, wall = time.monotonic(), time.time()
        rows = []
        for account in self.accounts.values():
            s = self.state[account.ident]
            queued = sum(1 for w in self.waiters if account.ident not in w.exclude)
            rows.append(account_row(account, self.tokens, {
                "in_flight": s.in_flight, "queued": queued, "served": s.served, "last_error": s.last_error or None,
                "unhealthy": s.unhealthy, "recheck_at": wall + s.recheck_at - now if s.unhealthy else None,
                "benched_until": wall + s.benched_until - now if s.benched_until > now else None,
                "bench_why": s.bench_why if s.benched_until > now else None,
                "models": {m: {"until": wall + u - now, "why": why} for m, (u, why) in s.models.items() if u > now}}))
        return {"accounts": rows, "queued": len(self.waiters), "backend": "memory", "handoff": self.handoff_stats()}

    async def reload(self, accounts, access_keys):
        """Swap in new accounts and keys. State follows the credentials (``Account.ident``): an
        account renamed keeps its count, benches and health; a label given a new token starts
        clean, and the old token's leases in flight still count against the old token, until
        they come back (so an account taken out and put back meanwhile gets no second message)."""
        self.access = AccessKeys(access_keys)
        self._set_accounts(accounts)
        state = {a.ident: self.state.get(a.ident) or _State() for a in accounts}
        for ident, s in self.state.items():
            if ident not in state and s.in_flight > 0:
                state[ident] = s
        self.state = state
        self._dispatch()


def account_row(account, tokens, live):
    """One account for ``GET /admin/accounts``: nothing usable of its token."""
    exp = tokens.expiry(account) if tokens is not None else None
    unhealthy = live.pop("unhealthy")
    health = "unhealthy" if unhealthy else ("benched" if live.get("benched_until") else "ok")
    live["recheck_at"] = live.get("recheck_at") if unhealthy else None  # (Unix time the next re-check is due)
    if account.expired(time.time()):
        health = "expired"
    row = {"label": account.label, "kind": account.kind, "token": mask(account.token),
           "account_id": mask(account.account_id) if account.account_id else None, "health": health,
           "max_concurrent": account.max_concurrent, "token_expires": exp}
    row.update(live)
    return row
