"""The values and interfaces passed between converter stages.

The stages call each other rather than passing lists ("push"): a dialect stage (``legacy``:
whole-message snapshots; ``delta``: v1 patches) calls the answer stage (``AnswerStage``) about
``Message`` objects, and the answer stage calls the renderer (``Renderer``). The two interfaces
are written once here as ``typing.Protocol``s; what needs more than a string or two travels as
one of the values here: ``Message``, ``Cite``, ``Image``, ``SandboxFile``. Nothing here does IO.

It is also the one place that knows what the text of a message is (``content_text``), how an
event is read before a dialect looks at it (``read_event``) and how a stage notes something
once for the log (``Warnings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import ujson

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pgw.converters.render import Source


@dataclass(slots=True, eq=False)
class Message:
    """What is known about one upstream message of the answer (author, recipient, content...).

    ``content`` and ``metadata`` are the upstream's dicts as last seen; ``sent`` counts the
    characters of the message's text already passed on to the answer stage. Compared by
    identity: two messages are the same only if they are one object.
    """

    id: Any
    role: str | None
    name: str | None = None
    recipient: str = "all"
    content_type: str | None = "text"
    language: str | None = None
    status: str = "in_progress"
    end_turn: bool | None = None
    content: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    ended: bool = False
    channel: str | None = None  # 2025-2026: "final" (the answer), "commentary", "analysis"

    @classmethod
    def from_upstream(cls, m: dict[str, Any]) -> Message:
        author = m.get("author")
        author = author if isinstance(author, dict) else {}
        content = m.get("content")
        content = content if isinstance(content, dict) else {}
        msg = cls(m.get("id"), author.get("role"), author.get("name"),
                  m.get("recipient") or "all", content.get("content_type"), content.get("language"))
        msg.channel = m.get("channel")
        # What the message is for can depend on its first metadata (a reasoning tool's
        # initial_text, a thinking preamble): the answer stage reads it in start().
        metadata = m.get("metadata")
        if isinstance(metadata, dict):
            msg.metadata = metadata
        msg.content = content
        return msg

    def __repr__(self) -> str:
        return "Message(%r, %s/%s -> %s, %s)" % (self.id, self.role, self.name, self.recipient, self.content_type)


def content_text(content: dict[str, Any]) -> str:
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


def thoughts_text(thoughts: Any) -> str:
    """The text of a ``thoughts`` list: each thought as its summary, a blank line and its
    content; thoughts apart by a blank line; a thought with neither is left out.

    The upstream fills the last thought (its summary first, then appends to its content) and
    then appends the next: each of these only adds to the end of this text, so the text of
    a thinking message grows like any other message's text.
    """
    texts: list[str] = []
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


class Warnings(list[str]):
    """What the stages noted for the handler to log: a list of strings, each noted once.

    ``note(text, key)`` appends ``text`` unless ``key`` (default: the text itself) was noted
    before, so a patch skipped a thousand times is one line in the log."""

    def __init__(self, items: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(items)
        self._keys: set[object] = set(items)

    def note(self, text: str, key: object = None) -> None:
        key = text if key is None else key
        if key not in self._keys:
            self._keys.add(key)
            self.append(text)


class _Done:
    def __repr__(self) -> str:
        return "DONE"


DONE = _Done()  # what read_event gives for ``data: [DONE]``


class _Event(Protocol):
    event: str | None
    data: bytes


def read_event(ev: _Event) -> Any:
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

@dataclass(slots=True)
class Cite:
    """A resolved citation marker ``【n†source】``: number, title and url of the source (url
    None: the marker has no source and vanishes)."""
    number: int
    title: str | None
    url: str | None

    def __repr__(self) -> str:
        return "Cite(%r, %r, %r)" % (self.number, self.title, self.url)


@dataclass(slots=True)
class Image:
    """An image the upstream holds, to fetch and show (``store``: where its ``file_id`` lives)."""
    file_id: str
    prompt: str | None = None
    source: str = "dalle"
    store: str = "files"   # where file_id lives: "files" (file-service://) or "sediment" (sediment://, fetched
    #                        through the conversation: the 2025 image tool's pictures)

    def __repr__(self) -> str:
        return "Image(%r, %r)" % (self.file_id, self.source)


@dataclass(slots=True)
class SandboxFile:
    """A file the code interpreter wrote, linked as ``(sandbox:/mnt/data/x)`` in the answer."""
    path: str
    message_id: Any

    def __repr__(self) -> str:
        return "SandboxFile(%r)" % self.path


# The two interfaces between the stages

class AnswerStage(Protocol):
    """What a dialect stage calls (``converters.answer.Answer``; tests' recorders)."""

    def start(self, msg: Message) -> None:
        """A new upstream message."""

    def text(self, msg: Message, text: str) -> None:
        """More text of ``msg`` (what lies past ``msg.sent`` before the call)."""

    def update(self, msg: Message) -> None:
        """``msg``'s citations changed."""

    def end(self, msg: Message) -> None:
        """``msg`` has ended: its content and metadata are whole."""

    def error(self, text: str, code: str | None = None) -> None:
        """An in-stream error; ``code``: the upstream's ``error_code`` (``usage_limit``)."""

    def moderation(self, blocked: bool) -> None:
        """A moderation verdict."""

    def resume_token(self, token: str) -> None:
        """``resume_conversation_token``: what resuming this turn elsewhere needs."""

    def handoff(self, turn_exchange_id: Any, options: list[Any]) -> None:
        """``stream_handoff``: the rest of the answer is not in this response."""

    def done(self) -> None:
        """The upstream said the answer is complete (``[DONE]``, ``message_stream_complete``)."""


class Renderer(Protocol):
    """What the answer stage calls (``converters.render``), and what ``Conversion`` takes."""

    def prose(self, text: str) -> None: ...

    def block_open(self, kind: str, language: str | None = None) -> None: ...

    def block_text(self, text: str) -> None: ...

    def block_close(self, kind: str) -> None: ...

    def cite(self, cite: Cite) -> None: ...

    def image(self, image: Image) -> None: ...

    def sandbox_file(self, file: SandboxFile) -> None: ...

    def links(self, sources: Sequence[Source]) -> None:
        """A 2025-2026 citation: links to its sources."""

    def footnote(self, sources: Iterable[Source]) -> None:
        """The answer's source list (``sources_footnote``)."""

    def reasoning(self, text: str) -> None:
        """More reasoning text (never part of the answer's content)."""

    def reasoning_break(self, line: bool = False) -> None:
        """Reasoning resumes after a pause (a new thought, another reasoning message)."""

    def take(self) -> list[Any]:
        """What was written since the last call: ``str`` and actions."""
        ...

    def close(self) -> None:
        """The answer has ended: anything still to say."""
