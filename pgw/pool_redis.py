"""The account pool in Redis: one limit per account and one FIFO order for every process and
machine that shares ``REDIS_URL`` (the one place that knows the pool's Redis keys).

Accounts are named in Redis by ``Account.ident`` (a hash of token and account id, never the
token; ``<id>`` below), not by label: a reload that renames an account keeps its slots, and
one that gives a label a new token does not inherit the old token's. The keys, under
``<prefix>`` (``REDIS_PREFIX``):

- ``slots:<id>``: sorted set, the account's leases (slot id -> expiry, ms);
- ``queue`` (waiter id -> ticket), ``ticket`` (the counter), ``beat`` (waiter id -> heartbeat
  expiry), ``wmeta`` (waiter id -> "model\\n,excluded ids,");
- hashes by ``<id>``: ``bench`` (also ``<id>|<model>``; until, ms), ``why`` (the same fields),
  ``lasterr``, ``unhealthy`` (the next re-check's due time, ms; present while unhealthy),
  ``forbidden`` (403 streak), ``served``, ``last`` (last handed out, ms), ``freedat`` (last
  freed, ms);
- ``handoffs``: list, the last handoff times; ``freed``: the channel releases publish on;
- ``tokens`` and ``tokens:lock:<entry>``: the refresh-token cache (``RedisTokenStore``).

Every account slot is a lease: a member of ``slots:<id>`` scored by its expiry, renewed by its
holder every third of ``LEASE_TTL`` while the answer streams, so a killed process frees its
accounts within ``LEASE_TTL``. Waiters are members of ``queue`` scored by a ticket from one
counter (arrival order across machines), with a heartbeat in ``beat``: a waiter whose process
died drops out of the queue.

``ACQUIRE`` is one Lua script, so an acquisition is atomic: it enters the waiter into the
queue, and gives it an account only if every earlier waiter that some free account could serve
has been given one first (it replays the queue in order against the free slots). Releases
publish on ``<prefix>:freed``; every process listens and retries its own earliest waiters, and
polls twice a second as well (bench ends, lost messages). Times are Redis's own (``TIME``), so
machines with skewed clocks agree. Redis unreachable: requests get a clear 503 at once (short
socket timeouts), waiters are failed, and everything works again when it is back.

An unhealthy account (its field in ``unhealthy``) is handed to nobody. Every process looks for
re-checks that are due every RECHECK_SWEEP seconds; ``CLAIM`` gives each due one to a single
process, atomically, by moving its due time UNHEALTHY_RECHECK on (a process that dies while
re-checking only delays the next one). A re-check that finds the token accepted deletes the
field and publishes on ``freed``, so every process's waiters may take the account at once.
"""

import asyncio
import bisect
import logging
import math
import time
import uuid

import redis.asyncio as aioredis
import ujson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from tornado.ioloop import IOLoop, PeriodicCallback

from pgw.errors import ApiError
from pgw.pool import (HANDOFFS_KEPT, AccessKeys, AccountPool, unwatched, account_row, all_benched_error,
                      no_accounts_error, queue_full_error, queue_timeout_error)
from pgw.tokens import LOCK_TTL_MS

log = logging.getLogger("gateway.pool")

POLL_INTERVAL = 0.5   # seconds between queue retries without a "freed" message
RECHECK_SWEEP = 1.0   # seconds between looks for due re-checks of unhealthy accounts (one EVALSHA)
# A waiter's heartbeat lives this long: a waiter whose process died leaves the queue within it
# (renewed every RENEW_EVERY at most, with the slots).
BEAT_TTL = 3.0
RENEW_EVERY = 1.0
SOCKET_TIMEOUT = 2.0  # a Redis that does not answer within this is treated as down
MAX_CONNECTIONS = 32  # per process; one is the "freed" subscription

ACQUIRE = """
local p, id, model, exclude = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, beat, qmax, n = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local q, beats, meta, bench = p .. ':queue', p .. ':beat', p .. ':wmeta', p .. ':bench'
local ids, limits, free, total = {}, {}, {}, 0
for i = 1, n do
  local l = ARGV[7 + 2 * i]
  ids[i], limits[i] = l, tonumber(ARGV[8 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', p .. ':slots:' .. l, '-inf', now)
  free[i] = limits[i] - redis.call('ZCARD', p .. ':slots:' .. l)
  if free[i] > 0 then total = total + free[i] end
end
local restcache = {}
local function rest(l, m)
  local k = l .. '|' .. m
  local r = restcache[k]
  if r == nil then
    local u = tonumber(redis.call('HGET', bench, l) or '0')
    local um = tonumber(redis.call('HGET', bench, k) or '0')
    if um > u then u = um end
    r = u - now
    -- unhealthy: out until a re-check clears it (due then; a little longer while it runs)
    local sick = redis.call('HGET', p .. ':unhealthy', l)
    if sick then r = math.max(r, tonumber(sick) - now, 1) end
    restcache[k] = r
  end
  return r
end
local function excluded(ex, l) return string.find(ex, ',' .. l .. ',', 1, true) ~= nil end
local dead = redis.call('ZRANGEBYSCORE', beats, '-inf', now)
for _, d in ipairs(dead) do
  redis.call('ZREM', q, d); redis.call('ZREM', beats, d); redis.call('HDEL', meta, d)
end
local soonest = -1
for i = 1, n do
  local r = rest(ids[i], model)
  if r <= 0 then
    if not excluded(exclude, ids[i]) then soonest = 0; break end
  elseif soonest < 0 or r < soonest then soonest = r end
end
if soonest ~= 0 then
  redis.call('ZREM', q, id); redis.call('ZREM', beats, id); redis.call('HDEL', meta, id)
  return {'benched', tostring(soonest)}
end
local waited = redis.call('ZSCORE', q, id)
if not waited then
  if redis.call('ZCARD', q) >= qmax then return {'full', '0'} end
  -- a request moved to another account (exclude set) goes before everyone who never tried
  local tk = redis.call('INCR', p .. ':ticket')
  if exclude ~= ',,' then tk = tk - 1e12 end
  redis.call('ZADD', q, tk, id)
  redis.call('HSET', meta, id, model .. '\\n' .. exclude)
end
redis.call('ZADD', beats, now + beat, id)
local ticket = redis.call('ZSCORE', q, id)
if total <= 0 then return {'wait', ticket} end
local order = redis.call('ZRANGE', q, 0, -1)
for _, w in ipairs(order) do
  local m, ex = model, exclude
  if w ~= id then
    local mt = redis.call('HGET', meta, w)
    if mt then
      local cut = string.find(mt, '\\n', 1, true)
      m, ex = string.sub(mt, 1, cut - 1), string.sub(mt, cut + 1)
    else
      m = nil
    end
  end
  if m then
    local best, bestbusy, bestlast = nil, 0, 0
    for i = 1, n do
      if free[i] > 0 and not excluded(ex, ids[i]) and rest(ids[i], m) <= 0 then
        local busy = limits[i] - free[i]
        local last = tonumber(redis.call('HGET', p .. ':last', ids[i]) or '0')
        if best == nil or busy < bestbusy or (busy == bestbusy and last < bestlast) then
          best, bestbusy, bestlast = i, busy, last
        end
      end
    end
    if best then
      if w == id then
        local l = ids[best]
        redis.call('ZADD', p .. ':slots:' .. l, now + ttl, id)
        redis.call('HSET', p .. ':last', l, now)
        redis.call('HINCRBY', p .. ':served', l, 1)
        redis.call('ZREM', q, id); redis.call('ZREM', beats, id); redis.call('HDEL', meta, id)
        local freed = tonumber(redis.call('HGET', p .. ':freedat', l) or '-1')
        if not waited or freed < 0 then return {'ok', l, '-1'} end
        return {'ok', l, tostring(now - freed)}
      end
      free[best] = free[best] - 1
      total = total - 1
      if total <= 0 then break end
    end
  end
end
return {'wait', ticket}
"""

# ARGV: prefix, ttl ms, beat ms, then account id, slot id pairs (slots to renew), '--', waiter ids
RENEW = """
local p, ttl, beat = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local i = 4
while ARGV[i] ~= '--' do
  redis.call('ZADD', p .. ':slots:' .. ARGV[i], 'XX', now + ttl, ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('ZADD', p .. ':beat', 'XX', now + beat, ARGV[j]) end
return now
"""

# ARGV: prefix, account id, slot id: give the slot back, note when (for handoff times), tell everyone
RELEASE = """
local p, l = ARGV[1], ARGV[2]
if redis.call('ZREM', p .. ':slots:' .. l, ARGV[3]) == 1 then
  local t = redis.call('TIME')
  redis.call('HSET', p .. ':freedat', l, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
redis.call('PUBLISH', p .. ':freed', l)
return 1
"""

# ARGV: prefix, account id, field (id or id|model), seconds, why, unhealthy (0/1), forbidden (0/1).
# An account already unhealthy keeps its re-check's due time (HSETNX).
MARK = """
local p, l, f, sec, why = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if sec > 0 then
  redis.call('HSET', p .. ':bench', f, now + math.floor(sec * 1000))
  redis.call('HSET', p .. ':why', f, why)
end
redis.call('HSET', p .. ':lasterr', l, why)
if ARGV[6] == '1' then redis.call('HSETNX', p .. ':unhealthy', l, now + math.floor(sec * 1000)) end
if ARGV[7] == '1' then redis.call('HINCRBY', p .. ':forbidden', l, 1) end
return now
"""

# ARGV: prefix, re-check interval ms, account ids: the unhealthy ones whose re-check is due, each
# now due again an interval later (so exactly one process re-checks it this time)
CLAIM = """
local p, every = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local claimed = {}
for i = 3, #ARGV do
  local due = redis.call('HGET', p .. ':unhealthy', ARGV[i])
  if due and tonumber(due) <= now then
    redis.call('HSET', p .. ':unhealthy', ARGV[i], now + every)
    claimed[#claimed + 1] = ARGV[i]
  end
end
return claimed
"""

# ARGV: prefix, account id: lift its bench and unhealthy mark, and tell every process's waiters
CLEAR = """
local p, l = ARGV[1], ARGV[2]
redis.call('HDEL', p .. ':bench', l)
redis.call('HDEL', p .. ':unhealthy', l)
redis.call('PUBLISH', p .. ':freed', l)
return 1
"""


def connect(settings):
    """The client: short timeouts (a Redis that is down fails requests at once, never hangs
    them); at most MAX_CONNECTIONS connections, a command waiting for a free one (a burst of 500
    arrivals would otherwise open 500 connections and fail with "Too many connections"); and one
    retry on a broken connection, so that the first command after a Redis restart does not fail
    on a pooled connection the old server closed."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT, decode_responses=True, retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError])
    return aioredis.Redis(connection_pool=pool)


def unavailable(e):
    return ApiError(503, "the account pool's Redis (REDIS_URL) cannot be reached: %s" % (str(e) or type(e).__name__),
                    "server_error", "pool_unavailable")


class RedisTokenStore:
    """The token cache as one Redis hash (``<prefix>:tokens``), shared by every process."""

    def __init__(self, client, settings):
        self.client = client
        self.key = settings.redis_prefix + ":tokens"

    async def get(self, eid):
        raw = await self.client.hget(self.key, eid)
        return ujson.loads(raw) if raw else None

    async def put(self, eid, entry):
        await self.client.hset(self.key, eid, ujson.dumps(entry))

    async def lock(self, eid):
        """Only one process exchanges a refresh token at a time (the lock expires by itself)."""
        return bool(await self.client.set("%s:lock:%s" % (self.key, eid), "1", nx=True, px=LOCK_TTL_MS))

    async def unlock(self, eid):
        await self.client.delete("%s:lock:%s" % (self.key, eid))


class _Waiter:
    __slots__ = ("id", "future", "model", "exclude", "since", "ticket", "freed_at")

    def __init__(self, model, exclude):
        self.id = uuid.uuid4().hex
        self.future = asyncio.get_running_loop().create_future()
        self.model = model
        self.exclude = "," + ",".join(sorted(exclude)) + ","
        self.since = time.monotonic()
        self.ticket = 0   # place in the shared queue
        self.freed_at = None  # when (our clock) the account it was given became free


class RedisPool(AccountPool):
    def __init__(self, settings, accounts, access_keys, tokens, client, upstream=None):
        super().__init__(settings, accounts, access_keys, tokens, upstream)
        self.client = client
        self.prefix = settings.redis_prefix
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._mark = client.register_script(MARK)
        self._release = client.register_script(RELEASE)
        self._claim = client.register_script(CLAIM)
        self._clear = client.register_script(CLEAR)
        self.waiters = []          # this process's waiters, in arrival order
        self.held = {}             # lease id -> account id, renewed while held
        self._kicking = False
        self._again = False
        self._timers = []
        self._listener = None

    # -- life cycle
    def start(self):
        ttl = self.settings.lease_ttl
        self._timers = [PeriodicCallback(self._renew_all, min(ttl / 3, RENEW_EVERY) * 1000),
                        PeriodicCallback(self._poll, POLL_INTERVAL * 1000),
                        PeriodicCallback(self._recheck_due, RECHECK_SWEEP * 1000)]
        for t in self._timers:
            t.start()
        self._listener = IOLoop.current().asyncio_loop.create_task(self._listen())

    def close(self):
        for t in self._timers:
            t.stop()
        if self._listener is not None:
            self._listener.cancel()

    def _args(self, accounts):
        args = [len(accounts)]
        for account in accounts.values():
            args += [account.ident, self.max_concurrent(account)]
        return args

    # -- acquiring
    async def acquire(self, model, exclude=(), waiting=None):
        if not self.accounts:
            raise no_accounts_error()
        if len(self.waiters) >= self.settings.queue_max:
            raise queue_full_error(self.settings.queue_max)
        waiter = _Waiter(model, exclude)
        # The first try enters the shared queue with a ticket (arrival order across processes).
        outcome = await self._try(waiter)
        if outcome == "ok":
            return await self.lease_key(waiter.future.result(), model, 0.0, waiter.id)
        bisect.insort(self.waiters, waiter, key=lambda w: w.ticket)
        self._kick()
        # Awaited directly, the timeout a timer of its own (as in pgw.pool.MemoryPool.acquire):
        # a grant reaches this coroutine one loop callback sooner than through asyncio.wait.
        timer = asyncio.get_running_loop().call_later(self.settings.queue_timeout, self._expire, waiter)
        try:
            with (waiting or unwatched)(waiter.future):
                ident = await waiter.future  # raises a refusal (benched, Redis down, timeout) set on it
        except BaseException:  # cancelled, the client gone, shutdown: out of the queue (idempotent)
            self._leave(waiter)
            raise
        finally:
            timer.cancel()
        lease = await self.lease_key(ident, model, time.monotonic() - waiter.since, waiter.id)
        lease.freed_at = waiter.freed_at
        return lease

    async def _try(self, waiter, release=None):
        """One ACQUIRE for ``waiter``: "ok" (its future holds the account id), "wait", or a refusal
        set on its future ("benched", "full", "error"). ``release``: ``(account id, slot id)`` to give
        back first, in the same round trip (our own release handing over to our own waiter)."""
        s = self.settings
        try:
            accounts = self.usable()
        except ApiError as e:
            self._fail(waiter, e)
            return "error"
        args = [self.prefix, waiter.id, waiter.model, waiter.exclude, int(s.lease_ttl * 1000),
                int(BEAT_TTL * 1000), s.queue_max] + self._args(accounts)
        call = asyncio.ensure_future(self._acquire(args=args) if release is None
                                     else self._release_then_acquire(release, args))
        try:
            kind, value, *more = await asyncio.shield(call)
        except asyncio.CancelledError:
            # the caller left while Redis answered: a slot it was given goes back
            call.add_done_callback(lambda f: self._undo(f, waiter))
            raise
        except RedisError as e:
            self._fail(waiter, unavailable(e))
            return "error"
        if kind == "ok":
            self.held[waiter.id] = value
            handoff = float(more[0]) / 1000 if more else -1.0
            waiter.freed_at = time.monotonic() - handoff if handoff >= 0 else None
            if not waiter.future.done():
                waiter.future.set_result(value)
                return "ok"
            IOLoop.current().spawn_callback(self._release_slot, value, waiter.id)
            return "wait"
        if kind == "benched":
            seconds = float(value) / 1000
            self._fail(waiter, all_benched_error(seconds, waiter.model) if seconds >= 0 else no_accounts_error())
            return "benched"
        if kind == "full":
            self._fail(waiter, queue_full_error(s.queue_max))
            return "full"
        waiter.ticket = int(float(value))
        return "wait"

    async def _release_then_acquire(self, release, acquire_args):
        pipe = self.client.pipeline(transaction=False)
        await self._release(args=[self.prefix, *release], client=pipe)
        await self._acquire(args=acquire_args, client=pipe)
        return (await pipe.execute())[1]

    def _undo(self, future, waiter):
        """The caller left while ACQUIRE ran: a slot it was given goes back, and a place in the
        queue it was given is left at once (else it would hold up everyone behind it)."""
        if future.cancelled() or future.exception() is not None:
            IOLoop.current().spawn_callback(self._forget, waiter.id)
        elif future.result()[0] == "ok":
            IOLoop.current().spawn_callback(self._release_slot, future.result()[1], waiter.id)
        else:
            IOLoop.current().spawn_callback(self._forget, waiter.id)

    def _fail(self, waiter, error):
        if not waiter.future.done():
            waiter.future.set_exception(error)
            waiter.future.exception()  # retrieved here if nobody awaits it any more

    def _kick(self):
        """Retry our waiters in order until one must wait (the later ones then must too)."""
        if self._kicking:
            self._again = True
            return
        self._kicking = True
        IOLoop.current().spawn_callback(self._kick_loop)

    async def _kick_loop(self):
        try:
            while True:
                self._again = False
                for waiter in list(self.waiters):
                    if waiter.future.done():
                        self._drop(waiter)
                        continue
                    outcome = await self._try(waiter)
                    if outcome == "wait":
                        break
                    self._drop(waiter)
                if not self._again:
                    return
        finally:
            self._kicking = False

    def _drop(self, waiter):
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def _expire(self, waiter):
        """QUEUE_TIMEOUT has passed for ``waiter``: a 429, and out of the queue here and in Redis
        (a slot an ACQUIRE in flight gives it now goes back: ``_try`` sees the future done)."""
        if waiter.future.done():
            return
        timeout = self.settings.queue_timeout
        self._fail(waiter, queue_timeout_error(timeout, max(1, math.ceil(timeout / 4))))
        self._drop(waiter)
        IOLoop.current().spawn_callback(self._forget, waiter.id)

    def _leave(self, waiter):
        self._drop(waiter)
        f = waiter.future
        if f.done() and not f.cancelled() and f.exception() is None:
            IOLoop.current().spawn_callback(self._release_slot, f.result(), waiter.id)
        elif not f.done():
            f.cancel()
        IOLoop.current().spawn_callback(self._forget, waiter.id)

    async def _forget(self, wid):
        try:
            await self.client.eval("redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]); "
                                   "redis.call('HDEL', KEYS[3], ARGV[1])", 3, self.prefix + ":queue",
                                   self.prefix + ":beat", self.prefix + ":wmeta", wid)
        except RedisError:
            pass  # its heartbeat expires instead

    # -- giving back
    async def release(self, lease):
        if lease.released:
            return
        lease.released = True
        await self._release_slot(lease.ident, lease.token_id)

    async def _release_slot(self, ident, slot_id):
        """Give a slot back. With a waiter of ours first in line (and no retry loop running), the
        release and its ACQUIRE go in one round trip: a handover within one process then costs
        one round trip, not two."""
        self.held.pop(slot_id, None)
        head = None if self._kicking else next((w for w in self.waiters if not w.future.done()), None)
        if head is not None:
            self._kicking = True  # no other ACQUIRE for our waiters meanwhile
            try:
                if await self._try(head, release=(ident, slot_id)) != "wait":
                    self._drop(head)
            finally:
                self._kicking = False
        else:
            try:
                await self._release(args=[self.prefix, ident, slot_id])
            except RedisError as e:
                log.warning("giving account %s back to Redis failed (its lease expires instead): %s",
                            self._name(ident), e)
        self._kick()

    async def _renew_all(self):
        waiting = [w.id for w in self.waiters if not w.future.done()]
        if not self.held and not waiting:
            return
        s = self.settings
        args = [self.prefix, int(s.lease_ttl * 1000), int(BEAT_TTL * 1000)]
        for slot_id, ident in list(self.held.items()):
            args += [ident, slot_id]
        try:
            await self._renew(args=args + ["--"] + waiting)
        except RedisError as e:
            log.warning("renewing %d account leases in Redis failed: %s", len(self.held), e)

    async def _poll(self):
        if self.waiters:
            self._kick()

    async def _listen(self):
        """Kick our queue whenever some process frees a slot; reconnect when Redis comes back."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.prefix + ":freed")
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and self.waiters:
                        if self._kicking:
                            self._again = True
                        else:  # retried from here, not from a callback: one loop turn sooner
                            self._kicking = True
                            try:
                                await self._kick_loop()
                            except Exception:  # a bug must not end the subscription
                                log.exception("retrying the queue after a release failed")
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError) as e:
                log.debug("the pool's Redis subscription dropped: %s", e)
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
                await asyncio.sleep(POLL_INTERVAL)

    def note_handoff(self, lease):
        """Kept in Redis (the last HANDOFFS_KEPT of every process), off the request's path."""
        if lease.freed_at is not None:
            seconds = time.monotonic() - lease.freed_at
            IOLoop.current().spawn_callback(self._push_handoff, seconds)

    async def _push_handoff(self, seconds):
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(self.prefix + ":handoffs", "%.6f" % seconds)
            pipe.ltrim(self.prefix + ":handoffs", 0, HANDOFFS_KEPT - 1)
            await pipe.execute()
        except RedisError:
            pass

    # -- judging
    def _name(self, ident):
        account = self.by_ident.get(ident)
        return account.label if account is not None else ident

    async def mark(self, who, v):
        field = who.ident if v.model is None else "%s|%s" % (who.ident, v.model)
        try:
            await self._mark(args=[self.prefix, who.ident, field, v.bench, v.why, int(v.unhealthy),
                                   int(v.why.startswith("forbidden"))])
        except RedisError as e:
            log.warning("recording %s for account %s in Redis failed: %s", v.why, who.label, e)
            return
        if v.bench:
            log.warning("account %s benched for %g s: %s", who.label, v.bench, v.why)
            IOLoop.current().call_later(v.bench + 0.01, self._kick)
        if v.unhealthy:
            log.warning("account %s is unhealthy (%s): out of the pool until a re-check, every %g s, finds its "
                        "token accepted", who.label, v.why, self.settings.unhealthy_recheck)

    async def _recheck_due(self):
        """Claim the re-checks that are due among our accounts (``CLAIM``) and run them."""
        if not self.by_ident:
            return
        try:
            due = await self._claim(args=[self.prefix, int(self.settings.unhealthy_recheck * 1000),
                                          *self.by_ident])
        except RedisError:
            return  # Redis away: requests say so; the re-checks wait until it is back
        for ident in due:
            account = self.by_ident.get(ident)
            if account is not None:
                IOLoop.current().spawn_callback(self.recheck, account)

    async def note_error(self, who, why):
        try:
            await self.client.hset(self.prefix + ":lasterr", who.ident, why)
        except RedisError:
            pass

    async def forbidden_streak(self, who):
        try:
            return int(await self.client.hget(self.prefix + ":forbidden", who.ident) or 0)
        except RedisError:
            return 0

    async def clear(self, who):
        try:
            await self._clear(args=[self.prefix, who.ident])
        except RedisError as e:
            log.warning("clearing account %s in Redis failed: %s", who.label, e)
            return
        self._kick()

    async def succeeded(self, lease):
        """An answer went through: the 403 back-off starts over (an unhealthy mark stays: only
        a re-check lifts it, see ``MemoryPool.succeeded``)."""
        try:
            await self.client.hdel(self.prefix + ":forbidden", lease.ident)
        except RedisError:
            pass

    # -- seeing
    async def snapshot(self):
        p = self.prefix
        try:
            sec, micro = await self.client.time()
            now = sec * 1000 + micro // 1000
            pipe = self.client.pipeline(transaction=False)
            for account in self.accounts.values():
                pipe.zcount("%s:slots:%s" % (p, account.ident), now, "+inf")
            for name in ("bench", "why", "lasterr", "unhealthy", "served"):
                pipe.hgetall("%s:%s" % (p, name))
            pipe.lrange(p + ":handoffs", 0, -1)
            pipe.zcard(p + ":queue")
            got = await pipe.execute()
        except RedisError as e:
            raise unavailable(e) from None
        n = len(self.accounts)
        counts = got[:n]
        bench, why, lasterr, unhealthy, served = got[n:n + 5]
        rows = []
        for account, in_flight in zip(self.accounts.values(), counts, strict=True):
            ident = account.ident
            until = int(bench.get(ident, 0))
            models = {}
            for field, value in bench.items():
                if field.startswith(ident + "|") and int(value) > now:
                    models[field[len(ident) + 1:]] = {"until": int(value) / 1000, "why": why.get(field)}
            due = unhealthy.get(ident)
            rows.append(account_row(account, self.tokens, {
                "in_flight": in_flight, "queued": got[-1], "served": int(served.get(ident, 0)),
                "last_error": lasterr.get(ident),
                "unhealthy": due is not None, "recheck_at": int(due) / 1000 if due is not None else None,
                "benched_until": until / 1000 if until > now else None,
                "bench_why": why.get(ident) if until > now else None, "models": models}))
        return {"accounts": rows, "queued": got[-1], "backend": "redis",
                "handoff": self.handoff_stats([float(x) for x in got[-2]])}

    async def reload(self, accounts, access_keys):
        """Swap in new accounts and keys; everything in Redis is by account id, so a renamed
        account keeps its slots and a label given a new token starts clean (module docstring)."""
        self.access = AccessKeys(access_keys)
        self._set_accounts(accounts)
        self._kick()
