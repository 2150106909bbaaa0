"""An incremental ``text/event-stream`` decoder: bytes in, events out, no IO.

It follows the WHATWG parsing rules (lines end in CR, LF or CRLF; ``:`` starts a comment;
several ``data:`` lines join with LF; ``event:`` names the event; a blank line dispatches) and
accepts network chunks split anywhere: inside a line, inside a multi-byte UTF-8 character
(lines stay bytes until complete) and between the CR and LF of one line end.

Event data stays ``bytes``: ``ujson.loads`` takes bytes directly, and a long answer sends
megabytes of events, so not decoding them twice matters.
"""


from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    """One dispatched event: its ``event:`` name (None when it had none) and its data."""
    event: str | None
    data: bytes

    def __repr__(self) -> str:
        return "Event(%r, %r)" % (self.event, self.data)


BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    def __init__(self) -> None:
        self._head: bytes | None = b""  # the stream's first bytes until a BOM is ruled out; then None
        self._partial: list[memoryview] = []  # pieces of the line not yet terminated
        self._partial_data = False  # ... known to be a ``data: `` line, prefix already cut off
        self._skip_lf = False    # the last chunk ended in CR: a leading LF belongs to it
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Event]:  # noqa: C901 (the hot loop is inlined on purpose: bench S2)
        """Take the next network chunk; return the events it completed (a list, maybe empty).

        A long answer's events are larger than a network chunk, so each byte of event data is
        copied once: the unfinished line is kept as views of the chunks it spans and joined
        when it ends, with its ``data: `` prefix already cut off (no second copy for the slice).
        """
        if not chunk:
            return []
        if self._head is not None:
            chunk = self._head + chunk
            if len(chunk) < len(BOM) and BOM.startswith(chunk):
                self._head = chunk  # could still be a byte order mark
                return []
            self._head = None
            if chunk.startswith(BOM):  # the spec drops one at the start of the stream
                chunk = chunk[len(BOM):]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if chunk.find(b"\r") >= 0:  # not ``in``: bytes.__contains__ first tries an int, and raises
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        find = chunk.find
        end = find(b"\n")
        if end < 0:  # no line ends here: the middle of a long event
            if chunk:  # (empty when the chunk was only the LF of a CRLF already seen)
                self._keep(chunk, 0)
            return []
        events: list[Event] = []
        start = 0
        if self._partial:
            self._partial.append(memoryview(chunk)[:end])
            self._joined_line(events)
            start = end + 1
            end = find(b"\n", start)
        # This loop is the whole cost of framing a long answer (two lines per event), so the
        # two common lines, ``data: ...`` and the blank line, are handled in place.
        data = self._data
        while end >= 0:
            if end == start:  # _dispatch, in place
                if data:
                    events.append(Event(self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data = self._data = []
                self._event = None
            elif chunk.startswith(b"data: ", start):
                data.append(chunk[start + 6:end])
            else:
                self._line(chunk[start:end], events)
                data = self._data
            start = end + 1
            end = find(b"\n", start)
        if start < len(chunk):
            self._keep(chunk, start)
        return events

    def _keep(self, chunk: bytes, start: int) -> None:
        """``chunk[start:]`` is part of a line that has not ended: keep a view of it."""
        if not self._partial and chunk.startswith(b"data: ", start):
            self._partial_data = True
            start += 6
        self._partial.append(memoryview(chunk)[start:] if start else memoryview(chunk))

    def close(self) -> list[Event]:
        """End of stream. Per the spec an event not closed by a blank line is discarded,
        but a last line without its line end still counts as a line."""
        events: list[Event] = []
        if self._head:
            self._keep(self._head, 0)  # a stream of one or two bytes that began like a BOM
        if self._partial:
            self._joined_line(events)
        return events

    def _joined_line(self, events: list[Event]) -> None:
        """The line kept in ``_partial`` has ended: join its pieces."""
        line = b"".join(self._partial)
        self._partial = []
        if self._partial_data:
            self._partial_data = False
            self._data.append(line)
        else:
            self._line(line, events)

    def _dispatch(self, events: list[Event]) -> None:
        """A blank line: the event so far is complete."""
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            events.append(Event(self._event, data))
        self._event = None
        self._data = []

    def _line(self, line: bytes, events: list[Event]) -> None:
        if line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif not line:
            self._dispatch(events)
        elif line[:1] == b":":
            pass
        else:
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"data":
                self._data.append(value)
            # id and retry do not matter for a single upstream answer; unknown fields are ignored.
