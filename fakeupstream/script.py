"""Answers as scripts of messages, rendered into the upstream's event streams.

A scenario says *what* the upstream answers (a list of ``Msg``); this module says *how* the
upstream streams it: the late-2023 dialect repeats the whole message in every event
(``legacy_events``, docs/upstream.md "The stream: three forms", 1); the v1 dialect sends each
message once and then patches to it, in the form live accounts send in 2025-2026 (``v1_events``,
the default for v1: roots with ``c``, later ones without ``p``/``o``, a hidden system root and
the user's echo first, typed frames between everything, form 3) or in the early-2024 form
(``v1_2024_events``, form 2). Rendering every dialect from one script keeps their transcripts
of one scenario from drifting apart.
"""

import base64
import json
import uuid


class Msg:
    """One upstream message of an answer.

    ``text`` is what streams (parts[0] for text, ``text`` for code and execution output,
    ``result`` for browsing display). ``step`` is how many characters each event adds.
    ``final_parts`` are extra content parts the finished message carries (image pointers),
    ``metadata`` what its final event carries (citations, aggregate_result, finish_details).
    Citations appear in earlier events once their ``end_ix`` has been streamed. ``cuts`` sets
    the event boundaries by hand (to split a citation marker over several events).
    """

    def __init__(self, text="", role="assistant", name=None, recipient="all", content_type="text",
                 step=4, final_parts=None, metadata=None, status="finished_successfully",
                 end_turn=None, extra_content=None, cuts=None, channel=None, thoughts=None,
                 start_metadata=None, references=None, refs_lag=0, refs_live=True):
        self.id = str(uuid.uuid4())
        if thoughts is not None:
            # 2025-2026 reasoning: the text is what the gateway reads from the thoughts
            content_type = "thoughts"
            text = thoughts_text(thoughts)
        self.thoughts = thoughts    # [(summary, content)] of a "thoughts" message
        self.text = text
        self.role = role
        self.name = name
        self.recipient = recipient
        self.content_type = content_type
        self.step = max(1, step)
        self.final_parts = final_parts or []
        self.metadata = metadata or {}
        self.status = status
        self.end_turn = end_turn
        self.extra_content = extra_content or {}
        self.cuts = cuts            # explicit event boundaries (character offsets) instead of ``step``
        self.channel = channel      # 2025-2026: "final", "commentary"
        self.start_metadata = start_metadata or {}  # metadata every event carries (initial_text...)
        # 2025-2026 citations: content_references entries, each with the "marker" it resolves
        # (placed in order of the text; none for a sources_footnote). An entry appears once
        # ``refs_lag`` characters past its marker's end have streamed (negative: before its
        # marker); ``refs_live``: while the marker streams, it is an invalid "hidden" entry as
        # the real upstream creates it.
        self.references = _placed(text, references) if references else None
        self.refs_lag = refs_lag
        self.refs_live = refs_live

    @property
    def diffed(self):
        """Streamed as patches computed from snapshots (the v1 dialect's general case)."""
        return self.thoughts is not None or self.references is not None or self.content_type == "reasoning_recap"


def _placed(text, references):
    pos = 0
    placed = []
    for ref in references:
        ref = dict(ref)
        marker = ref.pop("marker", None)
        if marker is not None:
            start = text.index(marker, pos)
            pos = start + len(marker)
            ref["_span"] = (start, pos)
        placed.append(ref)
    return placed


def thoughts_text(thoughts):
    """The gateway's text of a thoughts list (pgw.converters.events.thoughts_text, written
    again from its description so that the fake does not test the gateway with itself)."""
    texts = []
    for summary, content in thoughts:
        texts.append(summary + "\n\n" + content if summary and content else summary or content)
    return "\n\n".join(t for t in texts if t)


def _thoughts_at(thoughts, n):
    """The thoughts list as the upstream holds it when ``n`` characters of its text have
    streamed: whole thoughts, then the one being written (summary first, then content)."""
    out = []
    left = n
    written = False  # a thought with text is in the list: the next one's text is apart by "\n\n"
    for summary, content in thoughts:
        has_text = bool(summary or content)
        if has_text and written:
            if left < 2:
                break
            left -= 2
        if has_text and left <= 0:
            break
        t = {"summary": summary[:left], "content": "", "chunks": [], "finished": False}
        out.append(t)
        left -= len(t["summary"])
        if len(t["summary"]) < len(summary):
            break
        if summary and content:
            if left < 2:
                break
            left -= 2
        t["content"] = content[:left]
        left -= len(t["content"])
        if len(t["content"]) < len(content):
            break
        t["finished"] = True
        written = written or has_text
    return out


def _references_at(msg, text, final):
    refs = []
    n = len(text)
    for ref in msg.references:
        span = ref.get("_span")
        entry = {k: v for k, v in ref.items() if k != "_span"}
        if span is None:  # a zero-width entry at the end (sources_footnote)
            if final:
                entry.setdefault("matched_text", " ")
                entry.setdefault("start_idx", len(msg.text))
                entry.setdefault("end_idx", len(msg.text))
                refs.append(entry)
            continue
        start, end = span
        if final or n >= end + msg.refs_lag:
            entry.update({"matched_text": msg.text[start:end], "start_idx": start, "end_idx": end, "status": "done"})
            refs.append(entry)
        elif msg.refs_live and n > start:
            refs.append({"matched_text": text[start:], "start_idx": start, "end_idx": n, "type": "hidden",
                         "invalid": True, "status": "in_progress"})
    return refs

class Script:
    """A whole answer: its messages and how the stream around them behaves."""

    def __init__(self, messages, model="gpt-4", error=None, title="演示对话", blocked=False, done=True,
                 ascii=True, error_code=None):
        self.messages = messages
        self.model = model
        self.error = error          # an in-stream error after the messages
        self.error_code = error_code  # its error_code (2025-2026: "usage_limit")
        self.title = title
        self.blocked = blocked      # moderation blocks the answer
        self.done = done            # ends with [DONE]
        # Captures of the real upstream show JSON as Python's json.dumps writes it: every
        # non-ASCII character escaped (``"\u4f60\u597d"``). Raw UTF-8 is the same JSON, and the
        # one form in which a network chunk can split a character; ``ascii=False`` sends it.
        self.ascii = ascii


def content_for(msg, text, final):
    ct = msg.content_type
    if ct in ("code",):
        content = {"content_type": "code", "language": "unknown", "text": text}
    elif ct in ("execution_output", "system_error"):
        content = {"content_type": ct, "text": text}
    elif ct == "tether_browsing_display":
        content = {"content_type": ct, "result": text, "summary": None}
    elif ct == "tether_quote":
        content = {"content_type": ct, "text": text}
    elif ct == "multimodal_text":
        content = {"content_type": ct, "parts": ([text] if text else []) + (msg.final_parts if final else [])}
    elif ct == "thoughts":
        thoughts = msg.thoughts if msg.thoughts is not None else [("", text)]
        content = {"content_type": ct, "thoughts": _thoughts_at(thoughts, len(msg.text) if final else len(text)),
                   "source_analysis_msg_id": "analysis-" + msg.id[:8]}
    elif ct == "reasoning_recap":
        content = {"content_type": ct, "content": text}
    else:
        content = {"content_type": ct, "parts": [text]}
    content.update(msg.extra_content)
    return content


def message_dict(msg, text, final, parent_id, model, create_time):
    metadata = {"message_type": "next", "model_slug": model, "parent_id": parent_id}
    metadata.update(msg.start_metadata)
    if msg.references is not None:
        metadata["citations"] = []
        metadata["content_references"] = _references_at(msg, text, final)
    citations = msg.metadata.get("citations")
    for key, value in msg.metadata.items():
        if final:
            metadata[key] = value
    if citations and not final:
        metadata["citations"] = [c for c in citations if c.get("end_ix", 0) <= len(text)]
    if final and msg.role == "assistant" and msg.recipient == "all" and "finish_details" not in metadata:
        metadata["finish_details"] = {"type": "stop", "stop_tokens": [100260]}
        metadata["is_complete"] = True
    d = {
        "id": msg.id,
        "author": {"role": msg.role, "name": msg.name, "metadata": {}},
        "create_time": create_time,
        "update_time": None,
        "content": content_for(msg, text, final),
        "status": msg.status if final else "in_progress",
        "end_turn": msg.end_turn if final else None,
        "weight": 1.0,
        "metadata": metadata,
        "recipient": msg.recipient,
    }
    if msg.channel is not None:
        d["channel"] = msg.channel
    return d


def diff_ops(old, new, path=""):
    """The v1 operations that turn the document ``old`` into ``new``: ``append`` where a string
    or list only grew, ``add`` / ``remove`` for keys, ``replace`` otherwise."""
    ops = []
    _diff(old, new, path, ops)
    return ops


def _diff(old, new, path, ops):
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old:
            if k not in new:
                ops.append({"p": path + "/" + k, "o": "remove"})
        for k, v in new.items():
            if k in old:
                _diff(old[k], v, path + "/" + k, ops)
            else:
                ops.append({"p": path + "/" + k, "o": "add", "v": v})
        return
    if isinstance(old, str) and isinstance(new, str) and new.startswith(old):
        ops.append({"p": path, "o": "append", "v": new[len(old):]})
        return
    if isinstance(old, list) and isinstance(new, list) and len(new) >= len(old):
        for i, item in enumerate(old):
            _diff(item, new[i], "%s/%d" % (path, i), ops)
        if len(new) > len(old):
            ops.append({"p": path, "o": "append", "v": new[len(old):]})
        return
    ops.append({"p": path, "o": "replace", "v": new})


def _event(obj, ascii):
    return b"data: " + json.dumps(obj, ensure_ascii=ascii).encode() + b"\n\n"


PING = b"event: ping\ndata: 2023-12-20 12:34:56.123456\n\n"


def _echo(m):
    echo = dict(m)
    echo.setdefault("author", {"role": "user"})
    echo["status"] = "finished_successfully"
    echo["recipient"] = "all"
    echo["metadata"] = {"timestamp_": "absolute", "message_type": None}
    return echo


def user_echo(conversation_id, user_messages, ascii=True):
    """The first events echo what the client sent (roles user and system)."""
    return [_event({"message": _echo(m), "conversation_id": conversation_id, "error": None}, ascii)
            for m in user_messages if (m.get("author") or {}).get("role", "user") in ("user", "system")]


def legacy_events(script, conversation_id, user_messages, pings=True):
    """The late-2023 stream: every event carries the whole message so far."""
    ascii = script.ascii
    events = user_echo(conversation_id, user_messages, ascii)
    parent = user_messages[-1]["id"] if user_messages else str(uuid.uuid4())
    t = 1703062013.02
    for i, msg in enumerate(script.messages):
        text = msg.text
        cuts = msg.cuts if msg.cuts is not None else list(range(msg.step, len(text), msg.step))
        for n, cut in enumerate(cuts):
            events.append(_event({"message": message_dict(msg, text[:cut], False, parent, script.model, t),
                                  "conversation_id": conversation_id, "error": None}, ascii))
            if pings and n == len(cuts) // 2:
                events.append(PING)
        events.append(_event({"message": message_dict(msg, text, True, parent, script.model, t),
                              "conversation_id": conversation_id, "error": None}, ascii))
        parent = msg.id
        if i == 0:
            events.append(_event({"type": "title_generation", "title": script.title,
                                  "conversation_id": conversation_id}, ascii))
    events.append(_event({"conversation_id": conversation_id, "message_id": parent, "is_completion": True,
                          "moderation_response": {"flagged": script.blocked, "blocked": script.blocked,
                                                  "moderation_id": "modr-demo"}}, ascii))
    if script.error:
        events.append(_event({"message": None, "conversation_id": conversation_id, "error": script.error,
                              "error_code": script.error_code}, ascii))
    if script.done:
        events.append(b"data: [DONE]\n\n")
    return events


def _delta(obj, ascii):
    return b"event: delta\ndata: " + json.dumps(obj, ensure_ascii=ascii).encode() + b"\n\n"


DELTA_ENCODING = b'event: delta_encoding\ndata: "v1"\n\n'


def _text_path(content):
    if "text" in content:
        return "/message/content/text"
    if "result" in content:
        return "/message/content/result"
    return "/message/content/parts/0"


class _Patches:
    """Writes patches the way the upstream does: a bare ``{"v": ...}`` when the path and
    operation are the previous patch's."""

    def __init__(self, events, ascii):
        self.events = events
        self.ascii = ascii
        self.last = None

    def add(self, document, c):
        self.events.append(_delta({"p": "", "o": "add", "v": document, "c": c}, self.ascii))
        self.last = None

    def op(self, path, op, value):
        if (path, op) == self.last:
            self.events.append(_delta({"v": value}, self.ascii))
        else:
            self.events.append(_delta({"p": path, "o": op, "v": value}, self.ascii))
            self.last = (path, op)

    def patch(self, ops):
        self.events.append(_delta({"p": "", "o": "patch", "v": ops}, self.ascii))
        self.last = ("", "patch")  # a bare {"v"} refers to the last top-level patch, not its parts


def v1_2024_events(script, conversation_id, user_messages, pings=True):  # noqa: C901 (one branch per message shape)
    """The early-2024 stream asked for with ``"supported_encodings": ["v1"]``: each message once
    (``add`` with ``c``), then appends to its text, citations as they become complete, and one
    final patch list with the rest of the text, status, end_turn and metadata."""
    ascii = script.ascii
    events = [DELTA_ENCODING]
    for m in user_messages:
        events.append(_event({"type": "input_message", "input_message": _echo(m),
                              "conversation_id": conversation_id}, ascii))
    out = _Patches(events, ascii)
    parent = user_messages[-1]["id"] if user_messages else str(uuid.uuid4())
    t = 1703062013.02
    for i, msg in enumerate(script.messages):
        text = msg.text
        first = message_dict(msg, "", False, parent, script.model, t)
        content = first["content"]
        if text and content.get("parts") == []:
            content["parts"] = [""]
        path = _text_path(content)
        out.add({"message": first, "conversation_id": conversation_id, "error": None}, i)
        if msg.diffed:
            _diffed_ops(out, msg, first, parent, script.model, t, events, pings)
            parent = msg.id
            if i == 0:
                events.append(_event({"type": "title_generation", "title": script.title,
                                      "conversation_id": conversation_id}, ascii))
            continue
        citations = msg.metadata.get("citations") or []
        cited = 0
        sent = 0
        cuts = list(range(msg.step, len(text), msg.step))
        for n, cut in enumerate(cuts):
            out.op(path, "append", text[sent:cut])
            sent = cut
            ready = [c for c in citations if c.get("end_ix", 0) <= cut]
            if len(ready) > cited:
                if cited == 0:
                    out.op("/message/metadata", "append", {"citations": ready})
                else:
                    out.op("/message/metadata/citations", "append", ready[cited:])
                cited = len(ready)
            if pings and n == len(cuts) // 2:
                events.append(PING)
        final = message_dict(msg, text, True, parent, script.model, t)
        ops = []
        if text[sent:]:
            ops.append({"p": path, "o": "append", "v": text[sent:]})
        if msg.final_parts:
            ops.append({"p": "/message/content/parts", "o": "append", "v": msg.final_parts})
        ops.append({"p": "/message/status", "o": "replace", "v": final["status"]})
        if final["end_turn"] is not None:
            ops.append({"p": "/message/end_turn", "o": "replace", "v": final["end_turn"]})
        metadata = {k: v for k, v in final["metadata"].items() if first["metadata"].get(k) != v}
        if metadata:
            ops.append({"p": "/message/metadata", "o": "append", "v": metadata})
        out.patch(ops)
        parent = msg.id
        if i == 0:
            events.append(_event({"type": "title_generation", "title": script.title,
                                  "conversation_id": conversation_id}, ascii))
    events.append(_event({"type": "moderation", "conversation_id": conversation_id, "message_id": parent,
                          "is_completion": True,
                          "moderation_response": {"flagged": script.blocked, "blocked": script.blocked,
                                                  "moderation_id": "modr-demo"}}, ascii))
    if script.error:
        events.append(_event({"message": None, "conversation_id": conversation_id, "error": script.error,
                              "error_code": script.error_code}, ascii))
    if script.done:
        events.append(_event({"type": "message_stream_complete", "conversation_id": conversation_id}, ascii))
        events.append(b"data: [DONE]\n\n")
    return events


def _diffed_ops(out, msg, first, parent, model, t, events, pings):
    """A message whose content is more than one growing string (thoughts, references being
    filled in): each event is the patch from the previous snapshot to the next, one operation
    bare or several as one ``patch`` list (text and references in the same list)."""
    text = msg.text
    prev = {"message": first}
    cuts = msg.cuts if msg.cuts is not None else list(range(msg.step, len(text), msg.step))
    for n, cut in enumerate(cuts):
        cur = {"message": message_dict(msg, text[:cut], False, parent, model, t)}
        ops = diff_ops(prev, cur)
        prev = cur
        if len(ops) == 1:
            out.op(ops[0]["p"], ops[0]["o"], ops[0].get("v"))
        elif ops:
            out.patch(ops)
        if pings and n == len(cuts) // 2:
            events.append(PING)
    ops = diff_ops(prev, {"message": message_dict(msg, text, True, parent, model, t)})
    if ops:
        out.patch(ops)


def _jwt(conversation_id):
    """A token shaped like the upstream's (three base64url fields); nothing reads it."""
    claims = json.dumps({"conversation_id": conversation_id, "exp": 1893456000}).encode()
    return "eyJhbGciOiJFUzI1NiJ9.%s.ZmFrZQ" % base64.urlsafe_b64encode(claims).decode().rstrip("=")


def _hidden_system(parent):
    return {"id": str(uuid.uuid4()), "author": {"role": "system", "name": None, "metadata": {}},
            "create_time": None, "update_time": None, "content": {"content_type": "text", "parts": [""]},
            "status": "finished_successfully", "end_turn": True, "weight": 0.0,
            "metadata": {"is_visually_hidden_from_conversation": True}, "recipient": "all", "channel": None}


class _Stream2025:
    """One answer in the 2025-2026 v1 form (docs/upstream.md, form 3), event by event."""

    def __init__(self, script, conversation_id, pings):
        self.script = script
        self.cid = conversation_id
        self.pings = pings
        self.events = [DELTA_ENCODING]
        self.out = _Patches(self.events, script.ascii)
        self.count = 0

    def typed(self, obj):
        obj.setdefault("conversation_id", self.cid)
        self.events.append(_event(obj, self.script.ascii))

    def root(self, message):
        doc = {"message": message, "conversation_id": self.cid, "error": None, "error_code": None}
        # The first root of a stream comes as an add at "", later ones as a bare {"v", "c"}.
        frame = {"p": "", "o": "add", "v": doc, "c": self.count} if self.count == 0 else {"v": doc, "c": self.count}
        self.events.append(_delta(frame, self.script.ascii))
        self.out.last = None
        self.count += 1

    def marker(self, message_id, marker, event):
        self.typed({"type": "message_marker", "message_id": message_id, "marker": marker, "event": event})

    def message(self, msg, parent, t):
        script = self.script
        text = msg.text
        first = message_dict(msg, "", False, parent, script.model, t)
        content = first["content"]
        if text and content.get("parts") == []:
            content["parts"] = [""]
        path = _text_path(content)
        self.root(first)
        prose = msg.role == "assistant" and msg.recipient == "all"
        if prose:
            self.marker(msg.id, "user_visible_token", "first")
        if msg.diffed:  # thoughts, references being filled in: patches computed from snapshots
            _diffed_ops(self.out, msg, first, parent, script.model, t, self.events, self.pings)
            if prose:
                self.marker(msg.id, "last_token", "last")
            return
        citations = msg.metadata.get("citations") or []
        cited = 0
        sent = 0
        cuts = msg.cuts if msg.cuts is not None else list(range(msg.step, len(text), msg.step))
        for n, cut in enumerate(cuts):
            self.out.op(path, "append", text[sent:cut])
            sent = cut
            ready = [c for c in citations if c.get("end_ix", 0) <= cut]
            if len(ready) > cited:
                if cited == 0:
                    self.out.op("/message/metadata", "append", {"citations": ready})
                else:
                    self.out.op("/message/metadata/citations", "append", ready[cited:])
                cited = len(ready)
            if self.pings and n == len(cuts) // 2:
                self.events.append(PING)
            if n == 0 and prose:
                self.typed({"type": "server_ste_metadata", "metadata": {
                    "plan_type": "free", "model_slug": "i-mini", "tool_name": None, "tool_invoked": False,
                    "resume_with_websockets": False, "turn_use_case": "text"}})
        final = message_dict(msg, text, True, parent, script.model, t)
        ops = []
        if text[sent:]:
            ops.append({"p": path, "o": "append", "v": text[sent:]})
        if msg.final_parts:
            ops.append({"p": "/message/content/parts", "o": "append", "v": msg.final_parts})
        ops.append({"p": "/message/status", "o": "replace", "v": final["status"]})
        if final["end_turn"] is not None:
            ops.append({"p": "/message/end_turn", "o": "replace", "v": final["end_turn"]})
        metadata = {k: v for k, v in final["metadata"].items() if first["metadata"].get(k) != v}
        if metadata:
            ops.append({"p": "/message/metadata", "o": "append", "v": metadata})
        self.out.patch(ops)
        if prose:
            self.marker(msg.id, "last_token", "last")

    def render(self, user_messages):
        script = self.script
        parent = user_messages[-1]["id"] if user_messages else str(uuid.uuid4())
        self.typed({"type": "resume_conversation_token", "kind": "conduit", "token": _jwt(self.cid)})
        self.root(_hidden_system(parent))
        for m in user_messages:
            echo = _echo(m)
            if (echo.get("author") or {}).get("role", "user") not in ("user", "system"):
                continue
            self.typed({"type": "input_message", "input_message": echo})
            self.root(echo)
        t = 1767225600.5
        for i, msg in enumerate(script.messages):
            self.message(msg, parent, t)
            parent = msg.id
            if i == 0:
                self.typed({"type": "title_generation", "title": script.title})
        self.typed({"type": "moderation", "message_id": parent, "is_completion": True,
                    "moderation_response": {"flagged": script.blocked, "blocked": script.blocked,
                                            "moderation_id": "modr-demo"}})
        if script.error:
            self.typed({"message": None, "error": script.error, "error_code": script.error_code})
        self.typed({"type": "conversation_detail_metadata", "banner_info": None, "blocked_features": [],
                    "model_limits": [], "limits_progress": [{"feature_name": "deep_research", "remaining": 25,
                                                             "reset_after": "2026-02-01T00:00:00+00:00"}],
                    "default_model_slug": "auto"})
        if script.done:
            self.typed({"type": "message_stream_complete"})
            self.typed({"type": "title_generation", "title": script.title})  # a title may come again
            self.events.append(b"data: [DONE]\n\n")
        return self.events


def v1_events(script, conversation_id, user_messages, pings=True):
    """The v1 stream as live accounts send it in 2025-2026 (the default for v1): the resume
    token, a hidden system root, the echo of each user message (``input_message`` and a root),
    then each message of the answer: a root with ``c`` (no ``p``/``o`` after the first), text
    appends (bare ``{"v"}`` continuations; thoughts and ``content_references`` as patches
    computed from snapshots, references in the same list as their text), an end-of-message
    patch list; latency markers, telemetry,
    the title (twice), moderation and quotas between them; ``message_stream_complete`` and
    ``[DONE]`` at the end."""
    return _Stream2025(script, conversation_id, pings).render(user_messages)


RENDERERS = {"legacy": legacy_events, "v1": v1_events, "v1-2024": v1_2024_events}
