"""The values passed between converter stages.

The stages call each other rather than passing lists ("push"): a dialect stage (``legacy``:
whole-message snapshots; ``delta``: 2024 patches) calls the answer stage's ``start``, ``text``,
``update``, ``end``, ``error``, ``moderation`` and ``done`` about ``Message`` objects, and the
answer stage calls the renderer's ``prose``, ``block_open``, ``block_text``, ``block_close``,
``cite``, ``image`` and ``sandbox_file``. What needs more than a string or two travels as one of
the values here: ``Message``, ``Cite``, ``Image``, ``SandboxFile``. Nothing here does IO.

It is also the one place that knows what the text of a message is (``content_text``), how an
event is read before a dialect looks at it (``read_event``) and how a stage notes something
once for the log (``Warnings``).
"""

import ujson


class Message:
    """What is known about one upstream message of the answer (author, recipient, content...).

    ``content`` and ``metadata`` are the upstream's dicts as last seen; ``sent`` counts the
    characters of the message's text already passed on to the answer stage.
    """

    __slots__ = ("id", "role", "name", "recipient", "content_type", "language", "status",
                 "end_turn", "content", "metadata", "sent", "ended", "channel")

    def __init__(self, id, role, name=None, recipient="all", content_type="text", language=None):
        self.id = id
        self.role = role
        self.name = name
        self.recipient = recipient or "all"
        self.content_type = content_type
        self.language = language
        self.status = "in_progress"
        self.end_turn = None
        self.content = {}
        self.metadata = {}
        self.sent = 0
        self.ended = False
        self.channel = None  # 2025-2026: "final" (the answer), "commentary", "analysis"

    @classmethod
    def from_upstream(cls, m):
        author = m.get("author") or {}
        content = m.get("content") or {}
        msg = cls(m.get("id"), author.get("role"), author.get("name"),
                  m.get("recipient"), content.get("content_type"), content.get("language"))
        msg.channel = m.get("channel")
        # What the message is for can depend on its first metadata (a reasoning tool's
        # initial_text, a thinking preamble): the answer stage reads it in start().
        metadata = m.get("metadata")
        if isinstance(metadata, dict):
            msg.metadata = metadata
        msg.content = content
        return msg

    def __repr__(self):
        return "Message(%r, %s/%s -> %s, %s)" % (self.id, self.role, self.name, self.recipient, self.content_type)


def content_text(content):
    """The streamed text of a message's content, whatever its content type.

    ``thoughts`` (2025-2026 reasoning): each thought's summary and content, in order (see
    ``thoughts_text``); ``reasoning_recap``: its ``content`` line ("Thought for 15s").
    """
    parts = content.get("parts")
    if parts is not None:
        if len(parts) == 1:
            first = parts[0]
            return first if isinstance(first, str) else ""
        return "".join(p for p in parts if isinstance(p, str))
    text = content.get("text")
    if isinstance(text, str):
        return text
    result = content.get("result")
    if isinstance(result, str):
        return result
    thoughts = content.get("thoughts")
    if thoughts is not None:
        return thoughts_text(thoughts)
    recap = content.get("content")
    return recap if isinstance(recap, str) else ""


def thoughts_text(thoughts):
    """The text of a ``thoughts`` list: each thought as its summary, a blank line and its
    content; thoughts apart by a blank line; a thought with neither is left out.

    The upstream fills the last thought (its summary first, then appends to its content) and
    then appends the next: each of these only adds to the end of this text, so the text of
    a thinking message grows like any other message's text.
    """
    texts = []
    for t in thoughts if isinstance(thoughts, list) else ():
        if not isinstance(t, dict):
            continue
        summary = t.get("summary")
        body = t.get("content")
        summary = summary if isinstance(summary, str) else ""
        body = body if isinstance(body, str) else ""
        if summary and body:
            texts.append(summary + "\n\n" + body)
        elif summary or body:
            texts.append(summary or body)
    return "\n\n".join(texts)


class Warnings(list):
    """What the stages noted for the handler to log: a list of strings, each noted once.

    ``note(text, key)`` appends ``text`` unless ``key`` (default: the text itself) was noted
    before, so a patch skipped a thousand times is one line in the log."""

    def __init__(self, items=()):
        super().__init__(items)
        self._keys = set(items)

    def note(self, text, key=None):
        key = text if key is None else key
        if key not in self._keys:
            self._keys.add(key)
            self.append(text)


class _Done:
    def __repr__(self):
        return "DONE"


DONE = _Done()  # what read_event gives for ``data: [DONE]``


def read_event(ev):
    """The prologue every dialect shares: None for what carries no meaning (keep-alive pings,
    data that is not JSON, such as the timestamps PandoraNext pings carry without an event
    name), ``DONE`` for ``[DONE]``, else the decoded JSON value (the caller checks its type)."""
    if ev.event == "ping":
        return None
    data = ev.data
    if data == b"[DONE]":
        return DONE
    try:
        return ujson.loads(data)
    except ValueError:
        return None


# Values the answer stage passes to the renderer

class Cite:
    """A resolved citation marker ``【n†source】``: number, title and url of the source."""
    __slots__ = ("number", "title", "url")

    def __init__(self, number, title, url):
        self.number = number
        self.title = title
        self.url = url

    def __repr__(self):
        return "Cite(%r, %r, %r)" % (self.number, self.title, self.url)


class Image:
    """An image the upstream holds (``file-service://file-XXXX``), to fetch and show."""
    __slots__ = ("file_id", "prompt", "source")

    def __init__(self, file_id, prompt=None, source="dalle"):
        self.file_id = file_id
        self.prompt = prompt
        self.source = source

    def __repr__(self):
        return "Image(%r, %r)" % (self.file_id, self.source)


class SandboxFile:
    """A file the code interpreter wrote, linked as ``(sandbox:/mnt/data/x)`` in the answer."""
    __slots__ = ("path", "message_id")

    def __init__(self, path, message_id):
        self.path = path
        self.message_id = message_id

    def __repr__(self):
        return "SandboxFile(%r)" % self.path
