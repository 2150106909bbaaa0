"""OpenAI chat and image requests in, upstream conversation payloads out. No IO.

``parse_chat_request`` checks what a client sent and says precisely what is wrong (the
client sees the message); ``conversation_payload`` builds the body of
``POST backend-api/conversation`` the way the late-2023 web client did.
"""

import re
from typing import Any

import ujson

from pgw.converters.files import FileRef
from pgw.errors import ApiError, bad_request

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "user", "function": "user"}
# The web backend has no tool calls of the client's own: an agent's history (an assistant
# message with ``tool_calls``, then ``tool`` messages with the results) is folded into text the
# model can read, so LangChain agents, Dify and one-api relays keep working instead of a 400.
TOOL_ROLES = ("tool", "function")


class ChatRequest:
    __slots__ = ("model", "messages", "stream", "include_usage", "files", "reasoning_effort")

    def __init__(self, model, messages, stream, include_usage, files=None, reasoning_effort=None):
        self.model = model
        self.messages = messages        # [(upstream role, text)]: the texts, files left out
        self.stream = stream
        self.include_usage = include_usage
        self.files = files or {}        # message index -> [FileRef] in the client's order
        self.reasoning_effort = reasoning_effort  # OpenAI's word (low, medium, high, ...), or None


def _url_of(value):
    """``image_url`` is ``{"url": ...}`` in OpenAI's shape; some clients send the URL string."""
    return value.get("url") if isinstance(value, dict) else value


def _file_ref(part, kind, index, j):
    """A ``FileRef`` for an ``image_url`` or ``file`` content part."""
    where = "messages[%d].content[%d]" % (index, j)
    param = "messages.%d.content.%d" % (index, j)
    name = None
    if kind == "image_url":
        url = _url_of(part.get("image_url"))
    else:
        spec = part.get("file")
        if not isinstance(spec, dict):
            raise bad_request("%s.file must be an object with file_data (a data: URL) or url" % where, param)
        if spec.get("file_id") and not (spec.get("file_data") or spec.get("url")):
            raise bad_request("%s: file_id is not supported here; send the file as file_data "
                              "(a data: URL) or url" % where, param, "unsupported_content")
        url = spec.get("file_data") or spec.get("url")
        name = spec.get("filename") if isinstance(spec.get("filename"), str) else None
    if not isinstance(url, str) or not url.strip():
        raise bad_request("%s needs a URL (data: or http(s)://)" % where, param)
    url = url.strip()
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("data", "http", "https"):
        raise bad_request("%s: only data:, http:// and https:// URLs are taken, got %s:"
                          % (where, scheme), param, "unsupported_url")
    return FileRef(url, name, where)


def _content_of(content, index):
    """An OpenAI message content (string or list of parts) as ``(text, [FileRef])``."""
    if content is None:
        return "", None
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise bad_request("messages[%d].content must be a string or a list of parts" % index,
                          "messages.%d.content" % index)
    texts = []
    files = []
    for j, part in enumerate(content):
        where = "messages.%d.content.%d" % (index, j)
        if not isinstance(part, dict):
            raise bad_request("messages[%d].content[%d] must be an object" % (index, j), where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request("messages[%d].content[%d].text must be a string" % (index, j), where)
            texts.append(text)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])  # an assistant's earlier refusal, sent back in a history
        elif kind in ("image_url", "file"):
            files.append(_file_ref(part, kind, index, j))
        else:
            raise bad_request("messages[%d].content[%d] has type %r, which this gateway does not take"
                              % (index, j, kind), where, "unsupported_content")
    return "\n".join(texts), files


def _call_text(call):
    """``{"function": {"name", "arguments"}}`` (or the older ``function_call``) as one line."""
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name") if isinstance(fn.get("name"), str) else "tool"
    args = fn.get("arguments")
    if not isinstance(args, str):
        args = "" if args is None else ujson.dumps(args, ensure_ascii=False)
    return name, "[called tool %s with %s]" % (name, args or "{}")


def _with_tool_calls(message, text, tool_names):
    """An assistant message's text with its tool calls written out after it."""
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        calls.append(message["function_call"])
    lines = [text] if text else []
    for call in calls:
        name, line = _call_text(call)
        if isinstance(call.get("id"), str):
            tool_names[call["id"]] = name
        lines.append(line)
    return "\n".join(lines)


def _tool_result(message, text, tool_names):
    """A ``tool`` (or ``function``) message as text naming the tool whose result it is."""
    name = message.get("name") if isinstance(message.get("name"), str) else None
    name = name or tool_names.get(message.get("tool_call_id")) or "tool"
    return "[result of tool %s]\n%s" % (name, text)


class RequestLimits:
    """What one request may hold (settings MAX_MESSAGES, MAX_CONTENT_PARTS, MAX_PROMPT_CHARS,
    MAX_FILES_PER_REQUEST); ``of(settings)`` reads them."""
    __slots__ = ("messages", "parts", "chars", "files")

    def __init__(self, messages: int = 2048, parts: int = 512, chars: int = 1_000_000, files: int = 16) -> None:
        self.messages = messages
        self.parts = parts
        self.chars = chars
        self.files = files

    @classmethod
    def of(cls, settings: Any) -> "RequestLimits":
        return cls(settings.max_messages, settings.max_content_parts, settings.max_prompt_chars,
                   settings.max_files_per_request)


def _limit_error(what: str, limit: int, setting: str, code: str, param: str) -> ApiError:
    return bad_request("%s; this gateway takes at most %d (%s)" % (what, limit, setting), param, code)


def check_chat_limits(body: object, limits: RequestLimits) -> None:
    """Refuse a chat request bigger than ``limits`` before anything else looks at it.

    Runs first and only counts (lengths of lists and strings), so a million messages cost a
    ``len`` and a list of huge parts no more than one pass over the parts; the shape itself is
    checked by ``parse_chat_request``."""
    raw = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        return
    if len(raw) > limits.messages:
        raise _limit_error("the request has %d messages" % len(raw), limits.messages, "MAX_MESSAGES",
                           "too_many_messages", "messages")
    chars = 0
    files = 0
    for i, m in enumerate(raw):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            if len(content) > limits.parts:
                raise _limit_error("messages[%d] has %d content parts" % (i, len(content)), limits.parts,
                                   "MAX_CONTENT_PARTS", "too_many_content_parts", "messages.%d.content" % i)
            for part in content:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    chars += len(part["text"])
                if part.get("type") in ("image_url", "file"):
                    files += 1
        if chars > limits.chars:
            raise _limit_error("the messages hold more than %d characters of text" % limits.chars, limits.chars,
                               "MAX_PROMPT_CHARS", "prompt_too_long", "messages")
    if files > limits.files:
        raise _limit_error("the messages carry %d images and files" % files, limits.files,
                           "MAX_FILES_PER_REQUEST", "too_many_files", "messages")


def parse_chat_request(body, limits=None):
    """``body`` (decoded JSON) -> ``ChatRequest``; ``limits``: a ``RequestLimits`` (the defaults if None)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_chat_limits(body, limits or RequestLimits())
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string", "model")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' is required and must be a non-empty list", "messages")
    if body.get("n", 1) not in (1, None):
        raise bad_request("this gateway gives one answer per request ('n' must be 1): the web backend "
                          "has no way to ask for more", "n", "unsupported_parameter")
    messages = []
    files = {}
    tool_names: dict = {}   # tool_call_id -> function name, from earlier assistant tool_calls
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request("messages[%d] must be an object" % i, "messages.%d" % i)
        given = m.get("role")
        role = ROLES.get(given) if isinstance(given, str) else None
        if role is None:
            raise bad_request("messages[%d].role must be one of system, developer, user, assistant, tool; got %r"
                              % (i, given), "messages.%d.role" % i)
        text, refs = _content_of(m.get("content"), i)
        if given in TOOL_ROLES:
            text = _tool_result(m, text, tool_names)
        elif given == "assistant":
            text = _with_tool_calls(m, text, tool_names)
        messages.append((role, text))
        if refs:
            files[i] = refs
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include_usage = bool(options.get("include_usage")) and stream
    effort = body.get("reasoning_effort")
    effort = effort.strip().lower() if isinstance(effort, str) else None  # never a reason to refuse
    return ChatRequest(model, messages, stream, include_usage, files, effort)


def upstream_message(message_id, role, text):
    return {"id": message_id, "author": {"role": role},
            "content": {"content_type": "text", "parts": [text]}, "metadata": {}}


# UPSTREAM_ENCODING -> what the request asks the upstream to stream. ``auto`` asks for v1 and
# takes whatever comes (the pipeline detects the dialect per stream); ``legacy`` asks for nothing,
# which is what the late-2023 web client sent.
SUPPORTED_ENCODINGS = {"auto": ["v1"], "v1": ["v1"], "legacy": None}
# What 2025-2026 web clients add to the body (upstream-protocol §5.7). Each is a field the
# late-2023 body did not have: the backend then, like every JSON API the web client talks to,
# ignored fields it did not know (the web client itself shipped new fields before the backend
# used them), so ``auto`` sends them to every upstream.
MODERN_FIELDS = {"supports_buffering": True, "paragen_cot_summary_display_override": "allow"}
# The one 2025-2026 change that is not an added field: a new conversation's parent is the fixed
# word "client-created-root" instead of a fresh uuid4. A late-2023 backend took the parent as a
# message id (a uuid), so only ``v1`` (the operator says the upstream is today's) sends the word;
# ``auto`` keeps the uuid4 that RefreshToV1Api sent and that today's backend still takes.
NEW_CONVERSATION_ROOT = "client-created-root"
# OpenAI's reasoning_effort -> the web client's thinking_effort for thinking models (§5.7 knows
# "standard" and "extended"; the web client's "think longer" is extended).
THINKING_EFFORT = {"none": "standard", "minimal": "standard", "low": "standard", "medium": "standard",
                   "high": "extended", "xhigh": "extended"}


def conversation_payload(messages, route, new_id, encoding="legacy", gizmo=None, hints=(), effort=None):
    """The upstream body. ``messages``: [(role, text)] or prepared upstream message dicts;
    ``new_id``: a function returning a fresh uuid4 string (passed in: no randomness here);
    ``encoding``: the UPSTREAM_ENCODING setting (``legacy`` gives exactly the late-2023 body);
    ``gizmo``: for a GPT, the object ``GET gizmos/{id}`` returned, when known; ``hints``: the
    ``system_hints`` of a 2025-2026 body, e.g. ``("picture_v2",)`` to ask for the image tool;
    ``effort``: the client's ``reasoning_effort``, sent as ``thinking_effort`` to a thinking model."""
    up = [m if isinstance(m, dict) else upstream_message(new_id(), m[0], m[1]) for m in messages]
    payload = {
        "action": "next",
        "messages": up,
        "parent_message_id": NEW_CONVERSATION_ROOT if encoding == "v1" else new_id(),
        "model": route.slug,
        "timezone_offset_min": -480,
        "history_and_training_disabled": False,
        "conversation_mode": {"kind": "primary_assistant"},
        "force_paragen": False,
        "force_rate_limit": False,
    }
    if route.gizmo_id:
        mode = {"kind": "gizmo_interaction", "gizmo_id": route.gizmo_id}
        if gizmo is not None:
            mode["gizmo"] = gizmo
        payload["conversation_mode"] = mode
    encodings = SUPPORTED_ENCODINGS[encoding]
    if encodings:
        payload["supported_encodings"] = list(encodings)
        payload.update(MODERN_FIELDS)
        if hints:
            payload["system_hints"] = list(hints)
        if route.thinking and effort in THINKING_EFFORT:
            payload["thinking_effort"] = THINKING_EFFORT[effort]
    return payload


class ImageRequest:
    __slots__ = ("model", "prompt", "n", "size", "response_format")

    def __init__(self, model, prompt, n, size, response_format):
        self.model = model
        self.prompt = prompt
        self.n = n
        self.size = size
        self.response_format = response_format


IMAGE_FORMATS = ("url", "b64_json")
DEFAULT_SIZE = "1024x1024"


def parse_image_request(body, default_model, limits=None):
    """``POST /v1/images/generations`` body -> ``ImageRequest`` (unknown fields such as
    quality, style and user are accepted and ignored, as the upstream cannot honour them)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("'prompt' is required and must be a non-empty string", "prompt")
    max_chars = (limits or RequestLimits()).chars
    if len(prompt) > max_chars:
        raise _limit_error("the prompt has %d characters" % len(prompt), max_chars, "MAX_PROMPT_CHARS",
                           "prompt_too_long", "prompt")
    model = body.get("model")
    if model is None:
        model = default_model
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a string naming a model that can draw", "model")
    n = body.get("n")
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4:
        raise bad_request("'n' must be a whole number from 1 to 4, got %r" % (n,), "n")
    size = body.get("size")
    if size is None:
        size = DEFAULT_SIZE
    if not isinstance(size, str) or not re.match(r"\A\d{2,5}x\d{2,5}\Z", size):
        raise bad_request("'size' must look like 1024x1024, got %r" % (size,), "size")
    fmt = body.get("response_format")
    if fmt is None:
        fmt = "url"
    if fmt not in IMAGE_FORMATS:
        raise bad_request("'response_format' must be url or b64_json, got %r" % (fmt,), "response_format")
    return ImageRequest(model, prompt.strip(), n, size, fmt)


def image_prompt(prefix, request):
    """What the drawing model is asked: the configured steer, the prompt, size and count."""
    return "%s%s\n\nImage size: %s. Number of images: %d." % (prefix, request.prompt, request.size, request.n)
