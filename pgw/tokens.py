"""Refresh tokens and access-token expiry: the one place that knows the OAuth2 refresh grant.

An account given by its refresh token is answered with an access token exchanged through the
refresh-token grant (``POST REFRESH_URL`` with ``REFRESH_CLIENT_ID``; the defaults are the
ChatGPT iOS app's, as public peers use them). The access token is a JWT whose ``exp`` claim is
read without verifying (it is ours to use, not to trust); it is cached until ``REFRESH_AHEAD``
seconds before ``exp`` and refreshed ahead of time in the background; a 401 forces one refresh.
A rotated refresh token (the answer carries a new one) replaces the old one. The cache survives
restarts: in Redis when configured, else in ``DATA_DIR/tokens.json`` with mode 0600.

Entries are keyed by a hash of the refresh token the operator (or a client) gave, never by the
token itself, so the key of an entry is safe to log.
"""

import asyncio
import base64
import hashlib
import json
import logging
import os
import time

import ujson
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

from pgw.logs import mask

log = logging.getLogger("gateway.tokens")

# An access token with no readable exp is used for this long before it is refreshed again.
UNKNOWN_LIFETIME = 3600.0
# Waiting for another process's exchange (Redis): 50 x 0.1 s, beyond the exchange's own timeout.
LOCK_WAIT_STEPS = 50
LOCK_WAIT_STEP = 0.1
LOCK_TTL_MS = 40000


class TokenError(Exception):
    """A refresh token could not be exchanged; the message says why (never the token)."""


def jwt_exp(token):
    """The ``exp`` claim (Unix time) of a JWT, read without verifying; None if not a JWT."""
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def looks_like_refresh_token(key):
    """A client key that is a refresh token rather than an access token or a share/fk key:
    not a JWT, no known key prefix, no comma (team keys), 30-200 URL-safe characters."""
    if not 30 <= len(key) <= 200 or key.startswith(("eyJ", "fk-", "pk-", "sk-")) or key.count(".") >= 2:
        return False
    return all(c.isalnum() or c in "-_" for c in key)


def entry_id(refresh_token):
    return hashlib.sha256(refresh_token.encode()).hexdigest()[:32]


class FileStore:
    """The token cache as a JSON file (mode 0600), rewritten atomically on every change."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "tokens.json")

    async def load(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("token cache %s unreadable, starting empty: %s", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    async def get(self, eid):
        return (await self.load()).get(eid)

    async def put(self, eid, entry):
        data = await self.load()
        data[eid] = entry
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".%d.tmp" % os.getpid()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)


class Tokens:
    """Access tokens for refresh tokens: cached, refreshed ahead of time, one exchange at a time
    per refresh token (concurrent askers share it)."""

    def __init__(self, settings, http, store):
        self.settings = settings
        self.http = http            # a CancellableCurlClient (pgw.upstream): fetch_any
        self.store = store
        self.entries = {}           # entry id -> {"access_token", "exp", "refresh_token"}
        self._inflight = {}         # entry id -> Future
        self._timer = None

    def start(self):
        self._timer = PeriodicCallback(self._refresh_due, 60 * 1000)
        self._timer.start()

    def stop(self):
        if self._timer is not None:
            self._timer.stop()

    def expiry(self, account):
        """Unix time the account's access token expires (None: unknown)."""
        if account.kind == "refresh_token":
            entry = self.entries.get(entry_id(account.token))
            return entry.get("exp") if entry else None
        return jwt_exp(account.token)

    async def access_token(self, refresh_token, force=False):
        """A valid access token for ``refresh_token`` (``force``: a fresh one, after a 401)."""
        eid = entry_id(refresh_token)
        entry = self.entries.get(eid)
        if entry is None:
            entry = await self._stored(eid)
            if entry:
                self.entries[eid] = entry
        if entry and not force and entry["exp"] - self.settings.refresh_ahead > time.time():
            return entry["access_token"]
        pending = self._inflight.get(eid)
        if pending is None:
            stale = entry["access_token"] if entry else None
            pending = self._inflight[eid] = asyncio.ensure_future(self._renew(eid, refresh_token, stale))
            pending.add_done_callback(lambda _f: self._inflight.pop(eid, None))
        return await asyncio.shield(pending)

    async def _stored(self, eid):
        """The store's entry, or None (also when the store cannot be read: it is a saving)."""
        if self.store is None:
            return None
        try:
            return await self.store.get(eid)
        except Exception as e:
            log.warning("reading the token cache failed: %s", e)
            return None

    async def _renew(self, eid, given, stale):
        """A new access token instead of ``stale``. Another process sharing the store may have
        renewed it already (then its token, and its rotated refresh token, are used): the store
        is read again first, and with Redis one process at a time exchanges (a rotated refresh
        token works once, so two exchanging at once would lose one of them)."""
        lock = getattr(self.store, "lock", None)
        held = False
        for _ in range(LOCK_WAIT_STEPS):
            fresh = await self._stored(eid)
            if fresh and fresh.get("access_token") != stale and fresh["exp"] > time.time():
                self.entries[eid] = fresh
                return fresh["access_token"]
            if lock is None:
                break
            try:
                held = await lock(eid)
            except Exception:
                break  # no lock to be had (Redis away): exchange alone
            if held:
                break
            await asyncio.sleep(LOCK_WAIT_STEP)
        try:
            return await self._exchange(eid, given, (fresh or self.entries.get(eid)))
        finally:
            if held:
                try:
                    await self.store.unlock(eid)
                except Exception:
                    pass  # it expires by itself

    async def _exchange(self, eid, given, entry):
        current = (entry or {}).get("refresh_token") or given
        s = self.settings
        body = {"grant_type": "refresh_token", "client_id": s.refresh_client_id, "refresh_token": current,
                "redirect_uri": s.refresh_redirect_uri}
        response = await self.http.fetch_any(HTTPRequest(
            s.refresh_url, method="POST", body=ujson.dumps(body),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            connect_timeout=s.upstream_connect_timeout, request_timeout=30, follow_redirects=False))
        if response.code != 200:
            text = bytes(response.body or b"")[:200].decode("utf-8", "replace") if response.code != 599 \
                else str(response.error)
            raise TokenError("the token endpoint answered HTTP %s: %s" % (response.code, text))
        try:
            data = ujson.loads(response.body)
            token = data["access_token"]
            if not isinstance(token, str) or not token:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise TokenError("the token endpoint's answer has no access_token") from None
        exp = jwt_exp(token)
        if exp is None:
            lifetime = data.get("expires_in")
            exp = time.time() + (float(lifetime) if isinstance(lifetime, (int, float)) else UNKNOWN_LIFETIME)
        new = {"access_token": token, "exp": exp, "refresh_token": data.get("refresh_token") or current}
        self.entries[eid] = new
        if new["refresh_token"] != current:
            log.info("refresh token %s rotated; the new one is kept", eid[:8])
        if self.store is not None:
            try:
                await self.store.put(eid, new)
            except Exception as e:  # the cache is a saving, not a requirement
                log.warning("saving the token cache failed: %s", e)
        log.info("access token %s for refresh token %s, valid until %s", mask(token), eid[:8],
                 time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(exp)))
        return token

    async def _refresh_due(self):
        """Refresh, in the background, every cached token within REFRESH_AHEAD of its exp."""
        soon = time.time() + self.settings.refresh_ahead
        for eid, entry in list(self.entries.items()):
            if entry["exp"] <= soon and eid not in self._inflight:
                f = self._inflight[eid] = asyncio.ensure_future(
                    self._renew(eid, entry["refresh_token"], entry["access_token"]))
                f.add_done_callback(lambda _f, eid=eid: self._inflight.pop(eid, None))
                try:
                    await f
                except Exception as e:
                    log.warning("refreshing token %s ahead of time failed: %s", eid[:8], e)

    def warm(self, accounts):
        """Exchange every refresh-token account's token soon after start-up, in the background."""
        async def one(token):
            try:
                await self.access_token(token)
            except Exception as e:
                log.warning("refresh token %s: %s", entry_id(token)[:8], e)
        for a in accounts:
            if a.kind == "refresh_token":
                IOLoop.current().spawn_callback(one, a.token)
