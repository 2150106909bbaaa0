"""The v1 dialect (``"supported_encodings": ["v1"]``): each message once, then patches to it.

The one place that knows how v1 frames apply (docs/upstream.md, "The stream: three forms", 2 and 3):

- A frame that carries ``c`` (or has the empty path, or no path and no ``type``) and whose
  ``v`` holds a ``message`` is a new document ``{"message": ..., "conversation_id": ..., "error": ...}``,
  with or without ``p``/``o``, whatever the previous frame was; one whose ``v`` holds an
  ``error`` and no message is an in-stream error, framed the same ways.
- Otherwise a frame is a patch: ``add``, ``append`` (string concat, list extend, object merge),
  ``replace``, ``truncate`` (``v`` is the new length), ``remove``, or ``patch`` (a list of
  patches, paths relative to the list's path). A bare ``{"v": [...]}`` continues the last
  top-level patch (usually a ``patch`` list); a bare ``{"v": "..."}`` continues the last plain
  patch (path and operation), even when a list or a new document came in between (right after
  a new document: the new message's text, when the previous path is not where its text is).
- A top-level frame is one change: a ``patch`` list applies whole before anything is passed
  on, so text that a list appends and takes back never reaches the client.
- Frames with neither ``p`` nor ``o`` that carry a ``type`` or no ``v`` (typed frames, errors)
  go to ``LegacyDialect.payload``.

The invariant, for each message: ``Message.sent`` (what the client has) is at most the length
of the message's text as the document holds it, and everything up to it was passed on; after
each top-level change the text past ``sent`` is passed on (``LegacyDialect.passed_on``: the same
rule as for snapshots, so both dialects agree). Text that the upstream takes back across changes
cannot be unsent: a note goes to the log, and the text added later continues from the new end;
text inserted before the end of what was sent (the rest of what was sent still follows it) is
left out, so the client never reads the same text twice.

What the message's text is, is defined only by ``events.content_text``. The fast path: while a
message streams, the field whose string ``content_text`` returns as it is (found by probing it,
``_text_field``) gets ``append`` patches every few characters; those are kept as a list of
pieces and passed on at once, and joined into the document only when something needs the whole
text (the message ends, or a patch touches the field in another way). That keeps the cost of an
event proportional to what it carries, not to the length of the answer so far (bench S5). So
while a message streams, ``Message.content`` may lag behind the text passed on; it is whole by
the time ``answer.end`` is called. The field may also be the end of the text (the last thought's
content, after its summary and a blank line): its appends then go the same way, counted from
where the field begins. Any other patch to the content (an earlier part, a summary, a new
thought) takes the general path: the change is applied, then the text is read whole.

Operations or paths this stage cannot apply are skipped and noted once in ``warnings`` (the
handler logs them): a new kind of patch must not break an answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgw.converters.events import DONE, Message, Warnings, content_text, read_event

if TYPE_CHECKING:
    from pgw.converters.legacy import LegacyDialect
    from pgw.converters.sse import Event

JSON = Any  # a decoded JSON value

_CONTENT = "/message/content"
_PROBE = "\x00pgw text probe\x00"  # a string no upstream sends; only its identity matters

# What a change touched, beside text appended by the fast path.
_ROOT = 1       # the document outside its message, or the message as a whole
_TEXTS = 2      # the message's content, other than by a fast-path append
_META = 4       # the message's citations (metadata.citations, metadata.content_references)
_OTHER = 8      # anything else in the message (status, end_turn, recipient...)


class _Skip(Exception):
    """A patch that cannot be applied; the message says why (without the value)."""


def is_patch(obj: dict[str, JSON]) -> bool:
    """Whether a decoded event object is a v1 frame (as opposed to a typed or whole-message event)."""
    return "o" in obj or "p" in obj or ("v" in obj and "message" not in obj and "type" not in obj)


def _tokens(path: str) -> list[str]:
    """``/message/content/parts/0`` -> ``["message", "content", "parts", "0"]`` (JSON pointer)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise _Skip("path %r does not start with /" % path)
    tokens = path[1:].split("/")
    if "~" in path:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in tokens]
    return tokens


def _overlaps(a: str, b: str) -> bool:
    """One path is the other or lies inside it."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _index(container: list[JSON], token: str, path: str, size_ok: bool = False) -> int:
    try:
        i = int(token)
    except ValueError:
        raise _Skip("%r is not a list index in %r" % (token, path)) from None
    limit = len(container) + (1 if size_ok else 0)
    if not 0 <= i < limit:
        raise _Skip("index %d is outside the list at %r" % (i, path))
    return i


def _child(node: JSON, token: str, path: str) -> JSON:
    if isinstance(node, dict):
        if token not in node:
            raise _Skip("%r has no %r" % (path, token))
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token, path)]
    raise _Skip("%r goes through a %s" % (path, type(node).__name__))


def _appended(current: JSON, value: JSON, path: str) -> JSON:
    if isinstance(current, str) and isinstance(value, str):
        return current + value
    if isinstance(current, list):
        if isinstance(value, list):
            current.extend(value)
        elif isinstance(value, str):
            # Lists here hold objects (citations, attachments); a bare string is most likely text
            # meant for another path (a bare {"v"} read with the wrong remembered path).
            raise _Skip("a string appended to the list at %r" % path)
        else:
            current.append(value)
        return current
    if isinstance(current, dict) and isinstance(value, dict):
        current.update(value)
        return current
    raise _Skip("cannot append a %s to the %s at %r" % (type(value).__name__, type(current).__name__, path))


def _truncated(current: JSON, length: JSON) -> JSON:
    if not isinstance(current, (str, list)):
        raise _Skip("nothing to truncate")
    if type(length) is not int or length < 0:
        raise _Skip("the new length must be a whole number")
    return current[:length]


def _apply_one(doc: JSON, path: str, op: str, value: JSON) -> JSON:  # noqa: C901 (one branch per operation and container kind)
    """Apply one plain operation to ``doc``; return the document (a new one for the root)."""
    if op not in ("add", "replace", "append", "truncate", "remove"):
        raise _Skip("unknown operation")
    tokens = _tokens(path)
    if not tokens:
        if op in ("add", "replace"):
            if not isinstance(value, dict):
                raise _Skip("a document must be an object")
            return value
        if op == "append" and isinstance(doc, dict):
            return _appended(doc, value, path)
        raise _Skip("cannot %s the whole document" % op)
    if doc is None:
        raise _Skip("no document yet")
    parent = doc
    for token in tokens[:-1]:
        parent = _child(parent, token, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if op in ("add", "replace"):
            parent[last] = value
        elif op == "remove":
            if last not in parent:
                raise _Skip("nothing to remove")
            del parent[last]
        elif op == "append":
            parent[last] = _appended(parent[last], value, path) if last in parent else value
        else:
            parent[last] = _truncated(parent.get(last), value)
    elif isinstance(parent, list):
        if op == "add":
            parent.insert(_index(parent, last, path, size_ok=True), value)
            return doc
        i = _index(parent, last, path)
        if op == "replace":
            parent[i] = value
        elif op == "remove":
            del parent[i]
        elif op == "append":
            parent[i] = _appended(parent[i], value, path)
        else:
            parent[i] = _truncated(parent[i], value)
    else:
        raise _Skip("the parent is a %s" % type(parent).__name__)
    return doc


_CITATIONS = ("citations", "content_references")
_METADATA = "/message/metadata/"


def _touched(path: str, value: JSON) -> int:
    """Which part of the document a patch at ``path`` (with ``value``) changes."""
    if not path.startswith("/message/"):
        return _ROOT
    if _overlaps(path, _CONTENT):
        return _TEXTS
    if path == "/message/metadata":
        if not isinstance(value, dict) or "citations" in value or "content_references" in value:
            return _META
        return _OTHER
    if path.startswith(_METADATA) and path[len(_METADATA):].split("/", 1)[0] in _CITATIONS:
        return _META
    return _OTHER


def _text_field(content: dict[str, JSON]) -> tuple[Any, Any, str, int] | None:
    """Where the text of ``content`` is appended to, if it ends with one string field: the
    ``(container, key, path, offset)`` of the field whose string ``content_text`` returns at its
    end (from ``offset`` on, the same for whatever the field holds), or None. Found by probing
    each string field, so the fast path follows ``content_text``'s rule wherever it is changed
    (a part; a thought's content after its summary), without a second copy of it."""
    candidates: list[tuple[Any, Any, str]] = []
    parts = content.get("parts")
    if isinstance(parts, list):
        candidates += [(parts, i, "%s/parts/%d" % (_CONTENT, i)) for i, p in enumerate(parts) if isinstance(p, str)]
    candidates += [(content, k, "%s/%s" % (_CONTENT, k)) for k, v in content.items()
                   if isinstance(v, str) and "/" not in k and "~" not in k]
    thoughts = content.get("thoughts")
    if isinstance(thoughts, list) and thoughts and isinstance(thoughts[-1], dict):
        last = thoughts[-1]
        if isinstance(last.get("content"), str):
            candidates.append((last, "content", "%s/thoughts/%d/content" % (_CONTENT, len(thoughts) - 1)))
    text: str | None = None
    for container, key, path in candidates:
        value = container[key]
        container[key] = _PROBE
        try:
            probed = content_text(content)
        finally:
            container[key] = value
        if probed is _PROBE:
            return container, key, path, 0
        if probed.endswith(_PROBE):
            # The text is what lies before the field and the field: true only if it holds for
            # the field's own value too (a thought's summary is followed by a blank line only
            # once its content has begun).
            offset = len(probed) - len(_PROBE)
            if text is None:
                text = content_text(content)
            if len(text) == offset + len(value) and text.startswith(probed[:offset]) and text.endswith(value):
                return container, key, path, offset
    return None


class DeltaDialect:
    """``legacy``: the ``LegacyDialect`` whose answer stage, warnings and state this one shares
    (it may have read the events that came before the stream showed its dialect)."""

    def __init__(self, legacy: LegacyDialect) -> None:
        self._legacy = legacy
        self._answer = legacy.answer
        self.warnings: Warnings = legacy.warnings
        self._doc: JSON = None      # the document being patched
        self._msg: Message | None = None  # the Message of the document's message
        self._last: tuple[str, str] | None = None  # path and operation of the last top-level patch
        self._last_plain: tuple[str, str] | None = None  # ... of the last one that was not a list
        self._fresh = False         # no patch since the last root
        self._hot: str | None = None  # path of the current message's text field (the fast path)
        self._field: tuple[Any, Any] | None = None  # (container, key) of that field
        self._pending: list[str] | None = None  # the field's text, as pieces not yet joined
        self._pending_len = 0       # length of the field's text, pieces included
        self._offset = 0            # where the field's text begins in the message's text
        self._dirty = 0             # what the change being applied touched (_ROOT, _TEXTS...)
        self._grown: list[str] | None = None  # text appended by the fast path inside the change
        self._before: str | None = None  # the text sent so far, when the change touched the content

    @property
    def conversation_id(self) -> str | None:
        return self._legacy.conversation_id

    def event(self, ev: Event) -> None:
        """One SSE event."""
        obj = read_event(ev)
        if obj is None:
            return
        if obj is DONE:
            self._flush()
            self._legacy.done()
            return
        if ev.event == "delta_encoding":
            if obj != "v1":
                self.warnings.note("unknown delta encoding %r" % (obj,))
            return
        if type(obj) is dict:
            self.frame(obj)

    def close(self) -> None:
        self._flush()
        self._legacy.close()

    def frame(self, obj: dict[str, JSON]) -> None:
        """One decoded event object: a new document, a patch, or something else."""
        value = obj.get("v")
        path = obj.get("p")
        op = obj.get("o")
        if (isinstance(value, dict) and isinstance(value.get("message"), dict) and op in (None, "add", "replace")
                and ("c" in obj or path == "" or (path is None and "type" not in obj))):
            self._new_document(value)
            return
        if ("c" in obj and isinstance(value, dict) and value.get("error") and path in (None, "")
                and op in (None, "add", "replace")):
            # A root without a message: an in-stream error, however it is framed (5.2).
            self._flush()
            self._legacy.payload(value)
            return
        if path is None and op is None:
            if "v" not in obj or "type" in obj:  # a typed frame, an error: patches have no type
                self._flush()
                self._legacy.payload(obj)
                return
            last = self._last
            if type(value) is str and self._fresh and self._hot is not None:
                # Right after a root, a bare string can only continue the new message's text: the
                # previous plain patch may name a field this message does not have (thoughts).
                last = (self._hot, "append")
            elif type(value) is str and last is not None and last[1] == "patch":
                last = self._last_plain
            if last is None:
                self.warnings.note("skipped a bare value with no patch before it", "bare value")
                return
            path, op = last
        elif path is None:
            path = self._last[0] if self._last else ""
        elif op is None:
            op = self._last[1] if self._last else None
        self._fresh = False
        if type(path) is not str or type(op) is not str:
            self.warnings.note("skipped a patch with path %r and operation %r" % (path, op), "bad patch")
            return
        self._last = (path, op)  # top-level patches only: what a bare {"v": ...} refers to
        if op != "patch":
            self._last_plain = (path, op)
        # The hot path: more text for the message being streamed.
        if op == "append" and path == self._hot and type(value) is str:
            self._append_text(value)
            self._pass_on(value)
            return
        self._apply(path, op, value)
        self._changed()

    # applying patches

    def _new_document(self, doc: dict[str, JSON]) -> None:
        self._flush()
        self._doc = doc
        self._fresh = True
        # The last patch is kept: a bare {"v": "..."} right after a root continues the previous
        # plain patch (5.1), which is the previous message's text append (paths name the field,
        # not the message).
        self._legacy.payload(doc)
        self._follow(doc["message"])

    def _apply(self, path: str, op: str, value: JSON) -> None:
        if op == "patch":
            if not isinstance(value, list):
                return self.warnings.note("skipped a 'patch' at %r whose value is not a list" % path)
            # Inside a list, a sub-patch without "p"/"o" reuses the previous one of the same list;
            # the list as a whole is what a later top-level bare {"v": ...} refers to.
            prev: tuple[str, Any] = (path, None)
            for sub in value:
                if not isinstance(sub, dict):
                    self.warnings.note("skipped a %s in a patch list at %r" % (type(sub).__name__, path))
                    continue
                sub_path = sub.get("p")
                sub_op = sub.get("o")
                # paths inside a patch list are relative to the list's own path
                sub_path = path + sub_path if type(sub_path) is str else prev[0]
                sub_op = sub_op if sub_op is not None else prev[1]
                prev = (sub_path, sub_op)
                if type(sub_op) is not str:
                    self.warnings.note("skipped a patch with path %r and operation %r" % (sub_path, sub_op),
                                       "bad patch")
                    continue
                self._apply(sub_path, sub_op, sub.get("v"))
            return
        if op == "append" and path == self._hot and type(value) is str:
            self._append_text(value)
            if self._grown is None:
                self._grown = [value]
            else:
                self._grown.append(value)
            return
        touched = _touched(path, value)
        msg = self._msg
        if touched & (_ROOT | _TEXTS) and self._before is None and msg is not None and not msg.ended:
            self._flush()
            self._before = content_text(msg.content)[:msg.sent]
        if self._hot is not None and _overlaps(path, self._hot):
            # The field may be replaced: no fast path until the change is read whole.
            self._flush()
            self._hot = self._field = None
        try:
            self._doc = _apply_one(self._doc, path, op, value)
        except _Skip as e:
            return self.warnings.note("skipped %r at %r: %s" % (op, path, e), (op, path))
        self._dirty |= touched

    def _changed(self) -> None:
        """A top-level change has been applied: tell the later stages what it changed."""
        dirty, grown, before = self._dirty, self._grown, self._before
        self._dirty = 0
        self._grown = self._before = None
        doc = self._doc
        if not dirty:
            if grown:
                self._pass_on("".join(grown))
            return
        legacy = self._legacy
        m = doc.get("message") if isinstance(doc, dict) else None
        if not isinstance(m, dict):
            self._flush()
            if dirty & _ROOT and isinstance(doc, dict):
                legacy.payload(doc)
            self._msg = self._hot = self._field = None
            return
        if not (dirty & (_ROOT | _TEXTS) or m.get("status") != "in_progress"):
            # Metadata or status fields changed; the text only grew by appends.
            tracked = legacy.track(m, bool(dirty & _META))
            if grown and tracked is not None:
                self._pass_on("".join(grown))
            return
        # The text is read whole: a change to it other than an append, or the message's end.
        self._flush()
        if dirty & _ROOT:
            # the conversation id or an error patched in beside the message
            legacy.payload({k: v for k, v in doc.items() if k != "message"})
        tracked = legacy.track(m, bool(dirty & (_META | _ROOT)))
        if tracked is not None:
            text = content_text(tracked.content)
            same = tracked is self._msg  # (not in the condition: mypy would narrow tracked by it)
            if before is not None and same and not text.startswith(before):
                self._taken_back(tracked, before, text)
            legacy.passed_on(tracked, text)
            legacy.ended(tracked, m)
        self._follow(m)

    def _taken_back(self, msg: Message, before: str, text: str) -> None:
        """The change took back text the client has (``before``): it cannot be unsent, so the
        text is passed on from where the two part, keeping everything the upstream adds later."""
        lo, hi = 0, min(len(before), len(text))
        while lo < hi:  # the longest common prefix, by halving (each probe a C comparison)
            mid = (lo + hi + 1) // 2
            if text.startswith(before[:mid]):
                lo = mid
            else:
                hi = mid - 1
        rest = before[lo:]
        at = text.find(rest, lo)
        if at >= 0:
            # Text inserted before the end of what the client has (a thought's summary that grows
            # after its content began, 5.3): the client has the rest already, so it goes on from
            # there; sending from the insertion would repeat all of it. The insertion is not shown.
            msg.sent = at + len(rest)
            self.warnings.note("the upstream inserted text into a message before what was sent")
            return
        msg.sent = lo
        if lo == len(text):
            self.warnings.note("the upstream shortened a message after part of it was sent")
        else:
            self.warnings.note("the upstream rewrote text of a message after it was sent")

    def _follow(self, m: dict[str, JSON]) -> None:
        """After the document was read whole: which message it is, and where its text grows."""
        self._msg = msg = self._legacy.message(m.get("id"))
        self._hot = self._field = None
        content = m.get("content")
        if msg is not None and not msg.ended and isinstance(content, dict):
            found = _text_field(content)
            if found is not None:
                container, key, self._hot, self._offset = found
                self._field = (container, key)

    # text

    def _append_text(self, text: str) -> None:
        """Keep ``text`` as one more piece of the text field (joined by ``_flush``)."""
        if self._pending is None:
            assert self._field is not None  # the fast path is on only while the field is known
            container, key = self._field
            base = container[key]
            self._pending = [base, text]
            self._pending_len = len(base) + len(text)
        else:
            self._pending.append(text)
            self._pending_len += len(text)

    def _pass_on(self, text: str) -> None:
        """``text`` was just appended to the text field: pass on what lies past what was sent."""
        msg = self._msg
        after = self._offset + self._pending_len
        if msg is None or after <= msg.sent:
            return
        before = after - len(text)
        new = text if before >= msg.sent else text[msg.sent - before:]
        msg.sent = after
        self._answer.text(msg, new)

    def _flush(self) -> None:
        """Join the text kept as pieces into the document (and so into ``Message.content``)."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            assert self._field is not None  # pieces are kept only while the field is known
            container, key = self._field
            container[key] = "".join(pending)
