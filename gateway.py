"""The gateway's services for one process: settings, model table, upstream client, stream watch.

Handlers reach it as ``self.gateway``. It is built after ``fork_processes`` (pycurl handles
and the IOLoop must not be shared between processes) and holds no per-request state.
"""

import logging

from conf.models import ModelTable
from converters.render import MarkdownRenderer
from handlers.chat import StreamWatch
from upstream import UpstreamClient
from usage import TokenCounter

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, settings, models=None):
        self.settings = settings
        self.models = models or ModelTable(settings)
        self.upstream = UpstreamClient(settings)
        self.tokens = TokenCounter()
        self.watch = StreamWatch(settings.keepalive_interval, settings.upstream_idle_timeout)

    def start(self):
        self.watch.start()

    def close(self):
        self.watch.stop()
        self.upstream.close()

    def renderer(self):
        """A fresh renderer for one answer."""
        return MarkdownRenderer()

    async def prepare_messages(self, key, request, route):
        """The request's messages as the upstream should get them."""
        return request.messages

    async def perform(self, action, key, conversion):
        """Carry out a renderer's action (fetch an image) and return the text to show."""
        log.warning("no handler for action %r", action)
        return action.render(None)
