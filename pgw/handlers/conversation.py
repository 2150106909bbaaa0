"""The base of endpoints answered by one upstream conversation (chat completions, images).

``ConversationHandler.converse`` starts the upstream transfer, waits until it accepts (its
error becomes ours), relays the converted answer through the runtime (``pgw.runtime``) into a
sink and finishes it; ``while_connected`` abandons preparation work when the client leaves.
"""

import asyncio
import logging

from tornado.ioloop import IOLoop

from pgw.converters.payload import conversation_payload
from pgw.converters.pipeline import Conversion
from pgw.errors import ApiError, from_upstream
from pgw.handlers.base import ClientGone, JsonBodyHandler
from pgw.logs import mask
from pgw.runtime import Relay, new_id

log = logging.getLogger("gateway.chat")


class ConversationHandler(JsonBodyHandler):
    """Base for endpoints answered by one upstream conversation (chat completions, images).

    A client may leave at any point: while its files are uploaded or a GPT's details fetched
    (``while_connected`` cancels that work), before the conversation starts (``converse`` does
    not start it), or during the answer (the upstream transfer is cancelled at once).
    """

    _gone = False
    _pending = None

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

    def payload(self, messages, route, gizmo=None):
        """The upstream request body, asking for the stream encoding the settings choose;
        ``gizmo``: a GPT's gizmo object when known (``Gateway.gizmo``)."""
        return conversation_payload(messages, route, new_id, self.gateway.settings.upstream_encoding, gizmo)

    async def converse(self, key, payload, sink, perform, prompt_messages, renderer=None):
        """Start the upstream transfer, wait until it accepts (its error becomes ours), relay the
        converted answer into ``sink`` and finish it. ``perform(action, conversion)`` carries out
        a renderer's action and returns its text; ``renderer`` defaults to the gateway's."""
        gw = self.gateway
        if self._gone:
            raise ClientGone()
        echo_ids = [m["id"] for m in payload["messages"]]  # the upstream may echo them back
        conversion = Conversion(renderer or gw.renderer(), gw.settings.upstream_encoding, echo_ids)
        relay = Relay(conversion, sink, lambda action: perform(action, conversion))
        transfer = gw.upstream.start_conversation(key, payload, relay.on_chunk)
        self._transfer, self._relay = transfer, relay
        gw.watch.add(relay, transfer)
        try:
            status = await transfer.accepted
            if status != 200:
                await transfer.done
                if self._relay.closed:
                    return
                if status is None:
                    raise ApiError(502, "the upstream could not be reached: %s" % transfer.failure,
                                   "upstream_error", "upstream_unreachable")
                raise from_upstream(status, bytes(transfer.error_body))
            sink.start()
            relay.begin()
            await transfer.done
            if relay.closed:
                return
            relay.finish_input()
            await relay.drained()
            reason, error = relay.conversion.outcome(cut=transfer.failure is not None)
            if error is not None:
                if transfer.failure:
                    error.message += " (%s)" % transfer.failure
                log.warning("answer for key %s failed: %s", mask(key), error.message)
                sink.fail(error)
            else:
                sink.finish(reason, prompt_messages)
        finally:
            gw.watch.discard(relay)
            for warning in relay.conversion.warnings:  # each kind once per stream
                log.warning("upstream stream for key %s: %s", mask(key), warning)
            cid = relay.conversion.conversation_id
            if cid and gw.settings.need_delete_conversation_after_response:
                IOLoop.current().add_callback(gw.upstream.hide_conversation, key, cid)

    def on_connection_close(self):
        self._gone = True
        if self._pending is not None:
            self._pending.cancel()
        relay = getattr(self, "_relay", None)
        if relay is not None and not relay.closed:
            relay.closed = True
            self._transfer.cancel("the client disconnected")
