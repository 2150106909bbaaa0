"""The answer stage: the dialect stage calls it about messages, it calls the renderer.

The dialect calls ``start(msg)``, ``text(msg, text)``, ``update(msg)`` (new citations or
references), ``end(msg)``, ``error(text)``, ``moderation(blocked)`` and ``done()``; ``close()``
comes once at the end of the answer. This stage decides what each upstream message is for the
person reading the answer: the user's and system's echoed messages are not part of it; assistant
prose goes to ``renderer.prose``; a thinking model's reasoning (the 2025 reasoning tool message,
``thoughts``, ``reasoning_recap`` and commentary-channel preambles) goes to
``renderer.reasoning``, never to prose; what the assistant sends to a tool (python code, browser
calls, a DALL·E prompt) and what a tool sends back are blocks (``block_open`` / ``block_text`` /
``block_close``); images a tool made go to ``renderer.image`` for the handler to fetch.

Prose needs a closer look in three places, and this module is the one that knows them:
citation markers ``【11†source】`` go to ``renderer.cite`` (url None: the marker has no source
and must vanish); links to files the code wrote, ``(sandbox:/mnt/data/x.csv)``, go to
``renderer.sandbox_file``; 2025-2026 markers ``\\ue200cite\\ue202turn0search0\\ue201`` are
resolved through ``metadata.content_references`` into ``renderer.links`` (a citation), plain
prose (an entity's name) or nothing. No private-use character (U+E000-U+F8FF) is ever passed
on. Text that may still become a marker or a link is held back until it is known; how any of
this looks is the renderer's business.
"""

import re
from typing import Any, Optional

import ujson

from pgw.converters.events import Cite, Image, Message, SandboxFile, content_text
from pgw.converters.render import Source

# 【11†source】, 【11†来源】, and the 2024 form 【4:0†source】; the first number is the one
# metadata.citations[].metadata.extra.cited_message_idx names.
_MARKER = re.compile(r"【(\d+)(?::\d+)?†([^】\n]{0,40})】")
# What the start of a marker may look like while it is still arriving.
_MARKER_PREFIX = re.compile(r"【\d*(?::\d*)?(?:†[^】\n]{0,40})?\Z")
_MARKER_MAX = 64
# How much prose may follow a marker whose source has not arrived before it is given up.
_CITE_WAIT = 200
# Where prose needs a closer look: a marker, a link to a file the code interpreter wrote, a
# private-use character (2025-2026 markers). _ANY is the one-scan test for all of them.
_ANY = re.compile("[【(\\[\ue000-\uf8ff]")
_SPECIAL = re.compile("【|\\(sandbox:|\\[|[\ue000-\uf8ff]")
_PUA = re.compile("[\ue000-\uf8ff]")
_SANDBOX = "(sandbox:"
# A path may hold balanced brackets, as markdown link targets may: "report (1).csv".
_SANDBOX_LINK = re.compile(r"\(sandbox:(/mnt/data/(?:[^()\n]|\([^()\n]{0,64}\)){1,255})\)")
_SANDBOX_PREFIX = re.compile(r"\(sandbox:(?:[^()\n]|\([^()\n]{0,64}\))*(?:\([^()\n]{0,64})?\Z")
_SANDBOX_MAX = len(_SANDBOX) + 257  # a longer "link" is not one: stop holding it back
# The label of a markdown link, "[report.csv](sandbox:...)": held until what follows it shows
# whether it labels a file (bot mode then writes the label and the file's bare URL).
_LABEL = re.compile(r"\[([^\[\]\n]{0,255})\]")
_LABEL_OPEN = re.compile(r"\[[^\[\]\n]{0,255}\Z")

# 2025-2026 markers: U+E200 opens, U+E202 separates fields, U+E201 closes.
OPEN, CLOSE, SEP = "\ue200", "\ue201", "\ue202"
# The longest marker seen in captures is a few hundred characters (a products list); an opener
# not closed within this many is not a marker and is dropped on its own.
_REF_MARKER_MAX = 4096
# What an opener that never closes takes with it: the marker's kind and fields, to the first space.
_UNCLOSED = re.compile("\ue200[^\\s\ue200\ue201]*")
# How much prose may wait behind a closed marker whose reference has not arrived. Captures patch
# the reference in the same list as the marker's last character or the next event; holding for
# ever would stall the stream on a reference that never comes.
_REF_WAIT = 1000
_ALT_LINK = re.compile(r"\[([^\[\]\n]+)\]\((https?://[^()\s]+)\)")
_CITATION_TYPES = frozenset(("grouped_webpages", "webpage", "grouped_webpages_model_predicted_fallback"))

_FINISH: dict[Any, str] = {"stop": "stop", "max_tokens": "length", "interrupted": "stop",
                           "content_filter": "content_filter"}

PROSE, BLOCK, HIDDEN, REASONING = "prose", "block", "hidden", "reasoning"

# The 2025 reasoning tool (o1, o3-mini) has an opaque name; its metadata gives it away.
_REASONING_TOOL = "a8km123"
_OTHER_TOOLS = frozenset(("python", "browser", "web", "web.run", "dalle.text2im", "t2uay3k.sj1i4kz", "image_gen",
                          "file_search", "myfiles_browser", "bio", "canmore"))


# The 2025 image tool (gpt-4o / gpt-image): its call is a prompt, as DALL·E's was.
IMAGE_TOOLS = frozenset(("t2uay3k.sj1i4kz", "image_gen"))
# The tool message an account out of image quota gets instead of a picture.
IMAGE_QUOTA_ERROR = "ChatGPTAgentToolRateLimitException"
# Where an asset pointer's file lives: scheme -> Image.store.
_STORES = (("file-service://", "files"), ("sediment://", "sediment"))


def _tool_call_kind(recipient):
    if recipient == "python":
        return "code", "python"
    if recipient == "browser":
        return "browser", None
    if recipient.startswith("dalle") or recipient in IMAGE_TOOLS:
        return "dalle_prompt", "json"
    return "tool_call", None


def _file_id(asset_pointer: Any) -> Optional[tuple[str, str]]:
    """``(store, file id)`` of an asset pointer the gateway can fetch, or None."""
    if isinstance(asset_pointer, str):
        for scheme, store in _STORES:
            if asset_pointer.startswith(scheme) and len(asset_pointer) > len(scheme):
                return store, asset_pointer[len(scheme):]
    return None


def _call_prompt(text: str) -> Optional[str]:
    """The prompt of an image tool call (``{"prompt": "...", "size": ...}``), or None."""
    try:
        call = ujson.loads(text)
    except ValueError:
        return None
    prompt = call.get("prompt") if isinstance(call, dict) else None
    return prompt if isinstance(prompt, str) else None


def is_reasoning(msg: Message) -> bool:
    """Whether ``msg`` is a thinking model's reasoning rather than the answer (§5.3)."""
    if msg.content_type in ("thoughts", "reasoning_recap"):
        return True
    metadata = msg.metadata
    if msg.role == "tool":
        if msg.name == _REASONING_TOOL:
            return True
        # Other names of the same tool: its status lines give it away (tools that do other
        # work keep their role even if they ever carry such lines).
        return msg.name not in _OTHER_TOOLS and ("initial_text" in metadata or "finished_text" in metadata)
    if msg.role == "assistant" and msg.recipient == "all":
        # A thinking preamble ("I'll look that up first") says what the model is about to do
        # while it thinks: the web client shows it with the thoughts, never as the answer.
        return (msg.channel in ("commentary", "analysis")
                or bool(metadata.get("is_thinking_preamble_message")))
    return False


def _strip_markers(text: str, inside: bool) -> tuple[str, bool]:
    """``text`` without 2025-2026 markers or other private-use characters, for text that is
    shown as it is (tool material, reasoning). ``inside``: a marker opened in earlier text."""
    if not inside and _PUA.search(text) is None:
        return text, False
    out = []
    for ch in text:
        if inside:
            if ch == CLOSE:
                inside = False
        elif ch == OPEN:
            inside = True
        elif not "\ue000" <= ch <= "\uf8ff":
            out.append(ch)
    return "".join(out), inside


def _clean(text: Any) -> str:
    return _PUA.sub("", text) if isinstance(text, str) else ""


def _sources(entries: Any) -> list[Source]:
    """``[{"title", "url", "attribution"}]`` (a citation's items, a footnote's sources)."""
    sources = []
    for e in entries if isinstance(entries, list) else ():
        if isinstance(e, dict) and isinstance(e.get("url"), str) and e["url"]:
            sources.append(Source(_clean(e.get("title")), _PUA.sub("", e["url"]), _clean(e.get("attribution"))))
    return sources


def _pending(ref: dict) -> bool:
    """The upstream is still filling this reference in (it creates it as U+E200 arrives)."""
    return bool(ref.get("invalid")) or ref.get("status") not in (None, "done")


def _entity_name(fields: list[str]) -> str:
    """An entity marker's own name: ``entity<SEP>["software","Node.js","…"]``."""
    if len(fields) > 1:
        try:
            value = ujson.loads(fields[1])
        except ValueError:
            return ""
        if isinstance(value, list) and len(value) > 1 and isinstance(value[1], str):
            return _clean(value[1])
    return ""


class Answer:
    """``renderer``: where the answer goes; ``echo_ids``: ids of the messages the request sent
    (the upstream may echo them back)."""

    def __init__(self, renderer: Any, echo_ids: Any = ()):
        self._renderer = renderer
        self._echo_ids = frozenset(echo_ids)
        self.finish_reason: Optional[str] = None   # from the upstream's finish_details, when it says
        self.upstream_error: Optional[str] = None  # an in-stream error message
        self.upstream_error_code: Optional[str] = None  # ... and its error_code ("usage_limit"), if any
        self.resume_conversation_token: Optional[str] = None  # a token for resuming this turn elsewhere
        self.handoff_to: Optional[tuple] = None  # (turn_exchange_id, options): the answer goes on elsewhere
        self.complete = False          # the upstream said the answer is complete
        # What the answer still waits for when its SSE body ends (pgw.runtime follows it):
        self.image_tasks: dict = {}    # placeholder tool message id -> image task id: no picture yet
        self.image_prompt: Optional[str] = None  # the prompt of the last image tool call
        self.last_prose_id: Optional[str] = None  # the last assistant message (a continuation's parent)
        self.blocked = False           # moderation blocked the answer
        self._open: Optional[str] = None  # kind of the block being written, if any
        self._role: dict = {}          # message id -> PROSE / BLOCK / HIDDEN / REASONING
        self._held = ""                # prose held back: a citation marker still arriving
        self._held_msg: Optional[Message] = None
        self._seen: dict = {}          # prose message id -> characters of its text received
        self._reasoned: set = set()    # reasoning messages whose text has begun
        self._inside = False           # a marker is open in the tool material or reasoning text
        self._used: set = set()        # ids of the references markers were shown with

    # what the dialect stage calls

    def start(self, msg: Message) -> None:
        """A new upstream message."""
        if msg.id in self._echo_ids:
            role = HIDDEN  # part of the question, not of the answer
        elif is_reasoning(msg):
            role = REASONING
        elif msg.role == "assistant" and msg.recipient == "all":
            role = PROSE
            self._close_block()
        elif msg.role == "assistant" or (msg.role == "tool" and msg.name == "python"):
            role = BLOCK
            self._flush_held()
            self._close_block()
        else:
            role = HIDDEN  # user/system echoes, browser display and quote messages, dalle's note
        self._role[msg.id] = role
        self._inside = False

    def text(self, msg: Message, text: str) -> None:
        """More text of ``msg``."""
        role = self._role.get(msg.id)
        if role is PROSE:
            self._seen[msg.id] = self._seen.get(msg.id, 0) + len(text)
            self._prose(msg, text)
        elif role is BLOCK:
            if self._open is None:
                self._open_block(msg)
            text, self._inside = _strip_markers(text, self._inside)
            self._renderer.block_text(text)
        elif role is REASONING:
            self._reason(msg, text)

    def update(self, msg: Message) -> None:
        """``msg``'s citations or references changed: a marker held for them may resolve now.
        After its end: why it ended may have come in a patch after its status."""
        if msg.ended:
            if self._role.get(msg.id) is PROSE:
                self._finish_reason(msg)
            return
        if self._held and self._held_msg is msg:
            held, self._held = self._held, ""
            self._prose(msg, held)

    def end(self, msg: Message) -> None:
        """``msg`` has ended: its content and metadata are whole."""
        role = self._role.get(msg.id)
        if role is PROSE:
            self._flush_held()
            self.last_prose_id = msg.id
            self._finish_reason(msg)
            self._footnotes(msg)
        elif role is BLOCK:
            self._close_block()
            if msg.recipient in IMAGE_TOOLS:
                self.image_prompt = _call_prompt(content_text(msg.content)) or self.image_prompt
        elif role is REASONING and msg.role == "tool":
            finished = msg.metadata.get("finished_text")
            if isinstance(finished, str) and finished:
                self._renderer.reasoning_break(line=True)
                self._renderer.reasoning(_clean(finished))
        if msg.role == "tool":
            self._images(msg)

    def _finish_reason(self, msg: Message) -> None:
        details = msg.metadata.get("finish_details")
        reason = _FINISH.get(details.get("type")) if isinstance(details, dict) else None
        if reason:
            self.finish_reason = reason

    def error(self, text: str, code: Optional[str] = None) -> None:
        """An error message in the stream (``code``: the upstream's ``error_code``)."""
        self.upstream_error = text
        self.upstream_error_code = code

    def resume_token(self, token: str) -> None:
        """``resume_conversation_token``: what resuming this turn elsewhere needs."""
        self.resume_conversation_token = token

    def handoff(self, turn_exchange_id: Any, options: Any) -> None:
        """``stream_handoff``: the rest of the answer is not in this response."""
        self.handoff_to = (turn_exchange_id, options)

    def moderation(self, blocked: bool) -> None:
        self.blocked = self.blocked or blocked

    def done(self) -> None:
        """The upstream said ``[DONE]`` (or ``message_stream_complete``)."""
        self.complete = True

    def close(self) -> None:
        """End of the answer: close what is open, so fences never dangle."""
        self._flush_held()
        self._close_block()

    # reasoning

    def _reason(self, msg: Message, text: str) -> None:
        text, self._inside = _strip_markers(text, self._inside)
        if not text:
            return
        renderer = self._renderer
        if msg.id not in self._reasoned:
            self._reasoned.add(msg.id)
            renderer.reasoning_break(line=msg.content_type == "reasoning_recap")
        renderer.reasoning(text)

    # blocks and images

    def _open_block(self, msg: Message) -> None:
        if msg.role == "tool":
            kind, language = "output", None
        else:
            kind, language = _tool_call_kind(msg.recipient)
        self._open = kind
        self._renderer.block_open(kind, language)

    def _close_block(self) -> None:
        if self._open is not None:
            self._renderer.block_close(self._open)
            self._open = None

    def _images(self, msg: Message) -> None:
        """Images a tool made: DALL·E's and the image tool's parts, and charts the code
        interpreter displayed. The image tool's placeholder (``async_task_type: image_gen``)
        without a picture yet is noted in ``image_tasks``: the picture comes later, in a poll of
        the conversation that reads this message again. An account out of image quota gets a
        ``system_error`` message instead: a rate limit, with the upstream's words."""
        content = msg.content
        if content.get("content_type") == "system_error" and content.get("name") == IMAGE_QUOTA_ERROR:
            self.error(content_text(content) or "the image generation quota is used up", "usage_limit")
            self.image_tasks.pop(msg.id, None)
            return
        shown = 0
        for part in content.get("parts") or ():
            if isinstance(part, dict):
                asset = _file_id(part.get("asset_pointer"))
                if asset:
                    dalle = (part.get("metadata") or {}).get("dalle") or {}
                    source = "dalle" if msg.name and msg.name.startswith("dalle") else "image_gen"
                    self._renderer.image(Image(asset[1], dalle.get("prompt") or self.image_prompt, source, asset[0]))
                    shown += 1
        metadata = msg.metadata
        if metadata.get("async_task_type") == "image_gen" or metadata.get("image_gen_async"):
            if shown:
                self.image_tasks.pop(msg.id, None)
            else:
                self.image_tasks[msg.id] = metadata.get("image_gen_task_id")
        aggregate = metadata.get("aggregate_result") or {}
        for item in aggregate.get("messages") or ():
            if isinstance(item, dict) and item.get("message_type") == "image":
                asset = _file_id(item.get("image_url"))
                if asset:
                    self._renderer.image(Image(asset[1], None, "python", asset[0]))

    # prose and citation markers

    def _prose(self, msg: Message, text: str, final: bool = False) -> None:
        """Pass prose on, resolving markers and sandbox links. ``final``: no more text will come
        for ``msg`` (set at its end only: the dialect may mark a message ended while its last
        text is still being passed on). Text that may still become a marker or a link is held."""
        if self._held:
            text = self._held + text
            self._held = ""
        if _ANY.search(text) is None:
            self._renderer.prose(text)
            return
        # Where text[0] stands in the message's text (held text is always its unsent end):
        # references give the marker's place in code points.
        base = self._seen.get(msg.id, 0) - len(text)
        pos = 0
        while True:
            m = _SPECIAL.search(text, pos)
            if m is None:
                self._tail(msg, text, pos, final)
                return
            start = m.start()
            if start > pos:
                self._renderer.prose(text[pos:start])
            c = text[start]
            if c == "(":
                next_pos = self._sandbox_link(msg, text, start, final)
            elif c == "【":
                next_pos = self._marker(msg, text, start, final)
            elif c == "[":
                next_pos = self._labelled_link(msg, text, start, final)
            elif c == OPEN:
                next_pos = self._reference_marker(msg, text, start, final, base)
            else:
                next_pos = start + 1  # U+E203/U+E204 around cited prose, U+E206, strays: dropped
            if next_pos is None:
                return
            pos = next_pos

    def _marker(self, msg: Message, text: str, start: int, final: bool) -> Optional[int]:
        """A ``【`` at ``start``: the position after what was handled, or None (held)."""
        m = _MARKER.match(text, start)
        if m:
            number = int(m.group(1))
            cite = self._citation(msg, number)
            if cite is None and not final and len(text) - m.end() < _CITE_WAIT:
                # Its source may arrive in a later event: wait a little, keeping order. Not
                # for ever: all later prose would stall and be re-scanned with every event.
                self._held, self._held_msg = text[start:], msg
                return None
            # A marker with no source vanishes, never shown raw.
            self._renderer.cite(cite or Cite(number, None, None))
            return m.end()
        rest = text[start:start + _MARKER_MAX]
        if not final and len(text) - start < _MARKER_MAX and _MARKER_PREFIX.match(rest):
            self._held, self._held_msg = text[start:], msg  # could still become a marker
            return None
        self._renderer.prose("【")  # a bracket that is not a citation passes through
        return start + 1

    def _reference_marker(self, msg: Message, text: str, start: int, final: bool, base: int) -> Optional[int]:
        """A U+E200 at ``start``: held until the marker closes and its reference is known."""
        close = text.find(CLOSE, start + 1)
        reopen = text.find(OPEN, start + 1, close if close >= 0 else len(text))
        if reopen < 0 and close < 0 and not final and len(text) - start < _REF_MARKER_MAX:
            self._held, self._held_msg = text[start:], msg
            return None
        if reopen >= 0 or close < 0:
            # An opener that never closed: not a marker. It vanishes with the kind and fields
            # that follow it up to the first space, so the prose after it stays.
            self._renderer.links(())
            unclosed = _UNCLOSED.match(text, start)
            return unclosed.end() if unclosed is not None else start + 1
        end = close + 1
        marker = text[start:end]
        ref = self._reference(msg, marker, base + start)
        if (ref is None or _pending(ref)) and not final and len(text) - end < _REF_WAIT:
            self._held, self._held_msg = text[start:], msg
            return None
        if ref is not None:
            self._used.add(id(ref))
        self._show_marker(marker, ref)
        return end

    def _show_marker(self, marker: str, ref: Optional[dict]) -> None:
        renderer = self._renderer
        fields = marker[1:-1].split(SEP)
        kind = ref.get("type") if ref is not None else None
        if kind == "entity" or (kind is None and fields[0] == "entity"):
            name = _clean(ref.get("alt")) if ref is not None else ""
            name = name or _entity_name(fields)
            if name:
                renderer.prose(name)
            else:
                renderer.links(())
        elif kind in _CITATION_TYPES and ref is not None:
            sources = _sources(ref.get("items"))
            if not sources and isinstance(ref.get("url"), str):
                sources = _sources([ref])
            if not sources and isinstance(ref.get("alt"), str):
                # only the ready rendering: "([OpenAI Help Center](https://help.openai.com/…))"
                sources = _sources([{"attribution": t, "url": u} for t, u in _ALT_LINK.findall(ref["alt"])])
            renderer.links(sources)
        else:
            renderer.links(())  # hidden, unresolved and kinds without text vanish

    def _reference(self, msg: Message, marker: str, offset: int) -> Optional[dict]:
        """The ``content_references`` entry of the marker at ``offset`` of ``msg``'s text: the
        one whose ``matched_text`` is the marker and whose ``start_idx`` is that place; else
        the first such entry no earlier marker used (offsets drift when the upstream took text
        back); else one without ``matched_text`` that spans exactly that place."""
        refs = msg.metadata.get("content_references")
        if not isinstance(refs, list):
            return None
        found = None
        for ref in refs:
            if not isinstance(ref, dict):
                continue
            matched = ref.get("matched_text")
            if matched == marker:
                if ref.get("start_idx") == offset:
                    return ref
                if found is None and id(ref) not in self._used:
                    found = ref
            elif (found is None and matched is None and ref.get("start_idx") == offset
                  and ref.get("end_idx") == offset + len(marker)):
                found = ref
        return found

    def _footnotes(self, msg: Message) -> None:
        refs = msg.metadata.get("content_references")
        for ref in refs if isinstance(refs, list) else ():
            if isinstance(ref, dict) and ref.get("type") == "sources_footnote":
                sources = _sources(ref.get("sources"))
                if sources:
                    self._renderer.footnote(sources)

    def _labelled_link(self, msg: Message, text: str, start: int, final: bool) -> Optional[int]:
        """A ``[`` at ``start``: ``[label](sandbox:/mnt/data/x)`` is one file with its label;
        anything else passes through (held while it could still become one)."""
        m = _LABEL.match(text, start)
        if m is None:
            if not final and _LABEL_OPEN.match(text, start):
                self._held, self._held_msg = text[start:], msg  # the label is still arriving
                return None
        else:
            after = m.end()
            link = _SANDBOX_LINK.match(text, after)
            if link:
                label = _strip_markers(m.group(1), False)[0]  # no marker inside a label either
                self._renderer.sandbox_file(SandboxFile(link.group(1), msg.id), label)
                return link.end()
            rest = text[after:after + len(_SANDBOX)]
            if len(rest) < len(_SANDBOX):
                arriving = _SANDBOX.startswith(rest)
            else:
                arriving = len(text) - after < _SANDBOX_MAX and _SANDBOX_PREFIX.match(text, after) is not None
            if arriving and not final:
                self._held, self._held_msg = text[start:], msg
                return None
        self._renderer.prose("[")
        return start + 1

    def _sandbox_link(self, msg: Message, text: str, start: int, final: bool) -> Optional[int]:
        """``(sandbox:`` at ``start``: the link's target is the file (the renderer writes it)."""
        m = _SANDBOX_LINK.match(text, start)
        if m:
            self._renderer.sandbox_file(SandboxFile(m.group(1), msg.id))
            return m.end()
        if not final and len(text) - start < _SANDBOX_MAX and _SANDBOX_PREFIX.match(text, start):
            self._held, self._held_msg = text[start:], msg  # the link is still arriving
            return None
        self._renderer.prose("(")
        return start + 1

    def _tail(self, msg: Message, text: str, pos: int, final: bool) -> None:
        """The rest of the text has no marker or link, but its end may be the start of one."""
        cut = len(text)
        if not final:
            bracket = text.rfind("(", max(pos, len(text) - len(_SANDBOX)))
            if bracket >= 0 and _SANDBOX.startswith(text[bracket:]):
                cut = bracket
        if pos < cut:
            self._renderer.prose(text[pos:cut])
        if cut < len(text):
            self._held, self._held_msg = text[cut:], msg

    def _flush_held(self) -> None:
        if self._held:
            held, self._held = self._held, ""
            assert self._held_msg is not None
            self._prose(self._held_msg, held, final=True)

    @staticmethod
    def _citation(msg: Message, number: int) -> Optional[Cite]:
        for c in msg.metadata.get("citations") or ():
            meta = c.get("metadata") or {}
            if (meta.get("extra") or {}).get("cited_message_idx") == number:
                return Cite(number, meta.get("title") or "", meta.get("url") or "")
        return None
