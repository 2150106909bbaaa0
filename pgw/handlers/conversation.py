"""The base of endpoints answered by one upstream conversation (chat completions, images).

``ConversationHandler.converse`` runs one upstream conversation into a sink through the runtime
(``pgw.runtime.ConversationRun``): an upstream refusal becomes our error, the answer is relayed
as it comes; ``while_connected`` abandons preparation work when the client leaves.
"""

import asyncio
import contextlib
import functools
import logging

from tornado.ioloop import IOLoop

from pgw.converters.payload import conversation_payload
from pgw.errors import ApiError
from pgw.handlers.base import ClientGone, JsonBodyHandler
from pgw.runtime import ConversationRun, MediaDownloads, new_id
from pgw.tokens import TokenError, looks_like_refresh_token

log = logging.getLogger("gateway.http")


class ConversationHandler(JsonBodyHandler):
    """Base for endpoints answered by one upstream conversation (chat completions, images).

    A client may leave at any point: while its files are uploaded or a GPT's details fetched
    (``while_connected`` cancels that work), before the conversation starts (``converse`` does
    not start it), or during the answer (the upstream transfer is cancelled at once).
    """

    _gone = False
    _stop_error = None    # set at shutdown: the waits below end with it (``stop_waiting``)
    _pending: frozenset = frozenset()   # preparation and queue waits to cancel when the client leaves
    _run = None       # the conversation (the first, when several run: the images endpoint)
    _runs = ()

    async def while_connected(self, awaitable):
        """Await preparation work, abandoning it as soon as the client disconnects."""
        if self._gone:
            raise ClientGone()
        pending = asyncio.ensure_future(awaitable)
        with self._waiting(pending):
            return await pending

    def payload(self, messages, route, gizmo=None, hints=(), effort=None):
        """The upstream request body, asking for the stream encoding the settings choose;
        ``gizmo``: a GPT's gizmo object when known (``GizmoStore.gizmo``); ``hints``: the
        2025-2026 ``system_hints`` (``("picture_v2",)`` asks for the image tool); ``effort``:
        the client's ``reasoning_effort``."""
        return conversation_payload(messages, route, new_id, self.gateway.settings.upstream_encoding, gizmo, hints,
                                    effort)

    def downloads(self, key):
        """Fetching for one answer what it shows (images, files), linked at this gateway."""
        gw = self.gateway
        return MediaDownloads(gw.upstream, gw.media, key, self.public_base_url(), gw.saved_files)

    async def converse(self, key, payload, sink, downloads, prompt_messages, renderer=None, model=None):
        """Run the upstream conversation into ``sink`` (``pgw.runtime.ConversationRun``): an
        upstream refusal raises before anything was sent; ``renderer`` defaults to the settings'.

        ``payload`` is the request body, or an async function of the upstream key that builds it
        (files are uploaded to the account that answers). A client access key is served from
        the account pool (``converse_pooled``); any other key is forwarded as it is.
        """
        if self._gone:
            raise ClientGone()
        pool = self.gateway.pool
        if pool is not None and pool.is_access_key(key):
            return await self.converse_pooled(pool, payload, sink, downloads, prompt_messages, renderer, model)
        settings = self.gateway.settings
        if settings.access_keys_required:
            raise ApiError(401, "this gateway answers only its access keys (ACCESS_KEYS_REQUIRED)",
                           "invalid_request_error", "invalid_api_key")
        if settings.client_refresh_tokens and looks_like_refresh_token(key):
            try:
                key = await self.while_connected(self.gateway.access_tokens.access_token(key))
            except TokenError as e:
                raise ApiError(401, "your refresh token could not be exchanged: %s" % e,
                               "invalid_request_error", "invalid_api_key") from None
        downloads.key = key
        body = payload if isinstance(payload, dict) else await payload(key)
        await self._new_run(key, body, sink, downloads, prompt_messages, renderer).run()

    def _new_run(self, key, body, sink, downloads, prompt_messages, renderer):
        """A ``ConversationRun``, known to ``on_connection_close`` (the images endpoint runs
        several at once; a pooled request one per account it tries). ``_run`` is the first."""
        run = ConversationRun(self.gateway, key, body, sink, downloads, prompt_messages, renderer)
        self._runs = (*self._runs, run)
        if self._run is None:
            self._run = run
        return run

    async def converse_pooled(self, pool, payload, sink, downloads, prompt_messages, renderer, model):
        """Lease an account, answer through it, give it back; before the first answer byte a
        refusal benches the account (``pgw.pool.verdict``) and the next account is tried, at most
        RETRY_ATTEMPTS of them. Every lease is released in ``finally``: whatever happens (client
        gone, an error, a bug), no request holds an account after its response ended."""
        tried = set()
        last = None
        self.queued_s = 0.0
        try:
            while len(tried) < self.gateway.settings.retry_attempts:
                try:
                    lease = await self._lease(pool, model or "", frozenset(tried), sink)
                except ApiError as e:
                    if last is not None and e.code == "no_accounts":
                        raise last from None  # every account was tried: its refusal says why
                    raise
                self.account_label = lease.label
                self.queued_s += lease.queued_s
                try:
                    last = await self._answer_with(pool, lease, payload, sink, downloads, prompt_messages, renderer)
                finally:
                    await pool.release(lease)
                if last is None:
                    return
                tried.add(lease.ident)  # (the account's credentials: a reload may rename it meanwhile)
            raise last
        except ApiError as e:
            if sink.started:  # headers went out while queued: the error goes in the stream
                sink.fail(e)
                return
            raise

    async def _answer_with(self, pool, lease, payload, sink, downloads, prompt_messages, renderer):
        """One account's try: None when it answered; its refusal (an ``ApiError``) when another
        account should be tried; raises when none should. A 401 refreshes the token (when it
        can) and tries the same account once more."""
        refreshed = False
        while True:
            if self._gone:  # left in the instant its account was handed over
                raise ClientGone()
            pool.note_handoff(lease)  # (what the queue cost; file uploads are not its cost)
            lease.freed_at = None
            downloads.key = lease.key
            body = payload if isinstance(payload, dict) else await payload(lease.key)
            run = self._run = self._new_run(lease.key, body, sink, downloads, prompt_messages, renderer)
            run.on_upstream_done = functools.partial(pool.free, lease)  # before the response is finished
            try:  # (``_run``: the access log reports the account that answered, not one that refused)
                await run.run()
            except ApiError as e:
                if run.refused is None:
                    raise
                refusal = e.with_traceback(None)  # kept past this frame: no cycle through its traceback
            else:
                if run.refused is None:  # clears the account's trouble, off the answer's path
                    IOLoop.current().spawn_callback(pool.succeeded, lease)
                return None
            if self._gone:
                raise ClientGone()
            status, raw = run.refused
            if status == 401 and not refreshed and await pool.refresh_after_401(lease):
                refreshed = True
                continue  # the same account once more, with its new token
            v = await pool.refused(lease, status, raw)
            log.warning("account %s refused (HTTP %s): %s%s", lease.label, status, refusal.message,
                        "; trying another" if v.retry else "")
            if not v.retry:
                raise refusal
            return refusal

    async def _lease(self, pool, model, tried, sink):
        """Wait for a lease; a streaming client that waits KEEPALIVE_INTERVAL gets its headers
        and then keep-alives (web UIs stop their timers on headers). A client that leaves is out
        of the queue at once (``on_connection_close`` cancels the wait)."""
        if self._gone:
            raise ClientGone()
        interval = self.gateway.settings.keepalive_interval
        if sink.streaming and interval:  # a timer, not asyncio.wait: a grant wakes us one loop callback sooner
            self._queue_timer = IOLoop.current().call_later(interval, self._queued_keepalive, sink, interval)
        try:
            # The queue's wait is this coroutine's own (no task in between): ``_waiting`` cancels
            # it when the client leaves, and a grant resumes us in one loop callback.
            return await pool.acquire(model, tried, self._waiting)
        finally:
            if self._queue_timer is not None:
                IOLoop.current().remove_timeout(self._queue_timer)
                self._queue_timer = None

    _queue_timer = None

    def _queued_keepalive(self, sink, interval):
        """Every KEEPALIVE_INTERVAL in the queue: the headers first, then keep-alives."""
        if not sink.started:
            sink.start()
        else:
            sink.keepalive()
        self._queue_timer = IOLoop.current().call_later(interval, self._queued_keepalive, sink, interval)

    @contextlib.contextmanager
    def _waiting(self, future):
        """While inside: ``future`` is a wait of this request (files, a GPT's details, the
        account queue), cancelled when the client leaves (``ClientGone``) or at shutdown (the
        shutdown's error)."""
        self._pending = self._pending | {future}
        self.gateway.waiting.add(self)
        if self._gone or self._stop_error is not None:
            future.cancel()  # left (or shut down) while this wait was being set up: it ends at once
        try:
            yield
        except asyncio.CancelledError:
            if self._gone:
                raise ClientGone() from None
            if self._stop_error is not None:
                raise self._stop_error from None
            raise
        finally:
            self._pending = self._pending - {future}
            if not self._pending:
                self.gateway.waiting.discard(self)

    def stop_waiting(self, error):
        """Shutdown (``pgw.workers.graceful_stop``): end this request's waits with ``error``; a
        queued stream that already has its headers ends with it as an error event and [DONE]."""
        self._stop_error = error
        for pending in self._pending:
            pending.cancel()

    def log_request(self):
        """The access line (it names the run's account and upstream status), then the request
        lets go of its runs: nothing is left to cancel, and handler and runs are freed by
        reference counting rather than as a cycle for the garbage collector."""
        super().log_request()
        self._run, self._runs = None, ()

    def on_connection_close(self):
        self._gone = True
        for pending in self._pending:
            pending.cancel()
        for run in self._runs:
            run.cancel("the client disconnected")
