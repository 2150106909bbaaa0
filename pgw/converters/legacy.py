"""The late-2023 dialect: every event carries the whole message so far.

This stage reads those snapshots and calls the answer stage about what changed (``start``,
``text``, ``update``, ``end``, ``error``, ``moderation``, ``done``). It is also the one place
that reads what both dialects share: typed frames and root objects (``payload``), and the rule
for a message's text (``passed_on``). Keep-alive pings, title events and non-JSON data are
absorbed here so that nothing downstream sees them.

The text rule, for both dialects: ``Message.sent`` is how much of the message's text the client
has; after each change, the text past it is passed on. The text of a message normally only
grows, so the new text of a snapshot is the part past what was already passed on: one slice, no
scan of the text already sent. What the client has cannot be unsent: when the upstream takes
text back, the client keeps it, the log gets a note, and the text added later is passed on from
the new end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ujson

from pgw.converters.events import DONE, AnswerStage, Message, Warnings, content_text, read_event

if TYPE_CHECKING:
    from pgw.converters.sse import Event

# Typed frames that say nothing the answer needs (docs/upstream.md, "The stream: three forms", 3).
IGNORED = frozenset((
    "input_message", "message_marker", "title_generation", "server_ste_metadata", "conversation_detail_metadata",
    "url_moderation", "safety_review_update", "conversation_async_status", "num_variants_in_stream", "moderation",
))


class LegacyDialect:
    """``answer``: the answer stage it calls (``converters.answer.Answer`` or a stand-in);
    ``warnings``: where to note what the upstream did that the client may notice."""

    def __init__(self, answer: AnswerStage, warnings: Warnings | None = None) -> None:
        self.answer = answer
        self.warnings = Warnings() if warnings is None else warnings
        self.conversation_id: str | None = None
        self._messages: dict[Any, Message] = {}
        self._current: Message | None = None
        # message id -> (number of citations, content_references) last announced
        self._cited: dict[Any, tuple[int, Any]] = {}

    def event(self, ev: Event) -> None:
        """One SSE event."""
        obj = read_event(ev)
        if obj is DONE:
            self.done()
        elif type(obj) is dict:
            self.payload(obj)

    def done(self) -> None:
        """``[DONE]``: the end of the upstream's answer."""
        self._end_current()
        self.answer.done()

    def payload(self, obj: dict[str, Any]) -> None:
        """A decoded event object that is not a patch (shared with the delta dialect): a whole
        message, a root object with an error, or a typed frame. Typed frames are never text."""
        cid = obj.get("conversation_id")
        if cid and type(cid) is str:
            self.conversation_id = cid
        m = obj.get("message")
        if isinstance(m, dict):
            self.snapshot(m)
        error = obj.get("error")
        if error:
            code = obj.get("error_code")
            if isinstance(error, dict):
                code = code or error.get("code")
                error = error.get("message") or ujson.dumps(error, ensure_ascii=False)
            self.answer.error(str(error), code if isinstance(code, str) else None)
        if isinstance(m, dict):
            return
        kind = obj.get("type")
        moderation = obj.get("moderation_response")
        if isinstance(moderation, dict):  # late 2023 without "type", 2024 on with "type": "moderation"
            if moderation.get("blocked"):
                self.answer.moderation(True)
        elif kind == "message_stream_complete":
            # The turn is over; more typed frames (a title) may follow before [DONE].
            self._end_current()
            self.answer.done()
        elif kind == "resume_conversation_token":
            token = obj.get("token")
            if isinstance(token, str):
                self.answer.resume_token(token)
        elif kind == "stream_handoff":
            options = obj.get("options")
            self.answer.handoff(obj.get("turn_exchange_id"), options if isinstance(options, list) else [])
        elif kind is not None and kind not in IGNORED:
            self.warnings.note("ignored an upstream frame of a type the gateway does not know: %r" % (kind,),
                               ("type", kind))

    def snapshot(self, m: dict[str, Any]) -> None:
        """A whole message as the upstream has it now."""
        msg = self.track(m)
        if msg is not None:
            self.passed_on(msg, content_text(msg.content))
            self.ended(msg, m)

    def track(self, m: dict[str, Any], metadata_changed: bool | None = None) -> Message | None:
        """Note message ``m`` (start it if it is new) and its content and metadata; tell the
        answer stage when its citations changed. ``metadata_changed``: whether they did, when the
        caller knows (the delta dialect changes the dicts in place, so they cannot be compared
        with what was seen before); None: compare with the last snapshot. Returns the
        ``Message``, or None for a message that has ended (a repeat brings nothing new)."""
        mid = m.get("id")
        msg = self._messages.get(mid)
        if msg is None:
            self._end_current()
            msg = Message.from_upstream(m)
            self._messages[mid] = msg
            self._current = msg
            self.answer.start(msg)
        elif msg.ended:
            metadata = m.get("metadata")
            if isinstance(metadata, dict) and "finish_details" in metadata:
                # why it ended, patched in after its status said it had (v1 frames in any order)
                msg.metadata = metadata
                self.answer.update(msg)
            return None
        content = m.get("content")
        metadata = m.get("metadata")
        msg.content = content if isinstance(content, dict) else {}
        msg.metadata = metadata = metadata if isinstance(metadata, dict) else {}
        if metadata_changed is None:
            citations = metadata.get("citations")
            seen = (len(citations) if isinstance(citations, list) else 0, metadata.get("content_references"))
            if seen != self._cited.get(mid, (0, None)):
                self._cited[mid] = seen
                metadata_changed = True
        if metadata_changed:
            self.answer.update(msg)
        return msg

    def passed_on(self, msg: Message, text: str) -> None:
        """``text`` is the message's whole text now: pass on what lies past what was sent."""
        sent = msg.sent
        if len(text) > sent:
            msg.sent = len(text)
            self.answer.text(msg, text[sent:] if sent else text)
        elif len(text) < sent:
            msg.sent = len(text)
            self.warnings.note("the upstream shortened a message after part of it was sent")

    def ended(self, msg: Message, m: dict[str, Any]) -> None:
        """End ``msg`` if message ``m``'s status says it is over."""
        status = m.get("status")
        if status and status != "in_progress":
            msg.status = status
            msg.end_turn = m.get("end_turn")
            msg.ended = True
            self.answer.end(msg)

    def message(self, message_id: Any) -> Message | None:
        """The ``Message`` of an upstream message id seen so far, or None."""
        return self._messages.get(message_id)

    def close(self) -> None:
        """The upstream body ended: end a message still open."""
        self._end_current()

    def _end_current(self) -> None:
        msg = self._current
        if msg is not None and not msg.ended:
            msg.ended = True
            self.answer.end(msg)
