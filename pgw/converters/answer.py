"""The answer stage: the dialect stage calls it about messages, it calls the renderer.

The dialect calls ``start(msg)``, ``text(msg, text)``, ``update(msg)`` (new citations),
``end(msg)``, ``error(text)``, ``moderation(blocked)`` and ``done()``; ``close()`` comes once at
the end of the answer. This stage decides what each upstream message is for the person reading
the answer: the user's and system's echoed messages are not part of it; assistant prose goes to
``renderer.prose``; what the assistant sends to a tool (python code, browser calls, a DALL·E
prompt) and what a tool sends back are blocks (``block_open`` / ``block_text`` /
``block_close``); images a tool made go to ``renderer.image`` for the handler to fetch; citation
markers ``【11†source】`` go to ``renderer.cite`` (url None: the marker has no source and must
vanish); links to files the code wrote, ``(sandbox:/mnt/data/x.csv)``, go to
``renderer.sandbox_file`` between the brackets. How any of this looks is the renderer's business.
"""

import re

import ujson

from pgw.converters.events import Cite, Image, SandboxFile, content_text

# 【11†source】, 【11†来源】, and the 2024 form 【4:0†source】; the first number is the one
# metadata.citations[].metadata.extra.cited_message_idx names.
_MARKER = re.compile(r"【(\d+)(?::\d+)?†([^】\n]{0,40})】")
# What the start of a marker may look like while it is still arriving.
_MARKER_PREFIX = re.compile(r"【\d*(?::\d*)?(?:†[^】\n]{0,40})?\Z")
_MARKER_MAX = 64
# How much prose may follow a marker whose source has not arrived before it is given up.
_CITE_WAIT = 200
# Where prose needs a closer look: a marker, or a link to a file the code interpreter wrote.
_SPECIAL = re.compile(r"【|\(sandbox:")
_SANDBOX = "(sandbox:"
# A path may hold balanced brackets, as markdown link targets may: "report (1).csv".
_SANDBOX_LINK = re.compile(r"\(sandbox:(/mnt/data/(?:[^()\n]|\([^()\n]{0,64}\)){1,255})\)")
_SANDBOX_PREFIX = re.compile(r"\(sandbox:(?:[^()\n]|\([^()\n]{0,64}\))*(?:\([^()\n]{0,64})?\Z")
_SANDBOX_MAX = len(_SANDBOX) + 257  # a longer "link" is not one: stop holding it back

_FINISH = {"stop": "stop", "max_tokens": "length", "interrupted": "stop", "content_filter": "content_filter"}

PROSE, BLOCK, HIDDEN = "prose", "block", "hidden"


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


def _file_id(asset_pointer):
    """``(store, file id)`` of an asset pointer the gateway can fetch, or None."""
    if isinstance(asset_pointer, str):
        for scheme, store in _STORES:
            if asset_pointer.startswith(scheme) and len(asset_pointer) > len(scheme):
                return store, asset_pointer[len(scheme):]
    return None


def _call_prompt(text):
    """The prompt of an image tool call (``{"prompt": "...", "size": ...}``), or None."""
    try:
        call = ujson.loads(text)
    except ValueError:
        return None
    prompt = call.get("prompt") if isinstance(call, dict) else None
    return prompt if isinstance(prompt, str) else None


class Answer:
    """``renderer``: where the answer goes; ``echo_ids``: ids of the messages the request sent
    (the upstream may echo them back)."""

    def __init__(self, renderer, echo_ids=()):
        self._renderer = renderer
        self._echo_ids = frozenset(echo_ids)
        self.finish_reason = None      # from the upstream's finish_details, when it says
        self.upstream_error = None     # an in-stream error message
        self.complete = False          # the upstream said the answer is complete
        self.blocked = False           # moderation blocked the answer
        self._open = None              # kind of the block being written, if any
        self._role = {}                # message id -> PROSE / BLOCK / HIDDEN
        self._held = ""                # prose held back: a citation marker still arriving
        self._held_msg = None
        # What the answer still waits for when its SSE body ends (pgw.runtime follows it):
        self.upstream_error_code = None  # e.g. usage_limit: a rate limit, not a failure
        self.image_tasks = {}          # placeholder tool message id -> image task id: no picture yet
        self.image_prompt = None       # the prompt of the last image tool call
        self.last_prose_id = None      # the last assistant message of the answer (a continuation's parent)
        self.conduit_token = None      # resume_conversation_token: resume the turn elsewhere
        self.handoff_turn = None       # stream_handoff: the answer is not in this SSE body
        self.handoff_options = ()

    # what the dialect stage calls

    def start(self, msg):
        """A new upstream message."""
        if msg.id in self._echo_ids:
            role = HIDDEN  # part of the question, not of the answer
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

    def text(self, msg, text):
        """More text of ``msg``."""
        role = self._role.get(msg.id)
        if role is PROSE:
            self._prose(msg, text)
        elif role is BLOCK:
            if self._open is None:
                self._open_block(msg)
            self._renderer.block_text(text)

    def update(self, msg):
        """``msg``'s citations changed: a marker held for its source may resolve now."""
        if self._held and self._held_msg is msg:
            held, self._held = self._held, ""
            self._prose(msg, held)

    def end(self, msg):
        """``msg`` has ended: its content and metadata are whole."""
        role = self._role.get(msg.id)
        if role is PROSE:
            self._flush_held()
            self.last_prose_id = msg.id
            details = msg.metadata.get("finish_details") or {}
            reason = _FINISH.get(details.get("type"))
            if reason:
                self.finish_reason = reason
        elif role is BLOCK:
            self._close_block()
            if msg.recipient in IMAGE_TOOLS:
                self.image_prompt = _call_prompt(content_text(msg.content)) or self.image_prompt
        if msg.role == "tool":
            self._images(msg)

    def error(self, text, code=None):
        """An error message in the stream; ``code``: the upstream's ``error_code`` (``usage_limit``: a cap)."""
        self.upstream_error = text
        self.upstream_error_code = code

    def resume_token(self, token):
        """``resume_conversation_token``: what resuming this turn elsewhere takes."""
        self.conduit_token = token

    def handoff(self, turn_exchange_id, options):
        """``stream_handoff``: the rest of the answer is not in this SSE body."""
        self.handoff_turn = turn_exchange_id or ""
        self.handoff_options = options or ()

    def moderation(self, blocked):
        self.blocked = self.blocked or blocked

    def done(self):
        """The upstream said ``[DONE]`` (or ``message_stream_complete``)."""
        self.complete = True

    def close(self):
        """End of the answer: close what is open, so fences never dangle."""
        self._flush_held()
        self._close_block()

    # blocks and images

    def _open_block(self, msg):
        if msg.role == "tool":
            kind, language = "output", None
        else:
            kind, language = _tool_call_kind(msg.recipient)
        self._open = kind
        self._renderer.block_open(kind, language)

    def _close_block(self):
        if self._open is not None:
            self._renderer.block_close(self._open)
            self._open = None

    def _images(self, msg):
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

    def _prose(self, msg, text, final=False):
        """Pass prose on, resolving markers and sandbox links. ``final``: no more text will come
        for ``msg`` (set at its end only: the dialect may mark a message ended while its last
        text is still being passed on). Text that may still become a marker or a link is held."""
        if self._held:
            text = self._held + text
            self._held = ""
        if "【" not in text and "(" not in text:
            self._renderer.prose(text)
            return
        pos = 0
        while True:
            m = _SPECIAL.search(text, pos)
            if m is None:
                self._tail(msg, text, pos, final)
                return
            start = m.start()
            if start > pos:
                self._renderer.prose(text[pos:start])
            if text[start] == "(":
                pos = self._sandbox_link(msg, text, start, final)
            else:
                pos = self._marker(msg, text, start, final)
            if pos is None:
                return

    def _marker(self, msg, text, start, final):
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

    def _sandbox_link(self, msg, text, start, final):
        """``(sandbox:`` at ``start``: the link's brackets stay text, its target is the file."""
        m = _SANDBOX_LINK.match(text, start)
        if m:
            renderer = self._renderer
            renderer.prose("(")
            renderer.sandbox_file(SandboxFile(m.group(1), msg.id))
            renderer.prose(")")
            return m.end()
        if not final and len(text) - start < _SANDBOX_MAX and _SANDBOX_PREFIX.match(text, start):
            self._held, self._held_msg = text[start:], msg  # the link is still arriving
            return None
        self._renderer.prose("(")
        return start + 1

    def _tail(self, msg, text, pos, final):
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

    def _flush_held(self):
        if self._held:
            held, self._held = self._held, ""
            self._prose(self._held_msg, held, final=True)

    @staticmethod
    def _citation(msg, number):
        for c in msg.metadata.get("citations") or ():
            meta = c.get("metadata") or {}
            if (meta.get("extra") or {}).get("cited_message_idx") == number:
                return Cite(number, meta.get("title") or "", meta.get("url") or "")
        return None
