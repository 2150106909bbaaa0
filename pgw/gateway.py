"""The gateway's services for one process: a plain container, built once per worker.

Handlers reach it as ``self.gateway`` and use its services directly: settings, the model
table, the upstream client, attachments, GPT details, token counter, stream watch, media
store, metrics and the upstream's health. It is built after ``fork_processes`` (pycurl handles
and the IOLoop must not be shared between processes) and holds no per-request state;
per-answer work lives in ``pgw.runtime``.
"""

import logging
import time

from tornado.ioloop import IOLoop, PeriodicCallback

from pgw import pool as account_pool
from pgw.conf import gpts
from pgw.conf.settings import SettingsError
from pgw.gizmos import GizmoStore
from pgw.attachments import Attachments
from pgw.media import MediaStore
from pgw.metrics import Metrics
from pgw.runtime import SavedFiles, StreamWatch
from pgw.tokens import FileStore, Tokens
from pgw.upstream import UpstreamClient, UpstreamHealth
from pgw.urlguard import download_guard
from pgw.usage import TokenCounter

log = logging.getLogger("gateway")


class Gateway:
    stopping = False  # set by pgw.workers.graceful_stop: /healthz then says so

    def __init__(self, settings, models=None):
        self.settings = settings
        self.models = models or gpts.build_models(settings)
        self.upstream = UpstreamClient(settings)
        self.upstream.guard_downloads(download_guard(settings, self.upstream))  # pgw/urlguard.py
        self.attachments = Attachments(settings, self.upstream)
        self.gizmos = GizmoStore(self.upstream, self.models, settings.key_for_gpts_info,
                                      settings.gpts_fetch_timeout)
        self.tokens = TokenCounter()
        self.watch = StreamWatch(settings.keepalive_interval, settings.upstream_idle_timeout,
                                  settings.write_timeout)
        self.media = MediaStore(settings.images_dir)
        self.waiting: set = set()  # handlers waiting for files or an account (ended at shutdown)
        self.saved_files = SavedFiles()  # upstream files saved by this process: none saved twice
        self.metrics = Metrics() if settings.metrics_enabled else None
        self.watch.metrics = self.metrics
        self.upstream_health = UpstreamHealth(self.upstream)
        self._sweeper = None
        self.redis = None
        self.access_tokens, self.pool = self._account_pool(settings)

    def _account_pool(self, settings):
        """The account pool (``pgw.pool``): in memory, or in Redis with REDIS_URL."""
        try:
            accounts, access_keys = account_pool.load_accounts(settings)
        except account_pool.AccountsError as e:
            raise SettingsError(str(e)) from None
        if settings.redis_url:
            from pgw import pool_redis
            self.redis = pool_redis.connect(settings)
            tokens = Tokens(settings, self.upstream.http, pool_redis.RedisTokenStore(self.redis, settings))
            return tokens, pool_redis.RedisPool(settings, accounts, access_keys, tokens, self.redis, self.upstream)
        tokens = Tokens(settings, self.upstream.http, FileStore(settings.data_dir))
        return tokens, account_pool.MemoryPool(settings, accounts, access_keys, tokens, self.upstream)

    async def _fetch_gizmos(self):
        """GPTs' details, fetched with KEY_FOR_GPTS_INFO; when that is one of the pool's access
        keys, with the first account's upstream key instead (an access key means nothing upstream)."""
        key = self.settings.key_for_gpts_info
        if key and self.pool.is_access_key(key) and self.pool.accounts:
            account = next(iter(self.pool.accounts.values()))
            try:
                self.gizmos.key = await self.pool.key_for(account)
            except Exception as e:
                log.warning("GPTs' details: no upstream key from account %s: %s", account.label, e)
                return
        await self.gizmos.fetch_all()

    async def reload_accounts(self):
        """Re-read the accounts file and keys (SIGHUP, POST /admin/accounts/reload); streams in
        flight keep their leases. Raises ``AccountsError`` and keeps the old ones on a bad file."""
        accounts, access_keys = account_pool.load_accounts(self.settings)
        await self.pool.reload(accounts, access_keys)
        self.access_tokens.warm(accounts)
        log.info("accounts reloaded: %d accounts, %d access keys", len(accounts), len(access_keys))
        return len(accounts), len(access_keys)

    def start(self):
        self.watch.start()
        self.pool.start()
        self.access_tokens.start()
        self.access_tokens.warm(self.pool.accounts.values())
        IOLoop.current().spawn_callback(self._fetch_gizmos)  # in the background: start-up stays fast
        max_age = self.settings.images_max_age_hours * 3600
        budget = self.settings.images_max_total_mb
        if max_age or budget:
            # A sweep a tenth of the age apart (at most hourly): files outlive their age by 10% at
            # most; with a size budget every minute, so it is exceeded by a minute's saves at most.
            every = min(max_age / 10 if max_age else 3600, 60 if budget else 3600)
            self._sweeper = PeriodicCallback(self._sweep_media, every * 1000)
            self._sweeper.start()
            IOLoop.current().spawn_callback(self._sweep_media)

    def close(self):
        self.watch.stop()
        self.pool.close()
        self.access_tokens.stop()
        if self._sweeper is not None:
            self._sweeper.stop()
        self.upstream.close()

    async def _sweep_media(self):
        """Delete saved files older than IMAGES_MAX_AGE_HOURS, then the oldest beyond
        IMAGES_MAX_TOTAL_MB, off the event loop: a directory of many thousands of files takes a
        while to list."""
        hours, budget = self.settings.images_max_age_hours, self.settings.images_max_total_mb
        cutoff = time.time() - hours * 3600 if hours else None
        max_bytes = int(budget * 1024 * 1024) if budget else None
        try:
            removed = await IOLoop.current().run_in_executor(None, self.media.sweep, cutoff, max_bytes)
        except OSError as e:
            log.warning("cleaning %s failed: %s", self.settings.images_dir, e)
            return
        if removed:
            log.info("removed %d saved files (older than %g hours or beyond %g MB)", removed, hours, budget)
