"""One upstream answer, bytes in, client text out: the stages put together.

    bytes -> SSEDecoder -> dialect (legacy snapshots | delta patches) -> Answer -> renderer -> str | action

The decoder returns the chunk's events; from there on each stage calls the next (see
``converters.events``), and the renderer collects what the client should see until this object
takes it, once per chunk. ``feed`` takes each network chunk as it arrives and returns what the
client should see next; ``close`` is called once when the upstream body has ended and returns
the rest. The stream and non-stream handlers both use this one object: non-stream is the
stream, collected.

Which dialect the upstream speaks is decided per stream from what arrives (``_Detect`` reads
the first events and hands its choice back), not from what was asked for: an upstream may
ignore ``supported_encodings``. ``warnings`` collects what the stages could not understand,
once each, for the handler to log.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from pgw.converters.answer import Answer
from pgw.converters.delta import DeltaDialect, is_patch
from pgw.converters.events import DONE, Renderer, Warnings, content_text, read_event
from pgw.converters.legacy import LegacyDialect
from pgw.converters.render import Reasoning
from pgw.converters.sse import Event, SSEDecoder
from pgw.errors import ApiError


class _Dialect(Protocol):
    """A dialect stage: SSE events in, calls on the answer stage out."""

    def event(self, ev: Event) -> None: ...

    def close(self) -> None: ...


class _Detect:
    """Reads the first events until the stream shows its dialect, and says which it is.

    ``event: delta_encoding`` / ``event: delta`` or a patch-shaped object -> v1; a whole
    message -> legacy. Events that say neither (pings, typed events, errors) go to the legacy
    stage, whose state the delta stage then takes over.
    """

    def __init__(self, legacy: LegacyDialect) -> None:
        self._legacy = legacy

    def event(self, ev: Event) -> tuple[str, _Dialect] | None:
        """Read ``ev``; once it shows the dialect, ``(name, stage for the rest)``."""
        legacy = self._legacy
        if ev.event in ("delta_encoding", "delta"):
            delta = DeltaDialect(legacy)
            delta.event(ev)
            return "v1", delta
        obj = read_event(ev)
        if obj is DONE:
            legacy.done()
            return None
        if type(obj) is not dict:
            return None
        if is_patch(obj):
            delta = DeltaDialect(legacy)
            delta.frame(obj)
            return "v1", delta
        legacy.payload(obj)
        if isinstance(obj.get("message"), dict):
            return "legacy", legacy
        return None

    def close(self) -> None:
        self._legacy.close()


_SURROGATE = re.compile("[\ud800-\udfff]")


class Conversion:
    def __init__(self, renderer: Renderer, encoding: str = "auto", echo_ids: Any = ()) -> None:
        """``encoding``: what the request asked the upstream for (the UPSTREAM_ENCODING setting);
        ``echo_ids``: ids of the upstream messages the request carried (never part of the answer)."""
        self._sse = SSEDecoder()
        self.warnings = Warnings()
        self._renderer = renderer
        self._answer = Answer(renderer, echo_ids)
        self._legacy = LegacyDialect(self._answer, self.warnings)
        self._asked = encoding
        self.dialect: str | None = None  # "legacy" or "v1" once the stream has shown it
        self._detect = _Detect(self._legacy)
        self._dialect: _Dialect | None = None
        self.produced = False  # the client has been given something to show
        self._high: dict[bool | None, str] = {}  # a high surrogate held back, per kind of text

    @property
    def conversation_id(self) -> str | None:
        return self._legacy.conversation_id

    def feed(self, data: bytes) -> list[Any]:
        events = self._sse.feed(data)
        if not events:
            return events  # a piece of an event larger than a network read
        self._events(events)
        return self._whole(self._merge(self._renderer.take()))

    def _events(self, events: list[Event]) -> None:
        """SSE events through the stages. An event no stage can read (a shape no upstream has
        sent yet) is skipped and noted once, so the rest of the answer still arrives; what the
        stages passed on before they failed on it stays passed on."""
        dialect = self._dialect
        for ev in events:
            try:
                if dialect is not None:
                    dialect.event(ev)
                    continue
                chosen = self._detect.event(ev)
                if chosen is not None:
                    dialect = self._chose(*chosen)
            except Exception as e:
                self.warnings.note("skipped an upstream event the gateway could not read (%s: %s)"
                                   % (type(e).__name__, e))

    def _chose(self, name: str, dialect: _Dialect) -> _Dialect:
        self.dialect = name
        self._dialect = dialect
        if self._asked == "v1" and name == "legacy":
            self.warnings.note("asked for the v1 delta encoding, the upstream answered with whole messages")
        elif self._asked == "legacy" and name == "v1":
            self.warnings.note("asked for whole messages, the upstream answered with v1 deltas")
        return dialect

    def close(self) -> list[Any]:
        self._events(self._sse.close())
        (self._dialect or self._detect).close()
        self._answer.close()
        self._renderer.close()
        return self._whole(self._merge(self._renderer.take()), final=True)

    def follow(self, message: dict[str, Any] | None = None, reopen: str | None = None) -> list[Any]:
        """The answer goes on past the SSE body that ended (``pgw.runtime`` follows it there).

        With ``message``, a whole message dict from a polled conversation (``GET
        conversation/{id}``): it is read as the legacy stage reads a streamed snapshot, so it
        renders exactly as if it had been streamed. A message the answer has already ended is
        read again only when it changed (a placeholder that now holds its picture).
        Without: a new upstream body follows (a resumed or continued turn). Its framing and
        dialect start afresh and it must complete the answer again; ``reopen`` names the message
        it goes on with (an answer cut at max_tokens), whose text so far counts as sent, so a
        continuation that repeats it adds only what is new. Returns what the client should see."""
        answer = self._answer
        if message is None:
            self._events(self._sse.close())
            self._sse = SSEDecoder()
            self._asked = self.dialect or self._asked  # the same dialect is expected again
            self._detect = _Detect(self._legacy)
            self._dialect = None
            answer.complete = False
            answer.handoff_to = None
            msg = self._legacy.message(reopen) if reopen else None
            if msg is not None:
                msg.ended = False
        else:
            msg = self._legacy.message(message.get("id"))
            if msg is not None and msg.ended:
                content = message.get("content") or {}
                # A placeholder still waiting is read again whatever it looks like: the delta
                # stage may have patched its dicts in place after it ended.
                if (msg.id not in answer.image_tasks and content == msg.content
                        and message.get("status") == msg.status):
                    return []
                msg.ended = False
                if msg.role == "tool":  # a placeholder's "Processing image" was never shown
                    msg.sent = min(msg.sent, len(content_text(content)))
            self._legacy.snapshot(message)
        return self._merge(self._renderer.take())

    def outcome(self, cut: bool = False) -> tuple[str | None, ApiError | None]:
        """After ``close``: ``(finish_reason, None)`` or ``(None, ApiError)``.

        ``cut``: the transfer itself failed (connection dropped, timeout). An answer is only a
        success when the upstream said it was complete and something was said. This is the one
        place that decides what an answer's end means for the client: an in-stream error with
        ``error_code: "usage_limit"`` is a rate limit (429, the upstream's message), an answer
        handed off elsewhere (``stream_handoff``) that nobody followed is an error, never an empty
        success.
        """
        answer = self._answer
        if answer.upstream_error:
            if answer.upstream_error_code == "usage_limit":
                # The account's cap: clients back off on a rate limit, not on a gateway error.
                return None, ApiError(429, answer.upstream_error, "rate_limit_error", "rate_limit_exceeded")
            return None, ApiError(502, "upstream error: %s" % answer.upstream_error, "upstream_error", "upstream_error")
        if answer.handoff_to is not None:
            return None, ApiError(502, "the upstream continued this answer elsewhere (stream_handoff); this gateway "
                                  "does not follow it yet, so the answer is missing", "upstream_error",
                                  "upstream_handoff")
        if cut or not answer.complete:
            return None, ApiError(502, "the upstream connection ended before the answer was complete",
                                  "upstream_error", "upstream_incomplete")
        if answer.blocked:
            return "content_filter", None
        if not self.produced:
            return None, ApiError(502, "the upstream finished without answering anything",
                                  "upstream_error", "empty_answer")
        return answer.finish_reason or "stop", None

    def _whole(self, items: list[Any], final: bool = False) -> list[Any]:
        """Text without lone UTF-16 surrogates, which no client can be sent (they cannot be
        encoded as UTF-8). JSON may escape the two halves of an emoji apart, and an upstream that
        cuts its text by UTF-16 units sends them in two appends: a high half at the end of a chunk
        waits for the next; the halves are joined; a half without its other half becomes U+FFFD.
        One scan of each chunk's text (C speed) when there is no surrogate."""
        if not items and not (final and self._high):
            return items
        out: list[Any] = []
        for item in items:
            kind = type(item)
            if kind is str:
                text = self._unpaired(item, None, final)
                if text:
                    out.append(text)
            elif kind is Reasoning:
                text = self._unpaired(item.text, item.inline, final)
                if text:
                    out.append(Reasoning(text, item.inline))
            else:
                out.append(item)
        if final:  # a high half the stream ended after
            for inline in list(self._high):
                text = self._unpaired("", inline, True)
                out.append(text if inline is None else Reasoning(text, inline))
        return out

    def _unpaired(self, text: str, key: bool | None, final: bool) -> str:
        high = self._high.pop(key, None)
        if high is not None:
            text = high + text
        if _SURROGATE.search(text) is None:
            return text
        if not final and "\ud800" <= text[-1] <= "\udbff":
            self._high[key] = text[-1]
            text = text[:-1]
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

    def _merge(self, items: list[Any]) -> list[Any]:
        """Join neighbouring strings so one network chunk becomes at most one client chunk."""
        if not items:
            return items
        self.produced = True
        if len(items) == 1:
            return items  # what most chunks of a long answer bring
        merged: list[Any] = []
        texts: list[str] = []
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
        return merged
