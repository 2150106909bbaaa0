"""The late-2023 dialect: every event carries the whole message so far.

This stage turns those snapshots into message events. The text of a message only grows, so
the new text of an event is the part past what was already passed on: one slice, no scan of
the text already sent. Keep-alive pings, title and moderation events and non-JSON data are
absorbed here so that nothing downstream sees them.
"""

import ujson

from converters.events import (Done, Message, MessageEnd, MessageStart, MessageUpdate,
                               Moderation, StreamError, TextDelta, content_text)


class LegacyDialect:
    """``warnings``: a list to note what the upstream did that the client may notice."""

    def __init__(self, warnings=None):
        self.warnings = [] if warnings is None else warnings
        self.conversation_id = None
        self._messages = {}
        self._current = None
        self._cited = {}  # message id -> number of citations already announced

    def event(self, ev):
        """One SSE event in, a list of message events out."""
        data = ev.data
        if ev.event == "ping":
            return []
        if data == b"[DONE]":
            return self._end_current() + [Done()]
        try:
            obj = ujson.loads(data)
        except ValueError:
            return []  # PandoraNext pings without an event name carry a bare timestamp
        if not isinstance(obj, dict):
            return []
        return self.payload(obj)

    def payload(self, obj):
        """A decoded event object in, message events out (shared with the delta dialect)."""
        cid = obj.get("conversation_id")
        if cid:
            self.conversation_id = cid
        m = obj.get("message")
        if isinstance(m, dict):
            return self.snapshot(m)
        kind = obj.get("type")
        if kind == "message_stream_complete":
            return self._end_current() + [Done()]
        moderation = obj.get("moderation_response")
        if isinstance(moderation, dict):
            return [Moderation(True)] if moderation.get("blocked") else []
        error = obj.get("error")
        if error:
            if isinstance(error, dict):
                error = error.get("message") or ujson.dumps(error, ensure_ascii=False)
            return [StreamError(str(error))]
        return []  # title_generation, input_message echoes and later kinds

    def snapshot(self, m):
        mid = m.get("id")
        msg = self._messages.get(mid)
        out = []
        if msg is None:
            out.extend(self._end_current())
            msg = Message.from_upstream(m)
            self._messages[mid] = msg
            self._current = msg
            out.append(MessageStart(msg))
        elif msg.ended:
            return out  # a finished message repeated: nothing new
        content = m.get("content") or {}
        metadata = m.get("metadata") or {}
        msg.content = content
        msg.metadata = metadata
        citations = metadata.get("citations")
        # Counted here, not read back from msg.metadata: the delta dialect updates the
        # message's metadata dict in place, so the old list is gone by the time we look.
        if citations and len(citations) != self._cited.get(mid, 0):
            self._cited[mid] = len(citations)
            out.append(MessageUpdate(msg))
        text = content_text(content)
        if len(text) > msg.sent:
            out.append(TextDelta(msg, text[msg.sent:]))
            msg.sent = len(text)
        elif len(text) < msg.sent:
            # The upstream took text back (a shorter snapshot, a v1 truncate). What the client
            # has cannot be unsent; carrying on from the new end keeps all text added later.
            msg.sent = len(text)
            note = "the upstream shortened a message after part of it was sent"
            if note not in self.warnings:
                self.warnings.append(note)
        status = m.get("status")
        if status and status != "in_progress":
            msg.status = status
            msg.end_turn = m.get("end_turn")
            msg.ended = True
            out.append(MessageEnd(msg))
        return out

    def message(self, message_id):
        """The ``Message`` of an upstream message id seen so far, or None."""
        return self._messages.get(message_id)

    def close(self):
        """The upstream body ended: end a message still open."""
        return self._end_current()

    def _end_current(self):
        msg = self._current
        if msg is None or msg.ended:
            return []
        msg.ended = True
        return [MessageEnd(msg)]
