"""The gateway's services for one process: settings, model table, upstream client, stream watch.

Handlers reach it as ``self.gateway``. It is built after ``fork_processes`` (pycurl handles
and the IOLoop must not be shared between processes) and holds no per-request state.
"""

import logging
import time
import urllib.parse

from tornado.ioloop import IOLoop, PeriodicCallback

from pgw import gpts
from pgw.attachments import Attachments
from pgw.converters.render import BotRenderer, FetchImage, FetchSandboxFile, MarkdownRenderer
from pgw.runtime import StreamWatch, new_id
from pgw.logs import mask
from pgw.media import MediaStore
from pgw.upstream import UpstreamClient
from pgw.usage import TokenCounter

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, settings, models=None):
        self.settings = settings
        self.models = models or gpts.build_models(settings)
        self.upstream = UpstreamClient(settings)
        self.attachments = Attachments(settings, self.upstream)
        self.gizmos = gpts.GizmoStore(self.upstream, self.models, settings.key_for_gpts_info,
                                      settings.gpts_fetch_timeout)
        self.tokens = TokenCounter()
        self.watch = StreamWatch(settings.keepalive_interval, settings.upstream_idle_timeout)
        self.media = MediaStore(settings.images_dir)
        self._sweeper = None

    def start(self):
        self.watch.start()
        IOLoop.current().spawn_callback(self.gizmos.fetch_all)  # in the background: start-up stays fast
        max_age = self.settings.images_max_age_hours * 3600
        if max_age:
            # A sweep a tenth of the age apart (at most hourly): files outlive their age by 10% at most.
            self._sweeper = PeriodicCallback(self._sweep_media, min(max_age / 10, 3600) * 1000)
            self._sweeper.start()
            IOLoop.current().spawn_callback(self._sweep_media)

    def close(self):
        self.watch.stop()
        if self._sweeper is not None:
            self._sweeper.stop()
        self.upstream.close()

    async def _sweep_media(self):
        """Delete saved files older than IMAGES_MAX_AGE_HOURS, off the event loop: a directory of
        many thousands of files takes a while to list."""
        cutoff = time.time() - self.settings.images_max_age_hours * 3600
        try:
            removed = await IOLoop.current().run_in_executor(None, self.media.remove_older_than, cutoff)
        except OSError as e:
            log.warning("cleaning %s failed: %s", self.settings.images_dir, e)
            return
        if removed:
            log.info("removed %d saved files older than %g hours", removed, self.settings.images_max_age_hours)

    def renderer(self):
        """A fresh renderer for one answer: for bots (BOT_MODE) or for web UIs."""
        s = self.settings
        if s.bot_mode:
            return BotRenderer(plugin_output=s.bot_mode_enabled_plugin_output,
                               reference_output=s.bot_mode_enabled_bing_reference_output,
                               markdown_image=s.bot_mode_enabled_markdown_image_output,
                               plain_image_url=s.bot_mode_enabled_plain_image_url_output)
        return MarkdownRenderer()

    async def prepare_messages(self, key, request, route):
        """The request's messages as the upstream should get them: files fetched, checked, uploaded."""
        return await self.attachments.messages(key, request, route, new_id)

    async def gizmo(self, route):
        """For a GPT route, the gizmo object to send along, when known (else None)."""
        return await self.gizmos.gizmo(route)

    async def perform(self, action, key, conversion, public_base):
        """Carry out a renderer's action and return the text to show."""
        saved = await self.fetch(action, key, conversion)
        return action.render(self.public_url(public_base, saved[0]) if saved else None)

    async def fetch(self, action, key, conversion):
        """Fetch an image or sandbox file the answer shows: ``(saved name, bytes)`` or None.

        Two steps, as the upstream wants: a backend-api call (with the key) answers a
        short-lived ``download_url``; a plain GET of it (no Authorization) gives the bytes.
        Failures (refused, unreachable, a malformed URL, a full disk) are logged; the answer
        then shows a short notice instead.
        """
        try:
            return await self._fetch(action, key, conversion)
        except Exception:
            log.exception("fetching %r failed", action)
            return None

    @staticmethod
    def public_url(public_base, name):
        """Where clients fetch a saved file (see handlers/images.py)."""
        return "%s/images/%s" % (public_base, name)

    async def _fetch(self, action, key, conversion):
        t = type(action)
        if t is FetchImage:
            what = action.image.file_id
            url, reason = await self.upstream.download_url(key, "files/%s/download" % urllib.parse.quote(what, safe=""))
        elif t is FetchSandboxFile:
            what = action.file.path
            cid = conversion.conversation_id
            if not cid:
                log.warning("sandbox file %s: no conversation id to fetch it with", what)
                return None
            url, reason = await self.upstream.download_url(
                key, "conversation/%s/interpreter/download" % urllib.parse.quote(cid, safe=""),
                message_id=action.file.message_id, sandbox_path=what)
        else:
            log.warning("no handler for action %r", action)
            return None
        if url is None:
            log.warning("download of %s for key %s refused: %s", what, mask(key), reason)
            return None
        got = await self.upstream.fetch_url(url)
        data = bytes(got.body)
        if got.status != 200 or not data:
            log.warning("download of %s failed: HTTP %s%s", what, got.status,
                        " (larger than the download limit)" if got.too_big else "")
            return None
        name = self.media.save_image(data) if t is FetchImage else self.media.save_file(what, data)
        if name is None:
            log.warning("download of %s did not give an image (%d bytes)", what, len(data))
            return None
        return name, data
