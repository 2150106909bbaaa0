"""GPTs' details: the gizmo objects fetched for the GPTs of gpts.json (see ``pgw.conf.gpts``).

The gizmo objects (``GET backend-api/gizmos/{id}`` with
KEY_FOR_GPTS_INFO) are only nice to have (display names, the web client's
``conversation_mode.gizmo``), so they are fetched in the background after the server listens;
one that fails is logged and fetched again on the GPT's first use, never silently dropped.
Without KEY_FOR_GPTS_INFO the GPTs work with their ``gizmo_id`` alone.
"""

import asyncio
import logging
import time

from pgw.upstream import describe

log = logging.getLogger("gateway.gpts")

RETRY_AFTER = 60  # seconds between lazy retries of a GPT whose fetch keeps failing


class GizmoStore:
    """Gizmo objects by id, fetched with KEY_FOR_GPTS_INFO: all at start, lazily when that failed."""

    def __init__(self, upstream, models, key, timeout, clock=time.monotonic):
        self.upstream = upstream
        self.key = key
        self.timeout = timeout
        self.clock = clock
        self.routes = {}          # gizmo id -> [configured Route]
        for route in models.routes():
            if route.gizmo_id:
                self.routes.setdefault(route.gizmo_id, []).append(route)
        self.known = {}           # gizmo id -> gizmo object
        self._retry_at = {}       # gizmo id -> clock time before which no lazy retry is made
        self._inflight = {}       # gizmo id -> task

    async def fetch_all(self):
        """Fetch every configured GPT at once (run in the background after start-up)."""
        if self.key and self.routes:
            await asyncio.gather(*(self._fetch(gid) for gid in self.routes))
            log.info("GPTs: %d of %d fetched", len(self.known), len(self.routes))

    async def gizmo(self, route):
        """The gizmo object for a route's GPT if known or fetchable now, else None (gizmo_id alone)."""
        gid = route.gizmo_id
        if not gid:
            return None
        if gid in self.known or not self.key or gid not in self.routes:
            return self.known.get(gid)
        if gid in self._inflight or self.clock() >= self._retry_at.get(gid, 0):
            await self._fetch(gid)
        return self.known.get(gid)

    def _fetch(self, gid):
        task = self._inflight.get(gid)
        if task is None:
            task = self._inflight[gid] = asyncio.ensure_future(self._fetch_once(gid))
            task.add_done_callback(lambda _t: self._inflight.pop(gid, None))
        return asyncio.shield(task)

    async def _fetch_once(self, gid):
        try:
            status, data, raw = await self.upstream.call("GET", "gizmos/" + gid, self.key, timeout=self.timeout)
        except Exception as e:  # a bug must not keep the GPT from being used with its id
            status, data, raw = 0, None, repr(e).encode()
        gizmo = data.get("gizmo") if isinstance(data, dict) else None
        if status != 200 or not isinstance(gizmo, dict):
            first = gid not in self._retry_at
            self._retry_at[gid] = self.clock() + RETRY_AFTER if not first else 0
            log.warning("fetching GPT %s failed (%s); it is used with its id alone and fetched again %s",
                        gid, describe(status, raw),
                        "on first use" if first else "in %d s at the earliest" % RETRY_AFTER)
            return
        self.known[gid] = data
        name = (gizmo.get("display") or {}).get("name")
        for route in self.routes.get(gid, ()):
            route.display_name = name or route.display_name
