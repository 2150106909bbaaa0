"""The v1 decoder against a plain reference, on random valid streams (hypothesis).

A stream is generated from a random script of messages (docs/upstream.md, "The stream:
three forms", 2 and 3): a root per message (with ``p``/``o`` or without, ``c`` counting), plain patches and
bare ``{"v": "..."}`` continuations, ``patch`` lists and bare ``{"v": [...]}`` continuations
holding every operation (text appended and taken back in the same list, truncate, replace,
remove, parts added and removed), metadata-only and status-only patches, typed frames and pings
anywhere, a hidden system root and the user's echo first, tool messages between.

The reference (``Reference``) applies every frame to a JSON document the plain way: no fast
path, no pieces kept, a deep copy of the document after each top-level frame. Its documents
become a late-2023 stream of whole-message snapshots, converted by the legacy dialect through
the same answer stage and renderer (markdown, think-tag reasoning, bot). What the client is
told must be the same for both, under random network chunkings of the v1 bytes. The rule for
text taken back is stated once here (``Reference.snapshots``): the client keeps what it has,
and the text goes on from where the old and the new text part, or, when text was inserted before
the end of what the client has, after it (the client never reads the same text twice). Without take-backs, the client
must get every character of each visible message's final text once and in order
(``test_every_character_arrives_once_in_order``).
"""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgw.converters.events import content_text
from pgw.converters.pipeline import Conversion
from pgw.converters.render import BotRenderer, MarkdownRenderer

CID = "conv-prop"
HEAD = b'event: delta_encoding\ndata: "v1"\n\n'
PING = b"event: ping\ndata: 2026-01-02 03:04:05.678901\n\n"
DONE = b"data: [DONE]\n\n"

# Text without what the answer stage treats specially (citation brackets, sandbox links).
ALPHABET = "ab xyz\n你好世界，。😀é"
TEXT = st.text(alphabet=ALPHABET, min_size=1, max_size=6)

TYPED = [
    {"type": "input_message", "input_message": {"id": "u-1", "author": {"role": "user"},
                                                "content": {"content_type": "text", "parts": ["q"]}},
     "conversation_id": CID},
    {"type": "message_marker", "conversation_id": CID, "message_id": "m", "marker": "user_visible_token",
     "event": "first"},
    {"type": "title_generation", "title": "标题 title", "conversation_id": CID},
    {"type": "server_ste_metadata", "metadata": {"plan_type": "free", "model_slug": "i-mini",
                                                 "tool_invoked": False}, "conversation_id": CID},
    {"type": "conversation_detail_metadata", "limits_progress": [], "default_model_slug": "auto",
     "conversation_id": CID},
    {"type": "resume_conversation_token", "kind": "conduit", "token": "eyJ.x.y", "conversation_id": CID},
    {"type": "url_moderation", "conversation_id": CID},
    {"type": "safety_review_update", "conversation_id": CID},
    {"type": "conversation_async_status", "conversation_id": CID},
    {"type": "num_variants_in_stream", "num_variants_in_stream": 1, "conversation_id": CID},
    {"type": "moderation", "message_id": "m", "is_completion": False,
     "moderation_response": {"flagged": False, "blocked": False}},
    {"type": "a_kind_from_the_future", "payload": {"p": "/x", "o": "append", "v": "not text"}},
]

# kind -> (role, name, recipient, content)
KINDS = {
    "prose": ("assistant", None, "all", {"content_type": "text", "parts": [""]}),
    "two_parts": ("assistant", None, "all", {"content_type": "text", "parts": ["", ""]}),
    "code": ("assistant", None, "python", {"content_type": "code", "language": "unknown", "text": ""}),
    "output": ("tool", "python", "all", {"content_type": "execution_output", "text": ""}),
    "browse": ("tool", "browser", "all", {"content_type": "tether_browsing_display", "result": "", "summary": None}),
    # 2025-2026 reasoning: the text of thoughts is read through content_text (general path);
    # a recap's "content" string is found by the fast path's probe
    "thoughts": ("assistant", None, "all", {"content_type": "thoughts", "thoughts": [],
                                            "source_analysis_msg_id": "an-1"}),
    "recap": ("assistant", None, "all", {"content_type": "reasoning_recap", "content": ""}),
}


def grow_path(content):
    """Where text is appended to ``content``, and the string there now (None: no such string
    yet, as in a thoughts list without a thought)."""
    if "parts" in content:
        i = len(content["parts"]) - 1
        return "/message/content/parts/%d" % i, content["parts"][i]
    if "thoughts" in content:
        if not content["thoughts"]:
            return None, None
        i = len(content["thoughts"]) - 1
        return "/message/content/thoughts/%d/content" % i, content["thoughts"][i]["content"]
    for key in ("text", "result", "content"):
        if key in content:
            return "/message/content/" + key, content[key]
    raise AssertionError(content)


# the reference: plain JSON patching, written from the protocol, no fast path

def _pointer(path):
    return [] if path == "" else [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _plain(doc, path, op, value):
    """Apply one operation; return the document. The generator only makes valid operations."""
    tokens = _pointer(path)
    if not tokens:
        if op in ("add", "replace"):
            return copy.deepcopy(value)
        doc.update(copy.deepcopy(value))
        return doc
    parent = doc
    for t in tokens[:-1]:
        parent = parent[int(t)] if isinstance(parent, list) else parent[t]
    last = int(tokens[-1]) if isinstance(parent, list) else tokens[-1]
    value = copy.deepcopy(value)
    if op == "add" and isinstance(parent, list):
        parent.insert(last, value)
    elif op in ("add", "replace"):
        parent[last] = value
    elif op == "remove":
        del parent[last]
    elif op == "truncate":
        parent[last] = parent[last][:value]
    elif op == "append":
        current = parent[last] if isinstance(parent, list) or last in parent else None
        if current is None:
            parent[last] = value
        elif isinstance(current, str):
            parent[last] = current + value
        elif isinstance(current, list):
            current.extend(value)
        else:
            current.update(value)
    else:
        raise AssertionError(op)
    return doc


def _apply(doc, path, op, value):
    if op != "patch":
        return _plain(doc, path, op, value)
    for sub in value:
        doc = _apply(doc, path + sub["p"], sub["o"], sub["v"])
    return doc


class Reference:
    """Frames in, documents and the snapshot stream they mean out."""

    def __init__(self):
        self.doc = None
        self.last = None        # (path, op) of the last top-level patch
        self.last_plain = None  # ... of the last one that was not a list
        self.stream = []        # the equivalent late-2023 stream
        self.sent = {}          # message id -> its text as the document held it last
        self.view = {}          # message id -> the text the legacy stream's snapshots hold
        self.ended = set()
        self.current = None
        self.took_back = False

    def frame(self, obj):
        v = obj.get("v")
        p, o = obj.get("p"), obj.get("o")
        if isinstance(v, dict) and isinstance(v.get("message"), dict) and ("c" in obj or p in (None, "")) \
                and o in (None, "add", "replace"):
            self.doc = copy.deepcopy(v)  # the last patch stays what a bare {"v": ...} continues
        elif p is None and o is None and "v" not in obj:
            self.stream.append(b"data: " + json.dumps(obj).encode() + b"\n\n")
            return
        else:
            if p is None and o is None:
                p, o = self.last_plain if isinstance(v, str) and self.last[1] == "patch" else self.last
            self.last = (p, o)
            if o != "patch":
                self.last_plain = (p, o)
            self.doc = _apply(self.doc, p, o, v)
        self.snapshots()

    def snapshots(self):
        m = self.doc["message"]
        mid = m["id"]
        if mid != self.current:
            if self.current is not None:
                self.ended.add(self.current)
            self.current = mid
        if mid in self.ended:
            return
        text = content_text(m["content"])
        before = self.sent.get(mid, "")
        view = self.view.get(mid, "")
        if text.startswith(before):
            view += text[len(before):]
        else:
            # Taken back: the client keeps what it has. When the rest of what it has still
            # follows somewhere in the new text, something was inserted before its end: the text
            # goes on after that rest (the insertion is not shown). Otherwise it goes on from
            # where the old and the new text part. The legacy stream is told with snapshots of
            # what the client is to read (``view``): a shorter one where the text parts.
            self.took_back = True
            common = 0
            while common < min(len(before), len(text)) and before[common] == text[common]:
                common += 1
            at = text.find(before[common:], common)
            if at >= 0:
                view += text[at + len(before) - common:]
            else:
                view = view[:max(0, len(view) - (len(before) - common))]
                self._snapshot(self._viewed(m, view, "in_progress"))
                view += text[common:]
        self.sent[mid] = text
        self.view[mid] = view
        self._snapshot(m if view == text else self._viewed(m, view, m.get("status")))
        if m.get("status") != "in_progress":
            self.ended.add(mid)

    @staticmethod
    def _viewed(m, view, status):
        return dict(m, content={"content_type": m["content"].get("content_type"), "parts": [view]}, status=status)

    def _snapshot(self, m):
        doc = dict(self.doc, message=m)
        self.stream.append(b"data: " + json.dumps(doc).encode() + b"\n\n")


# the generator

class Stream:
    """Builds a v1 stream, frame by frame, and feeds each frame to the reference."""

    def __init__(self, draw):
        self.draw = draw
        self.ref = Reference()
        self.out = [HEAD]
        self.count = 0
        self.finals = []  # (kind, final text) of each message, in order

    def emit(self, obj, plain=False):
        name = b"" if plain else b"event: delta\n"
        self.out.append(name + b"data: " + json.dumps(obj, ensure_ascii=self.draw(st.booleans())).encode() + b"\n\n")
        self.ref.frame(obj)

    def noise(self):
        """Typed frames and pings, anywhere."""
        for _ in range(self.draw(st.integers(0, 2))):
            if self.draw(st.booleans()):
                self.out.append(PING)
            else:
                self.emit(self.draw(st.sampled_from(TYPED)), plain=True)

    def root(self, kind, m):
        doc = {"message": m, "conversation_id": CID, "error": None, "error_code": None}
        form = self.draw(st.sampled_from(["p_o", "bare", "o_only"])) if self.count else "p_o"
        frame = {"p": "", "o": "add", "v": doc, "c": self.count} if form == "p_o" else \
            {"o": "add", "v": doc, "c": self.count} if form == "o_only" else {"v": doc, "c": self.count}
        self.count += 1
        self.emit(frame)

    def message(self, kind, mid):
        role, name, recipient, content = KINDS[kind]
        m = {"id": mid, "author": {"role": role, "name": name, "metadata": {}}, "create_time": 1.0,
             "content": copy.deepcopy(content), "status": "in_progress", "end_turn": None, "weight": 1.0,
             "metadata": {}, "recipient": recipient, "channel": None}
        if self.draw(st.booleans()):
            first = self.draw(TEXT)  # text already in the root
            content = m["content"]
            if "thoughts" in content:
                content["thoughts"].append({"summary": first, "content": "", "chunks": [], "finished": False})
            elif "parts" in content:
                content["parts"][0] = first
            else:
                content[grow_path(content)[0].rsplit("/", 1)[1]] = first
        self.root(kind, m)
        for _ in range(self.draw(st.integers(0, 10))):
            self.noise()
            self.step()
        self.noise()
        self.finish()
        self.finals.append((kind, content_text(self.ref.doc["message"]["content"])))

    # what one message's patches look like

    def text_path(self):
        content = self.ref.doc["message"]["content"]
        if "parts" in content:
            parts = content["parts"]
            return "/message/content/parts/%d" % self.draw(st.integers(0, len(parts) - 1))
        return grow_path(content)[0]

    def new_thought(self):
        return {"p": "/message/content/thoughts", "o": "append",
                "v": [{"summary": self.draw(TEXT), "content": "", "chunks": [], "finished": False}]}

    def step(self):
        choice = self.draw(st.sampled_from(["append", "append", "append", "list", "list", "meta", "status",
                                            "truncate", "replace", "remove_meta", "bare_list"]))
        if choice == "append":
            path = self.text_path()
            value = self.draw(TEXT)
            if path is None or ("thoughts" in path and self.draw(st.integers(0, 3)) == 0):
                self.emit(self.new_thought())
            elif self.ref.last_plain == (path, "append") and self.draw(st.booleans()):
                self.emit({"v": value})  # continues the last plain patch, even after a list
            else:
                self.emit({"p": path, "o": "append", "v": value})
        elif choice in ("list", "bare_list"):
            ops = self.ops(self.draw(st.integers(1, 5)))
            if choice == "bare_list" and self.ref.last is not None and self.ref.last == ("", "patch"):
                self.emit({"v": ops})
            elif self.draw(st.integers(0, 4)) == 0:
                # a list rooted below the document: its paths are relative to it
                self.emit({"p": "/message", "o": "patch",
                           "v": [dict(op, p=op["p"][len("/message"):]) for op in ops
                                 if op["p"].startswith("/message/")]})
            else:
                self.emit({"p": "", "o": "patch", "v": ops})
        elif choice == "meta":
            self.emit({"p": "/message/metadata", "o": "append", "v": {"k%d" % self.draw(st.integers(0, 3)): 1}})
        elif choice == "status":
            self.emit({"p": "/message/status", "o": "replace", "v": "in_progress"})
        elif choice == "remove_meta":
            keys = sorted(self.ref.doc["message"]["metadata"])
            if keys:
                self.emit({"p": "/message/metadata/" + self.draw(st.sampled_from(keys)), "o": "remove", "v": None})
        else:
            self.emit(self.draw(st.sampled_from(self.text_ops(self.ref.doc))))

    def text_ops(self, doc):
        """Operations that change the text other than by appending (valid on ``doc``)."""
        content = doc["message"]["content"]
        path, current = grow_path(content)
        if path is None:
            return [self.new_thought()]
        n = self.draw(st.integers(0, len(current)))
        ops = [{"p": path, "o": "truncate", "v": n},
               {"p": path, "o": "replace", "v": current[:n] + self.draw(TEXT)},
               {"p": path, "o": "replace", "v": current + self.draw(TEXT)}]
        if "parts" in content:
            ops.append({"p": "/message/content/parts", "o": "append", "v": [self.draw(TEXT)]})
            if len(content["parts"]) > 1:
                ops.append({"p": "/message/content/parts/%d" % (len(content["parts"]) - 1), "o": "remove",
                            "v": None})
        if "thoughts" in content:
            ops.append({"p": path.rsplit("/", 1)[0] + "/summary", "o": "append", "v": self.draw(TEXT)})
            ops.append(self.new_thought())
        return ops

    def ops(self, n):
        """A patch list of ``n`` operations, valid in order (tried on a copy of the document)."""
        doc = copy.deepcopy(self.ref.doc)
        ops = []
        for _ in range(n):
            kind = self.draw(st.sampled_from(["append", "append", "take_back", "text", "meta", "status",
                                              "end_turn", "refs"]))
            path, current = grow_path(doc["message"]["content"])
            if path is None and kind in ("append", "take_back"):
                op = self.new_thought()
            elif kind == "append":
                op = {"p": path, "o": "append", "v": self.draw(TEXT)}
            elif kind == "take_back":
                # text appended, then part of it taken back in the same list
                more = self.draw(TEXT)
                ops.append({"p": path, "o": "append", "v": more})
                keep = len(current) + self.draw(st.integers(0, len(more) - 1))
                op = self.draw(st.sampled_from([{"p": path, "o": "truncate", "v": keep},
                                                {"p": path, "o": "replace", "v": (current + more)[:keep]}]))
                doc = _apply(doc, path, "append", more)
            elif kind == "text":
                op = self.draw(st.sampled_from(self.text_ops(doc)))
            elif kind == "meta":
                op = {"p": "/message/metadata", "o": "append", "v": {"m%d" % self.draw(st.integers(0, 2)): True}}
            elif kind == "status":
                op = {"p": "/message/status", "o": "replace", "v": "in_progress"}
            elif kind == "end_turn":
                op = {"p": "/message/end_turn", "o": "replace", "v": None}
            elif "content_references" in doc["message"]["metadata"]:
                op = {"p": "/message/metadata/content_references", "o": "append",
                      "v": [{"matched_text": " ", "start_idx": 0, "end_idx": 0, "type": "hidden"}]}
            else:
                op = {"p": "/message/metadata", "o": "append", "v": {"content_references": []}}
            doc = _apply(doc, op["p"], op["o"], op["v"])
            ops.append(op)
        return ops

    def finish(self):
        how = self.draw(st.sampled_from(["list", "list", "status", "open"]))
        if how == "list":
            ops = []
            path = grow_path(self.ref.doc["message"]["content"])[0]
            if path is not None and self.draw(st.booleans()):
                ops.append({"p": path, "o": "append", "v": self.draw(TEXT)})
            ops += [{"p": "/message/status", "o": "replace", "v": "finished_successfully"},
                    {"p": "/message/end_turn", "o": "replace", "v": True},
                    {"p": "/message/metadata", "o": "append",
                     "v": {"finish_details": {"type": "stop", "stop_tokens": [200002]}, "is_complete": True}}]
            self.emit({"p": "", "o": "patch", "v": ops})
        elif how == "status":
            self.emit({"p": "/message/status", "o": "replace", "v": "finished_successfully"})
        # "open": the next root (or [DONE]) ends it

    def build(self):
        system = {"id": "sys-0", "author": {"role": "system", "name": None, "metadata": {}},
                  "content": {"content_type": "text", "parts": [""]}, "status": "finished_successfully",
                  "end_turn": True, "weight": 0.0, "recipient": "all",
                  "metadata": {"is_visually_hidden_from_conversation": True}}
        user = {"id": "u-1", "author": {"role": "user", "name": None, "metadata": {}},
                "content": {"content_type": "text", "parts": ["你好 question"]}, "status": "finished_successfully",
                "end_turn": None, "weight": 1.0, "recipient": "all", "metadata": {}}
        self.noise()
        self.root("system", system)
        self.noise()
        self.root("user", user)
        kinds = self.draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=4))
        for i, kind in enumerate(kinds):
            self.message(kind, "msg-%d" % i)
        self.noise()
        self.emit({"type": "message_stream_complete", "conversation_id": CID}, plain=True)
        self.noise()
        self.out.append(DONE)
        self.ref.stream.append(DONE)
        return b"".join(self.out)


@st.composite
def streams(draw):
    s = Stream(draw)
    blob = s.build()
    cuts = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=40)))
    pieces = [blob[a:b] for a, b in zip([0] + cuts, cuts + [len(blob)], strict=True)]
    return s, pieces


class Recording(MarkdownRenderer):
    """The markdown renderer, also keeping the text of prose and blocks alone."""

    def __init__(self):
        super().__init__()
        self.said = []

    def prose(self, text):
        self.said.append(text)
        super().prose(text)

    def block_text(self, text):
        self.said.append(text)
        super().block_text(text)

    def reasoning(self, text):
        self.said.append(text)
        super().reasoning(text)


def client_view(pieces, renderer=None):
    conv = Conversion(renderer or MarkdownRenderer())
    out = []
    for piece in pieces:
        out.extend(conv.feed(piece))
    out.extend(conv.close())
    reason, error = conv.outcome()
    return "".join(x if type(x) is str else "<%r>" % (x,) for x in out), (reason, error and (error.status, error.code, error.message)), conv.dialect


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


RENDERERS = {"markdown": MarkdownRenderer, "think": lambda: MarkdownRenderer(reasoning="think"),
             "bot": lambda: BotRenderer(plugin_output=True)}


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@PROPERTY
@given(case=streams())
def test_the_v1_decoder_tells_the_client_what_the_reference_does(renderer, case):
    s, pieces = case
    expected = client_view([b"".join(s.ref.stream)], RENDERERS[renderer]())
    got = client_view(pieces, RENDERERS[renderer]())
    assert expected[2] == "legacy" and got[2] == "v1"
    assert got[:2] == expected[:2]


VISIBLE = {"prose", "two_parts", "code", "output", "thoughts", "recap"}  # browsing display is not shown


@PROPERTY
@given(streams())
def test_every_character_arrives_once_in_order(case):
    s, pieces = case
    renderer = Recording()
    client_view(pieces, renderer)
    if not s.ref.took_back:
        assert "".join(renderer.said) == "".join(text for kind, text in s.finals if kind in VISIBLE)
