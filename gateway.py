"""The gateway's services for one process: settings, model table, upstream client, stream watch.

Handlers reach it as ``self.gateway``. It is built after ``fork_processes`` (pycurl handles
and the IOLoop must not be shared between processes) and holds no per-request state.
"""

import logging

from tornado.ioloop import IOLoop

import gpts
from attachments import Attachments
from converters.render import MarkdownRenderer
from handlers.chat import StreamWatch, new_id
from upstream import UpstreamClient
from usage import TokenCounter

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

    def start(self):
        self.watch.start()
        IOLoop.current().spawn_callback(self.gizmos.fetch_all)  # in the background: start-up stays fast

    def close(self):
        self.watch.stop()
        self.upstream.close()

    def renderer(self):
        """A fresh renderer for one answer."""
        return MarkdownRenderer()

    async def prepare_messages(self, key, request, route):
        """The request's messages as the upstream should get them: files fetched, checked, uploaded."""
        return await self.attachments.messages(key, request, route, new_id)

    async def gizmo(self, route):
        """For a GPT route, the gizmo object to send along, when known (else None)."""
        return await self.gizmos.gizmo(route)

    async def perform(self, action, key, conversion):
        """Carry out a renderer's action (fetch an image) and return the text to show."""
        log.warning("no handler for action %r", action)
        return action.render(None)
