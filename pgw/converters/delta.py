"""The 2024 dialect: ``event: delta`` patches instead of whole messages.

The upstream sends a document ``{"message": {...}, "conversation_id": ..., "error": ...}`` once
(``{"p": "", "o": "add", "v": <document>, "c": n}``, one per message of the answer) and then
patches to it: ``add``, ``append`` (string concat, list extend, object merge), ``replace``,
``truncate`` (``v`` is the new length), ``remove`` and ``patch`` (a list of patches applied in
order). A bare ``{"v": ...}`` reuses the path and operation of the previous patch.

This stage keeps that document and hands it to ``LegacyDialect`` whenever something other than
text changed, so what the answer stage is told (starts, ends, citations, errors, typed events)
comes from one piece of logic for both dialects. Text is the exception, because it is almost
every event: an ``append`` to the message's text field is passed on at once (``answer.text``)
and only kept as a list of pieces, joined into the document when something needs the whole text
(the message ends, or a patch touches the text field in another way). That keeps the cost of an
event proportional to what it carries, not to the length of the answer so far. So while a
message streams, the text inside ``Message.content`` may lag behind the text passed on; it is
whole by the time ``answer.end`` is called. (Content whose text is spread over several parts
takes the general path: each append re-joins, as the legacy dialect does.) ``c`` on an ``add``
counts the messages of the answer; a new message is recognised by its id, as in the legacy
dialect.

Operations or paths this stage cannot apply are skipped and described once in ``warnings``
(the handler logs them): a new kind of patch must not break an answer.
"""

import ujson

_TEXT_PATHS = ("/message/content/parts/0", "/message/content/text", "/message/content/result")


class _Skip(Exception):
    """A patch that cannot be applied; the message says why (without the value)."""


def is_patch(obj):
    """Whether a decoded event object is a patch (as opposed to a typed or whole-message event)."""
    return "o" in obj or "p" in obj or ("v" in obj and "message" not in obj and "type" not in obj)


def _tokens(path):
    """``/message/content/parts/0`` -> ``["message", "content", "parts", "0"]`` (JSON pointer)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise _Skip("path %r does not start with /" % path)
    tokens = path[1:].split("/")
    if "~" in path:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in tokens]
    return tokens


def _overlaps(a, b):
    """One path is the other or lies inside it."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _index(container, token, path, size_ok=False):
    try:
        i = int(token)
    except ValueError:
        raise _Skip("%r is not a list index in %r" % (token, path)) from None
    limit = len(container) + (1 if size_ok else 0)
    if not 0 <= i < limit:
        raise _Skip("index %d is outside the list at %r" % (i, path))
    return i


def _child(node, token, path):
    if isinstance(node, dict):
        if token not in node:
            raise _Skip("%r has no %r" % (path, token))
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token, path)]
    raise _Skip("%r goes through a %s" % (path, type(node).__name__))


def _appended(current, value, path):
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


class DeltaDialect:
    """``legacy``: the ``LegacyDialect`` whose answer stage, warnings and state this one shares
    (it may have read the events that came before the stream showed its dialect)."""

    def __init__(self, legacy):
        self._legacy = legacy
        self._answer = legacy.answer
        self.warnings = legacy.warnings
        self._warned = set()
        self._doc = None            # the document being patched
        self._msg = None            # the Message of the document's message
        self._last = ("", None)     # path and operation a bare {"v": ...} reuses
        self._hot_path = None       # where the current message's text is appended
        self._pending = None        # [container, key, pieces]: text not yet joined into the document
        self._pending_len = 0

    @property
    def conversation_id(self):
        return self._legacy.conversation_id

    def event(self, ev):
        """One SSE event."""
        name = ev.event
        if name == "ping":
            return
        data = ev.data
        if data == b"[DONE]":
            self._flush()
            self._legacy.event(ev)
            return
        try:
            obj = ujson.loads(data)
        except ValueError:
            return
        if name == "delta_encoding":
            if obj != "v1":
                self._warn("unknown delta encoding %r" % (obj,))
            return
        if not isinstance(obj, dict):
            return
        if name == "delta" or is_patch(obj):
            self.patch(obj)
            return
        self._flush()
        self._legacy.payload(obj)

    def close(self):
        self._flush()
        self._legacy.close()

    def patch(self, obj):
        """One top-level patch (maybe a list of them)."""
        path = obj.get("p")
        op = obj.get("o")
        if path is None and op is None:
            path, op = self._last
        elif path is None:
            path = self._last[0]
        elif op is None:
            op = self._last[1]
        if type(path) is not str or type(op) is not str:
            self._warn("skipped a patch with path %r and operation %r" % (path, op), "bad patch")
            return
        value = obj.get("v")
        # The hot path: more text for the message being streamed.
        if op == "append" and path == self._hot_path and type(value) is str:
            self._last = (path, op)
            self._append_text(value)
            return
        self._last = (path, op)  # top-level patches only: what a bare {"v": ...} refers to
        self._changed_root = False
        self._changed = False
        self._apply(path, op, value)
        if self._changed:
            self._sync()

    # applying patches

    def _apply(self, path, op, value):
        if op == "patch":
            if not isinstance(value, list):
                return self._warn("a 'patch' at %r whose value is not a list" % path)
            # Inside a list, a sub-patch without "p"/"o" reuses the previous one of the same list;
            # the list as a whole is what a later top-level bare {"v": ...} refers to.
            prev = (path, None)
            for sub in value:
                if not isinstance(sub, dict):
                    self._warn("a patch list at %r holds a %s" % (path, type(sub).__name__))
                    continue
                sub_path = sub.get("p")
                sub_op = sub.get("o")
                # paths inside a patch list are relative to the list's own path
                sub_path = path + sub_path if type(sub_path) is str else prev[0]
                sub_op = sub_op if sub_op is not None else prev[1]
                prev = (sub_path, sub_op)
                self._apply(sub_path, sub_op, sub.get("v"))
            return
        if op == "append" and path == self._hot_path and type(value) is str:
            return self._append_text(value)
        try:
            if self._pending is not None and _overlaps(path, self._hot_path):
                self._flush()
            self._apply_one(path, op, value)
        except _Skip as e:
            return self._warn("skipped %r at %r: %s" % (op, path, e), (op, path))
        self._changed = True
        if not path.startswith("/message/") and path != "/message":
            self._changed_root = True

    def _apply_one(self, path, op, value):  # noqa: C901 (one branch per operation and container kind)
        if op not in ("add", "replace", "append", "truncate", "remove"):
            raise _Skip("unknown operation")
        tokens = _tokens(path)
        if not tokens:
            if op in ("add", "replace"):
                if not isinstance(value, dict):
                    raise _Skip("a document must be an object")
                self._doc = value
            elif op == "append" and isinstance(self._doc, dict):
                _appended(self._doc, value, path)
            else:
                raise _Skip("cannot %s the whole document" % op)
            return
        if self._doc is None:
            raise _Skip("no document yet")
        parent = self._doc
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
                parent[last] = self._truncated(parent.get(last), value, path)
        elif isinstance(parent, list):
            if op == "add":
                parent.insert(_index(parent, last, path, size_ok=True), value)
                return
            i = _index(parent, last, path)
            if op == "replace":
                parent[i] = value
            elif op == "remove":
                del parent[i]
            elif op == "append":
                parent[i] = _appended(parent[i], value, path)
            else:
                parent[i] = self._truncated(parent[i], value, path)
        else:
            raise _Skip("the parent is a %s" % type(parent).__name__)

    @staticmethod
    def _truncated(current, length, path):
        if not isinstance(current, (str, list)):
            raise _Skip("nothing to truncate")
        if type(length) is not int or length < 0:
            raise _Skip("the new length must be a whole number")
        return current[:length]

    # text

    def _append_text(self, text):
        msg = self._msg
        if self._pending is None:
            try:
                node = self._doc
                tokens = _tokens(self._hot_path)
                for token in tokens[:-1]:
                    node = _child(node, token, self._hot_path)
                key = int(tokens[-1]) if isinstance(node, list) else tokens[-1]
                base = node[key]
            except (_Skip, KeyError, IndexError, TypeError):
                self._hot_path = None
                return self._warn("the text field at %r is missing" % self._last[0])
            self._pending = [node, key, [base]]
            self._pending_len = len(base)
        self._pending[2].append(text)
        before = self._pending_len
        self._pending_len = after = before + len(text)
        if msg is None or after <= msg.sent:
            return
        # As LegacyDialect does for snapshots: pass on what lies past the text already sent.
        new = text if before >= msg.sent else text[msg.sent - before:]
        msg.sent = after
        self._answer.text(msg, new)

    def _flush(self):
        """Join the text kept as pieces into the document (and so into ``Message.content``)."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            node, key, pieces = pending
            node[key] = "".join(pieces)

    # handing the document to the shared logic

    def _sync(self):
        doc = self._doc
        if not isinstance(doc, dict):
            return
        m = doc.get("message")
        # The shared logic reads the whole text from the document (a metadata-only patch
        # mid-message, such as a 2025-2026 reference filling in, must not look like text taken
        # back): join what is kept as pieces first.
        self._flush()
        if self._changed_root or not isinstance(m, dict):
            self._legacy.payload(doc)
            if isinstance(m, dict) and doc.get("error"):
                # an error patched in beside a message (payload only reads it without one)
                self._legacy.payload({"error": doc["error"]})
        else:
            self._legacy.snapshot(m)
        self._msg = msg = self._legacy.message(m.get("id")) if isinstance(m, dict) else None
        self._hot_path = None
        if msg is not None and not msg.ended:
            content = m.get("content")
            if isinstance(content, dict):
                parts = content.get("parts")
                if parts is not None:
                    if len(parts) == 1 and isinstance(parts[0], str):
                        self._hot_path = _TEXT_PATHS[0]
                elif isinstance(content.get("text"), str):
                    self._hot_path = _TEXT_PATHS[1]
                elif isinstance(content.get("result"), str):
                    self._hot_path = _TEXT_PATHS[2]

    def _warn(self, text, key=None):
        key = key or text
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(text)
