"""The base of endpoints answered by one upstream conversation (chat completions, images).

``ConversationHandler.converse`` runs one upstream conversation into a sink through the runtime
(``pgw.runtime.ConversationRun``): an upstream refusal becomes our error, the answer is relayed
as it comes; ``while_connected`` abandons preparation work when the client leaves.
"""

import asyncio

from pgw.converters.payload import conversation_payload
from pgw.handlers.base import ClientGone, JsonBodyHandler
from pgw.runtime import ConversationRun, MediaDownloads, new_id


class ConversationHandler(JsonBodyHandler):
    """Base for endpoints answered by one upstream conversation (chat completions, images).

    A client may leave at any point: while its files are uploaded or a GPT's details fetched
    (``while_connected`` cancels that work), before the conversation starts (``converse`` does
    not start it), or during the answer (the upstream transfer is cancelled at once).
    """

    _gone = False
    _pending = None
    _run = None

    async def while_connected(self, awaitable):
        """Await preparation work, abandoning it as soon as the client disconnects."""
        if self._gone:
            raise ClientGone()
        self._pending = asyncio.ensure_future(awaitable)
        try:
            return await self._pending
        except asyncio.CancelledError:
            if self._gone:
                raise ClientGone() from None
            raise
        finally:
            self._pending = None

    def payload(self, messages, route, gizmo=None, hints=(), effort=None):
        """The upstream request body, asking for the stream encoding the settings choose;
        ``gizmo``: a GPT's gizmo object when known (``GizmoStore.gizmo``); ``hints``: the
        2025-2026 ``system_hints`` (``("picture_v2",)`` asks for the image tool); ``effort``:
        the client's ``reasoning_effort``."""
        return conversation_payload(messages, route, new_id, self.gateway.settings.upstream_encoding, gizmo, hints,
                                    effort)

    def downloads(self, key):
        """Fetching for one answer what it shows (images, files), linked at this gateway."""
        return MediaDownloads(self.gateway.upstream, self.gateway.media, key, self.public_base_url())

    async def converse(self, key, payload, sink, downloads, prompt_messages, renderer=None):
        """Run the upstream conversation into ``sink`` (``pgw.runtime.ConversationRun``): an
        upstream refusal raises before anything was sent; ``renderer`` defaults to the settings'."""
        if self._gone:
            raise ClientGone()
        self._run = ConversationRun(self.gateway, key, payload, sink, downloads, prompt_messages, renderer)
        await self._run.run()

    def on_connection_close(self):
        self._gone = True
        if self._pending is not None:
            self._pending.cancel()
        if self._run is not None:
            self._run.cancel("the client disconnected")
