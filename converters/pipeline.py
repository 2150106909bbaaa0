"""One upstream answer, bytes in, client text out: the stages put together.

    bytes -> SSEDecoder -> dialect (legacy snapshots) -> Answer -> renderer -> str | action

``feed`` takes each network chunk as it arrives and returns what the client should see next;
``close`` is called once when the upstream body has ended and returns the rest. The stream
and non-stream handlers both use this one object: non-stream is the stream, collected.
"""

from converters.answer import Answer
from converters.legacy import LegacyDialect
from converters.sse import SSEDecoder
from errors import ApiError


class Conversion:
    """``echo_ids``: ids of the upstream messages the request carried (never part of the answer)."""

    def __init__(self, renderer, echo_ids=()):
        self._sse = SSEDecoder()
        self._dialect = LegacyDialect()
        self._answer = Answer(echo_ids)
        self._renderer = renderer
        self.produced = False  # the client has been given something to show

    @property
    def conversation_id(self):
        return self._dialect.conversation_id

    def feed(self, data):
        out = []
        answer = self._answer
        dialect = self._dialect
        for ev in self._sse.feed(data):
            segments = answer.feed(dialect.event(ev))
            if segments:
                out.extend(self._renderer.render(segments))
        return self._merge(out)

    def close(self):
        out = []
        for ev in self._sse.close():
            out.extend(self._renderer.render(self._answer.feed(self._dialect.event(ev))))
        segments = self._answer.feed(self._dialect.close()) + self._answer.close()
        out.extend(self._renderer.render(segments))
        out.extend(self._renderer.close())
        return self._merge(out)

    def outcome(self, cut=False):
        """After ``close``: ``(finish_reason, None)`` or ``(None, ApiError)``.

        ``cut``: the transfer itself failed (connection dropped, timeout). An answer is only a
        success when the upstream said it was complete and something was said.
        """
        answer = self._answer
        if answer.error:
            return None, ApiError(502, "upstream error: %s" % answer.error, "upstream_error", "upstream_error")
        if cut or not answer.done:
            return None, ApiError(502, "the upstream connection ended before the answer was complete",
                                  "upstream_error", "upstream_incomplete")
        if answer.blocked:
            return "content_filter", None
        if not self.produced:
            return None, ApiError(502, "the upstream finished without answering anything",
                                  "upstream_error", "empty_answer")
        return answer.finish_reason or "stop", None

    def _merge(self, items):
        """Join neighbouring strings so one network chunk becomes at most one client chunk."""
        if not items:
            return items
        merged = []
        texts = []
        for item in items:
            if type(item) is str:
                texts.append(item)
            else:
                if texts:
                    merged.append("".join(texts))
                    texts = []
                merged.append(item)
        if texts:
            merged.append("".join(texts))
        self.produced = True
        return merged
