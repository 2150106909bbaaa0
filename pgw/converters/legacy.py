"""The late-2023 dialect: every event carries the whole message so far.

This stage reads those snapshots and calls the answer stage about what changed (``start``,
``text``, ``update``, ``end``, ``error``, ``moderation``, ``done``). The text of a message only
grows, so the new text of an event is the part past what was already passed on: one slice, no
scan of the text already sent. Keep-alive pings, title events and non-JSON data are absorbed
here so that nothing downstream sees them.
"""

import ujson

from pgw.converters.events import Message, content_text


class LegacyDialect:
    """``answer``: the answer stage it calls (``converters.answer.Answer`` or a stand-in);
    ``warnings``: a list to note what the upstream did that the client may notice."""

    def __init__(self, answer, warnings=None):
        self.answer = answer
        self.warnings = [] if warnings is None else warnings
        self.conversation_id = None
        self._messages = {}
        self._current = None
        self._cited = {}  # message id -> number of citations already announced

    def event(self, ev):
        """One SSE event."""
        data = ev.data
        if ev.event == "ping":
            return
        if data == b"[DONE]":
            self._end_current()
            self.answer.done()
            return
        try:
            obj = ujson.loads(data)
        except ValueError:
            return  # PandoraNext pings without an event name carry a bare timestamp
        if isinstance(obj, dict):
            self.payload(obj)

    def payload(self, obj):
        """A decoded event object (shared with the delta dialect)."""
        cid = obj.get("conversation_id")
        if cid:
            self.conversation_id = cid
        m = obj.get("message")
        if isinstance(m, dict):
            self.snapshot(m)
            return
        kind = obj.get("type")
        if kind == "message_stream_complete":
            self._end_current()
            self.answer.done()
            return
        if kind == "resume_conversation_token":
            self.answer.resume_token(obj.get("token"))
            return
        if kind == "stream_handoff":
            self.answer.handoff(obj.get("turn_exchange_id"), obj.get("options"))
            return
        moderation = obj.get("moderation_response")
        if isinstance(moderation, dict):
            if moderation.get("blocked"):
                self.answer.moderation(True)
            return
        error = obj.get("error")
        if error:
            if isinstance(error, dict):
                error = error.get("message") or ujson.dumps(error, ensure_ascii=False)
            self.answer.error(str(error))
        # otherwise: title_generation, input_message echoes and later kinds

    def snapshot(self, m):
        """A whole message as the upstream has it now."""
        mid = m.get("id")
        msg = self._messages.get(mid)
        answer = self.answer
        if msg is None:
            self._end_current()
            msg = Message.from_upstream(m)
            self._messages[mid] = msg
            self._current = msg
            answer.start(msg)
        elif msg.ended:
            return  # a finished message repeated: nothing new
        content = m.get("content") or {}
        metadata = m.get("metadata") or {}
        msg.content = content
        msg.metadata = metadata
        citations = metadata.get("citations")
        # Counted here, not read back from msg.metadata: the delta dialect updates the
        # message's metadata dict in place, so the old list is gone by the time we look.
        if citations and len(citations) != self._cited.get(mid, 0):
            self._cited[mid] = len(citations)
            answer.update(msg)
        text = content_text(content)
        if len(text) > msg.sent:
            new = text[msg.sent:]
            msg.sent = len(text)
            answer.text(msg, new)
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
            answer.end(msg)

    def message(self, message_id):
        """The ``Message`` of an upstream message id seen so far, or None."""
        return self._messages.get(message_id)

    def close(self):
        """The upstream body ended: end a message still open."""
        self._end_current()

    def _end_current(self):
        msg = self._current
        if msg is not None and not msg.ended:
            msg.ended = True
            self.answer.end(msg)
