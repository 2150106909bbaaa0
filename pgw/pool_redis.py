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
  freed, µs);
- ``grants``: waiter id -> "account handoff-µs", accounts handed to waiting requests (kept with the lease);
- ``handoffs``: list, the last handoff times; ``freed``: the channel grants are published on;
- ``tokens`` and ``tokens:lock:<entry>``: the refresh-token cache (``RedisTokenStore``).

Every account slot is a lease: a member of ``slots:<id>`` scored by its expiry, renewed by its
holder every third of ``LEASE_TTL`` while the answer streams, so a killed process frees its
accounts within ``LEASE_TTL``. Waiters are members of ``queue`` scored by a ticket from one
counter (arrival order across machines), with a heartbeat in ``beat``: a waiter whose process
died drops out of the queue.

Every script that can free or hand out an account serves the queue itself (``dispatch`` in
``COMMON``): ``ACQUIRE`` (a request arrives or retries), ``RELEASE`` (an answer ended),
``LEAVE`` (a waiter gave up) and ``CLEAR`` (an account is back). Each is one Lua script, so
it is atomic: in queue order, every waiter that some free account can serve is given one (a
lease under the waiter's id, and a record in ``grants``), and the grant is published on
``<prefix>:freed`` as ``g <waiter> <account> <handoff µs>``. The waiter's process takes it from
the script's answer (its own release) or from the message, and the request goes on: a handover
costs the release's round trip, whichever process or machine the next waiter is in (it used to
be the release, a "freed" message, then the waiter's own ACQUIRE). A grant whose message is
lost is found by the waiter's next ACQUIRE (every process retries its queue twice a second,
which also serves benches that ended); a grant to a waiter that left in that instant goes back
(``LEAVE``, or the process that knows it left). A grant record lives as long as its lease. Times
are Redis's own (``TIME``), so machines with skewed clocks agree. Redis unreachable: requests
get a clear 503 at once (short socket timeouts), waiters are failed, and everything works again
when it is back.

An unhealthy account (its field in ``unhealthy``) is handed to nobody. Every process looks for
re-checks that are due every RECHECK_SWEEP seconds; ``CLAIM`` gives each due one to a single
process, atomically, by moving its due time UNHEALTHY_RECHECK on (a process that dies while
re-checking only delays the next one). A re-check that finds the token accepted deletes the
field and serves the queue (``CLEAR``), so every process's waiters may take the account at once.
"""

import asyncio
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

# Redis's own time (every machine agrees on it): ``now`` in ms, ``now_us`` in µs.
CLOCK = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
"""

# What every script that hands out accounts shares: the time, the accounts the caller's process
# lists (``accounts(at)``: ARGV[at] is their number, then id, limit pairs), what rests, and
# ``dispatch``, which serves the queue in order. ``made`` collects the grants a script makes for
# the caller to return.
COMMON = CLOCK + """
local p = ARGV[1]
local q, beats, meta, bench, grants = p .. ':queue', p .. ':beat', p .. ':wmeta', p .. ':bench', p .. ':grants'
local ids, limits, free, total, made = {}, {}, {}, 0, {}
local function accounts(at)
  for i = 1, tonumber(ARGV[at]) do
    local l = ARGV[at - 1 + 2 * i]
    ids[i], limits[i] = l, tonumber(ARGV[at + 2 * i])
    local key = p .. ':slots:' .. l
    -- a lease that ran out goes, and with it the grant it came from (a grant lives with its slot)
    for _, gone in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do redis.call('HDEL', grants, gone) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    free[i] = limits[i] - redis.call('ZCARD', key)
    if free[i] > 0 then total = total + free[i] end
  end
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
local function out(w) redis.call('ZREM', q, w); redis.call('ZREM', beats, w); redis.call('HDEL', meta, w) end
local function sweep()  -- waiters whose process died (no heartbeat) leave the queue
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', beats, '-inf', now)) do out(d) end
end
local function choose(m, ex)  -- least busy, then least recently handed out
  local best, bestbusy, bestlast = nil, 0, 0
  for i = 1, #ids do
    if free[i] > 0 and not excluded(ex, ids[i]) and rest(ids[i], m) <= 0 then
      local busy = limits[i] - free[i]
      local last = tonumber(redis.call('HGET', p .. ':last', ids[i]) or '0')
      if best == nil or busy < bestbusy or (busy == bestbusy and last < bestlast) then
        best, bestbusy, bestlast = i, busy, last
      end
    end
  end
  return best
end
-- Every waiter, in queue order, that some free account can serve is given one: a slot leased
-- to it (slot id = waiter id), a grant record, and a message on the freed channel that its
-- process acts on at once. Returns the grant of `caller` (not announced: the reply carries it).
-- A grant's lease first lives only `claim` ms (a heartbeat's time): the waiter's process
-- renews it to `ttl` when it takes the grant, and a process that died meanwhile holds the
-- account no longer than its waiter would have held up the queue.
local function dispatch(ttl, claim, caller)
  if total <= 0 then return nil end
  local mine = nil
  for _, w in ipairs(redis.call('ZRANGE', q, 0, -1)) do
    local mt = redis.call('HGET', meta, w)
    if mt then
      local cut = string.find(mt, '\\n', 1, true)
      local i = choose(string.sub(mt, 1, cut - 1), string.sub(mt, cut + 1))
      if i then
        local l = ids[i]
        redis.call('ZADD', p .. ':slots:' .. l, now + (w == caller and ttl or claim), w)
        redis.call('HSET', p .. ':last', l, now)
        redis.call('HINCRBY', p .. ':served', l, 1)
        out(w)
        free[i] = free[i] - 1
        total = total - 1
        local freed = redis.call('HGET', p .. ':freedat', l)
        local handoff = freed and tostring(now_us - tonumber(freed)) or '-1'
        if w == caller then
          mine = {l, handoff}
        else
          redis.call('HSET', grants, w, l .. ' ' .. handoff)
          redis.call('PUBLISH', p .. ':freed', 'g ' .. w .. ' ' .. l .. ' ' .. handoff)
          made[#made + 1] = w; made[#made + 1] = l; made[#made + 1] = handoff
        end
        if total <= 0 then break end
      end
    end
  end
  return mine
end
"""

# ARGV: prefix, waiter id, model, excluded ids (",a,b,"), lease ttl ms, heartbeat ms, queue
# limit, then accounts. Enters the waiter (a ticket from one counter: arrival order across
# machines), serves the queue, and answers for the waiter: ok (account, handoff µs; -1: it did
# not wait), wait (its ticket), benched (ms until the soonest return; -1: no account at all) or full.
ACQUIRE = COMMON + """
local id, model, exclude = ARGV[2], ARGV[3], ARGV[4]
local ttl, beat, qmax = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
accounts(8)
local granted = redis.call('HGET', grants, id)
if granted then  -- given an account while its process did not hear of it (a lost message)
  local cut = string.find(granted, ' ', 1, true)
  local l = string.sub(granted, 1, cut - 1)
  redis.call('ZADD', p .. ':slots:' .. l, 'XX', now + ttl, id)  -- taken now: the full lease
  return {'ok', l, string.sub(granted, cut + 1)}
end
sweep()
local soonest = -1
for i = 1, #ids do
  local r = rest(ids[i], model)
  if r <= 0 then
    if not excluded(exclude, ids[i]) then soonest = 0; break end
  elseif soonest < 0 or r < soonest then soonest = r end
end
if soonest ~= 0 then
  out(id)
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
local mine = dispatch(ttl, beat, id)
if mine then
  if not waited then mine[2] = '-1' end
  return {'ok', mine[1], mine[2]}
end
return {'wait', redis.call('ZSCORE', q, id)}
"""

# ARGV: prefix, account id, slot id, lease ttl ms, heartbeat ms, then accounts: give the slot
# back, note when (handoff times), serve the queue; returns the grants made (waiter, account,
# handoff µs, ...).
RELEASE = COMMON + """
local l, slot, ttl, beat = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('ZREM', p .. ':slots:' .. l, slot) == 1 then redis.call('HSET', p .. ':freedat', l, now_us) end
redis.call('HDEL', grants, slot)
accounts(6)
sweep()
dispatch(ttl, beat, nil)
return made
"""

# ARGV: prefix, waiter id, lease ttl ms, heartbeat ms, then accounts: the waiter leaves the
# queue; an account granted to it in that instant goes back and to the next waiter. Returns the
# grants made.
LEAVE = COMMON + """
local w, ttl, beat = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
out(w)
local granted = redis.call('HGET', grants, w)
if granted then
  redis.call('ZREM', p .. ':slots:' .. string.sub(granted, 1, string.find(granted, ' ', 1, true) - 1), w)
  redis.call('HDEL', grants, w)
  accounts(5)
  sweep()
  dispatch(ttl, beat, nil)
end
return made
"""

# ARGV: prefix, ttl ms, heartbeat ms, then account id, slot id pairs (slots to renew), '--', waiter ids
RENEW = CLOCK + """

local p, ttl, beat = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
while ARGV[i] ~= '--' do
  redis.call('ZADD', p .. ':slots:' .. ARGV[i], 'XX', now + ttl, ARGV[i + 1])
  i = i + 2
end
for j = i + 1, #ARGV do redis.call('ZADD', p .. ':beat', 'XX', now + beat, ARGV[j]) end
return now
"""

# ARGV: prefix, lease ttl ms, waiter ids. For each waiter: its grant ("account handoff-µs"; the
# lease is renewed to ttl, as it is taken now) when it has one, "q" while it waits in the queue,
# "" when it is in neither (its heartbeat lapsed, or a grant's short lease ran out unheard).
POLL = CLOCK + """

local p, ttl = ARGV[1], tonumber(ARGV[2])
local found = {}
for i = 3, #ARGV do
  local w = ARGV[i]
  local granted = redis.call('HGET', p .. ':grants', w)
  if granted then
    local l = string.sub(granted, 1, string.find(granted, ' ', 1, true) - 1)
    redis.call('ZADD', p .. ':slots:' .. l, 'XX', now + ttl, w)
    found[#found + 1] = granted
  elseif redis.call('ZSCORE', p .. ':queue', w) then
    found[#found + 1] = 'q'
  else
    found[#found + 1] = ''
  end
end
return found
"""

# ARGV: prefix, account id, field (id or id|model), seconds, why, unhealthy (0/1), forbidden (0/1).
# An account already unhealthy keeps its re-check's due time (HSETNX).
MARK = CLOCK + """

local p, l, f, sec, why = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
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
CLAIM = CLOCK + """

local p, every = ARGV[1], tonumber(ARGV[2])
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

# ARGV: prefix, account id, lease ttl ms, heartbeat ms, then accounts: lift its bench and
# unhealthy mark, and serve the queue (every process's waiters may take the account at once).
# Returns the grants made.
CLEAR = COMMON + """
local l, ttl, beat = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HDEL', bench, l)
redis.call('HDEL', p .. ':unhealthy', l)
accounts(5)
sweep()
dispatch(ttl, beat, nil)
return made
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
    __slots__ = ("id", "future", "model", "exclude", "since", "ticket", "freed_at", "trying")

    def __init__(self, model, exclude):
        self.id = uuid.uuid4().hex
        self.future = asyncio.get_running_loop().create_future()
        self.model = model
        self.exclude = "," + ",".join(sorted(exclude)) + ","
        self.since = time.monotonic()
        self.ticket = 0   # place in the shared queue
        self.freed_at = None  # when (our clock) the account it was given became free
        self.trying = False   # an ACQUIRE of its own is in flight (never two at once: see _try)


class RedisPool(AccountPool):
    def __init__(self, settings, accounts, access_keys, tokens, client, upstream=None):
        super().__init__(settings, accounts, access_keys, tokens, upstream)
        self.client = client
        self.prefix = settings.redis_prefix
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._mark = client.register_script(MARK)
        self._release = client.register_script(RELEASE)
        self._leave_script = client.register_script(LEAVE)
        self._check = client.register_script(POLL)
        self._claim = client.register_script(CLAIM)
        self._clear = client.register_script(CLEAR)
        self.waiters = {}          # this process's waiters in the shared queue, by id, in arrival order
        self._left = {}            # ids of waiters that left lately -> when (a grant to one goes back)
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

    def _accounts_args(self, accounts=None):
        """Lease time, heartbeat time and the accounts this process lists (every script that
        serves the queue takes them: Redis knows accounts only by id)."""
        if accounts is None:
            try:
                accounts = self.usable()
            except ApiError:
                accounts = {}
        args = [int(self.settings.lease_ttl * 1000), int(BEAT_TTL * 1000), len(accounts)]
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
        # Known before its first ACQUIRE: a grant another process makes in the instant after it
        # entered the queue may reach us before that ACQUIRE's answer does.
        self.waiters[waiter.id] = waiter
        try:
            outcome = await self._try(waiter)
        except BaseException:  # cancelled while Redis answered: out of the queue; a grant goes back
            self._leave(waiter)
            raise
        if outcome == "ok":
            return await self.lease_key(waiter.future.result(), model, 0.0, waiter.id)
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

    async def _try(self, waiter):
        """One ACQUIRE for ``waiter``: "ok" (its future holds the account id), "wait", or a refusal
        set on its future ("benched", "full", "error"). Whatever the ACQUIRE granted to other
        waiters they hear of on the freed channel. Never two at once for one waiter (a second
        would enter it into the queue again after the first took it out, and lease it a second
        account): the retry loop and the poll skip a waiter whose ACQUIRE is in flight."""
        waiter.trying = True
        try:
            return await self._acquire_once(waiter)
        finally:
            waiter.trying = False

    async def _acquire_once(self, waiter):
        s = self.settings
        try:
            ttl, beat, *accounts = self._accounts_args(self.usable())
        except ApiError as e:  # every account's token has expired
            self._drop(waiter)
            self._fail(waiter, e)
            return "error"
        args = [self.prefix, waiter.id, waiter.model, waiter.exclude, ttl, beat, s.queue_max, *accounts]
        call = asyncio.ensure_future(self._acquire(args=args))
        try:
            kind, value, *more = await asyncio.shield(call)
        except asyncio.CancelledError:
            # the caller left while Redis answered: a slot it was given goes back
            call.add_done_callback(lambda f: self._undo(f, waiter))
            raise
        except RedisError as e:
            self._drop(waiter)
            self._fail(waiter, unavailable(e))
            return "error"
        if kind == "ok":
            self._granted(waiter.id, value, more[0] if more else "-1", claimed=True)
            return "ok" if waiter.future.done() and not waiter.future.cancelled() \
                and waiter.future.exception() is None else "wait"
        if kind == "wait":
            waiter.ticket = int(float(value))
            return "wait"
        self._drop(waiter)
        if kind == "benched":
            seconds = float(value) / 1000
            self._fail(waiter, all_benched_error(seconds, waiter.model) if seconds >= 0 else no_accounts_error())
        else:
            self._fail(waiter, queue_full_error(s.queue_max))
        return kind

    def _granted(self, wid, ident, handoff, claimed=False):
        """Redis gave account ``ident`` to waiter ``wid`` (an ACQUIRE's answer, a script's list of
        grants, or a message on the freed channel: whichever comes first). Ours and waiting: its
        request goes on now, and the lease (granted for a heartbeat's time unless ``claimed``: the
        waiter's own ACQUIRE) is renewed to LEASE_TTL off its path. Ours but gone in that
        instant: the account goes back."""
        waiter = self.waiters.pop(wid, None)
        if waiter is None:
            if self._left.pop(wid, None) is not None:  # left while the grant was being made
                IOLoop.current().spawn_callback(self._release_slot, ident, wid)
            return  # another process's waiter, or one this grant already reached
        if ident not in self.by_ident and not waiter.future.done():
            # Another process still lists an account a reload here took out: back it goes, and
            # the waiter queues again, never to be given that account (its priority kept).
            IOLoop.current().spawn_callback(self._release_slot, ident, wid)
            waiter.exclude += ident + ","
            self.waiters[wid] = waiter
            IOLoop.current().spawn_callback(self._try, waiter)
            return
        self.held[wid] = ident
        handoff = float(handoff) / 1e6
        waiter.freed_at = time.monotonic() - handoff if handoff >= 0 else None
        if waiter.future.done():  # timed out or cancelled: its lease is not wanted
            IOLoop.current().spawn_callback(self._release_slot, ident, wid)
        else:
            waiter.future.set_result(ident)
            if not claimed:
                IOLoop.current().spawn_callback(self._renew_all, {wid: ident}, ())

    def _grants(self, made):
        """A script's list of grants (waiter, account, handoff, ...): ours go on at once."""
        for i in range(0, len(made), 3):
            self._granted(*made[i:i + 3])

    def _undo(self, future, waiter):
        """The caller left while ACQUIRE ran: a slot it was given goes back, and a place in the
        queue it was given is left at once (else it would hold up everyone behind it)."""
        if not future.cancelled() and future.exception() is None and future.result()[0] == "ok":
            self._granted(waiter.id, future.result()[1], "-1", claimed=True)  # (done: given back)
        else:
            IOLoop.current().spawn_callback(self._forget, waiter.id)

    def _fail(self, waiter, error):
        if not waiter.future.done():
            waiter.future.set_exception(error)
            waiter.future.exception()  # retrieved here if nobody awaits it any more

    def _kick(self):
        """Serve the shared queue again: our waiters' ACQUIREs, in order, until one must wait
        (each serves every process's waiters; one granted goes on from the answer)."""
        if self._kicking:
            self._again = True
            return
        self._kicking = True
        IOLoop.current().spawn_callback(self._kick_loop)

    async def _kick_loop(self):
        try:
            while True:
                self._again = False
                for waiter in list(self.waiters.values()):
                    if waiter.future.done() or waiter.trying:
                        continue
                    outcome = await self._try(waiter)
                    if outcome == "wait":
                        break  # (the others are behind it; each refusal fails its waiter at once)
                    f = waiter.future
                    if outcome == "error" and not f.cancelled():  # Redis away (or every token
                        self._fail_all(f.exception())  # expired): all of ours now, not a timeout each
                        break
                if not self._again:
                    return
        finally:
            self._kicking = False

    def _drop(self, waiter):
        self.waiters.pop(waiter.id, None)

    def _fail_all(self, error):
        for waiter in list(self.waiters.values()):
            if not waiter.future.done() and not waiter.trying:
                self._drop(waiter)
                self._fail(waiter, error)
                IOLoop.current().spawn_callback(self._forget, waiter.id)

    def _expire(self, waiter):
        """QUEUE_TIMEOUT has passed for ``waiter``: a 429, and out of the queue here and in Redis
        (a slot granted to it now goes back: ``_granted`` and ``LEAVE``)."""
        if waiter.future.done():
            return
        timeout = self.settings.queue_timeout
        self._fail(waiter, queue_timeout_error(timeout, max(1, math.ceil(timeout / 4))))
        self._leave(waiter)

    def _leave(self, waiter):
        f = waiter.future
        if self.waiters.pop(waiter.id, None) is None:
            if f.done() and not f.cancelled() and f.exception() is None:
                IOLoop.current().spawn_callback(self._release_slot, f.result(), waiter.id)
            return  # granted already (given back above), or never queued
        if not f.done():
            f.cancel()
        self._left[waiter.id] = time.monotonic()
        IOLoop.current().spawn_callback(self._forget, waiter.id)

    async def _forget(self, wid):
        """Out of the shared queue (``LEAVE``): an account granted to it meanwhile goes on."""
        try:
            self._grants(await self._leave_script(args=[self.prefix, wid, *self._accounts_args()]))
        except RedisError:
            pass  # its heartbeat expires instead

    # -- giving back
    async def release(self, lease):
        if lease.released:
            return
        lease.released = True
        await self._release_slot(lease.ident, lease.token_id)

    async def _release_slot(self, ident, slot_id):
        """Give a slot back; ``RELEASE`` serves the queue in the same call, so the next waiter's
        account is decided in this one round trip, whichever process it waits in (ours go on
        from the answer, others' from the freed channel)."""
        self.held.pop(slot_id, None)
        try:
            self._grants(await self._release(args=[self.prefix, ident, slot_id, *self._accounts_args()]))
        except RedisError as e:
            log.warning("giving account %s back to Redis failed (its lease expires instead): %s",
                        self._name(ident), e)

    async def _renew_all(self, held=None, waiting=None):
        """Every lease we hold and every waiter's heartbeat (``held``, ``waiting``: just these)."""
        if held is None:
            since = time.monotonic() - 2 * BEAT_TTL
            for wid in [wid for wid, at in self._left.items() if at < since]:
                del self._left[wid]  # long out of the queue everywhere: no grant can come for it
            held = self.held
            waiting = [w.id for w in self.waiters.values() if not w.future.done()]
        if not held and not waiting:
            return
        s = self.settings
        args = [self.prefix, int(s.lease_ttl * 1000), int(BEAT_TTL * 1000)]
        for slot_id, ident in list(held.items()):
            args += [ident, slot_id]
        try:
            await self._renew(args=args + ["--", *waiting])
        except RedisError as e:
            log.warning("renewing %d account leases in Redis failed: %s", len(held), e)

    async def _poll(self):
        """Twice a second: our waiters' grants whose message was lost are taken (``POLL``), a
        waiter that fell out of the queue (a heartbeat that lapsed while this process was held
        up) enters it again, and the queue is served again (benches end)."""
        waiting = [w for w in self.waiters.values() if not w.future.done() and not w.trying]
        if not waiting:
            return
        try:
            found = await self._check(args=[self.prefix, int(self.settings.lease_ttl * 1000),
                                            *[w.id for w in waiting]])
        except RedisError:
            found = ["q"] * len(waiting)  # the retry below finds Redis away and says so
        for waiter, state in zip(waiting, found, strict=True):
            if state == "q" or waiter.future.done() or waiter.trying or waiter.id not in self.waiters:
                continue
            if state:
                ident, handoff = state.split(" ", 1)
                self._granted(waiter.id, ident, handoff, claimed=True)  # (POLL renewed its lease)
            else:
                IOLoop.current().spawn_callback(self._try, waiter)
        self._kick()

    async def _listen(self):
        """Grants to our waiters as they are made (``g <waiter> <account> <handoff µs>``);
        reconnect when Redis comes back."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.prefix + ":freed")
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and (self.waiters or self._left):
                        data = message["data"]
                        if isinstance(data, bytes):
                            data = data.decode()
                        if data.startswith("g "):
                            try:
                                self._granted(*data[2:].split(" "))
                            except Exception:  # a bug must not end the subscription
                                log.exception("taking a grant from Redis failed: %r", data)
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
            self._grants(await self._clear(args=[self.prefix, who.ident, *self._accounts_args()]))
        except RedisError as e:
            log.warning("clearing account %s in Redis failed: %s", who.label, e)

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
