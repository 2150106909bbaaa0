"""``POST /v1/chat/completions``: one upstream conversation per request, stream or not.

The handler reads top to bottom: check the request, prepare its files, then converse (see
``pgw.handlers.conversation``) into a ``StreamSink`` or a ``CollectSink`` (``pgw.runtime``).
"""

import time
import uuid

from pgw.converters import openai_format
from pgw.converters.payload import RequestLimits, parse_chat_request
from pgw.handlers.conversation import ConversationHandler
from pgw.runtime import CollectSink, StreamSink, new_id


class ChatCompletionsHandler(ConversationHandler):
    async def post(self):
        gw = self.gateway
        key = self.api_key()
        request = parse_chat_request(self.json_body(), RequestLimits.of(gw.settings))
        route = gw.models.require(request.model)

        async def prepare(upstream_key):  # files go to the account that answers
            # (awaited only when there is something to wait for: each wait is a task of its own)
            messages = request.messages
            if request.files:
                messages = await self.while_connected(gw.attachments.messages(upstream_key, request, route, new_id))
            gizmo = await self.while_connected(gw.gizmos.gizmo(route)) if route.gizmo_id else None
            return self.payload(messages, route, gizmo, effort=request.reasoning_effort)

        encoder = openai_format.ChunkEncoder("chatcmpl-" + uuid.uuid4().hex[:29], int(time.time()), request.model)
        if request.stream:
            sink = StreamSink(self, encoder, request.include_usage, gw.tokens)
        else:
            sink = CollectSink(self, encoder, gw.tokens)
        await self.converse(key, prepare, sink, self.downloads(key), request.messages, model=route.slug)
