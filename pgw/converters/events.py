"""The values passed between converter stages.

The stages call each other rather than passing lists ("push"): a dialect stage (``legacy``:
whole-message snapshots; ``delta``: 2024 patches) calls the answer stage's ``start``, ``text``,
``update``, ``end``, ``error``, ``moderation`` and ``done`` about ``Message`` objects, and the
answer stage calls the renderer's ``prose``, ``block_open``, ``block_text``, ``block_close``,
``cite``, ``image`` and ``sandbox_file``. What needs more than a string or two travels as one of
the values here: ``Message``, ``Cite``, ``Image``, ``SandboxFile``. Nothing here does IO.
"""


class Message:
    """What is known about one upstream message of the answer (author, recipient, content...).

    ``content`` and ``metadata`` are the upstream's dicts as last seen; ``sent`` counts the
    characters of the message's text already passed on to the answer stage.
    """

    __slots__ = ("id", "role", "name", "recipient", "content_type", "language", "status",
                 "end_turn", "content", "metadata", "sent", "ended")

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

    @classmethod
    def from_upstream(cls, m):
        author = m.get("author") or {}
        content = m.get("content") or {}
        msg = cls(m.get("id"), author.get("role"), author.get("name"),
                  m.get("recipient"), content.get("content_type"), content.get("language"))
        return msg

    def __repr__(self):
        return "Message(%r, %s/%s -> %s, %s)" % (self.id, self.role, self.name, self.recipient, self.content_type)


def content_text(content):
    """The streamed text of a message's content, whatever its content type."""
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
    return result if isinstance(result, str) else ""


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
    """An image the upstream holds, to fetch and show: ``store`` says where its ``file_id``
    lives (``files``: ``file-service://file-XXXX``; ``sediment``: ``sediment://file_…``, the
    2025 image tool's pictures, fetched through the conversation)."""
    __slots__ = ("file_id", "prompt", "source", "store")

    def __init__(self, file_id, prompt=None, source="dalle", store="files"):
        self.file_id = file_id
        self.prompt = prompt
        self.source = source
        self.store = store

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
