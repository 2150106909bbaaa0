"""A faithful fake of the PandoraNext backend-api, for tests and for ``./run.sh --demo``.

It answers ``POST /backend-api/conversation`` like the real upstream (docs/upstream.md),
with any proxy prefix in front of ``backend-api``. What it answers is a scenario picked by a
word in the last user message, or planned for an API key by a test:

    POST /_fake/plan {"key": "k1", "scenario": "long", "chunking": "random:7", "pace_ms": 1, ...}
    GET  /_fake/log?key=k1       -> every request that key made, and whether the client aborted
    POST /_fake/release?key=k1   -> let a stream held by the plan's "gate" go on

Plan options: scenario, options (scenario arguments), chunking (event | whole | bytes:N |
random:SEED), pace_ms, pings, raw_sse (a whole SSE body a test wrote, served verbatim), raw_utf8
(JSON with raw UTF-8 rather than the real upstream's ``\\uXXXX`` escapes, so that chunks split
characters), status (+ detail, cloudflare, headers, page + content_type for a non-JSON body) for an
error answer, hold_s before answering, silence [piece index, seconds], gate (piece index at which
the stream waits for a release; headers are always sent at once, as the real upstream does).

Fault plans (tests of what a misbehaving upstream does to the gateway):

    "fault": "html_200"        200 with an HTML page (a proxy's or Cloudflare's) instead of events
    "fault": "enormous_line"   200, then one ``data:`` line of "fault_bytes" bytes that never ends
    "fault": "invalid_utf8"    the answer, with every other unfinished message's JSON broken by bytes
                               that are not UTF-8 (with whole-message snapshots the final event
                               repairs the text)
    "flood": N                 a v1 answer of N characters of text, written as fast as the socket
                               takes it (64 KB writes, the events made as they are sent)

Files (DALL·E images, charts, files the code wrote) are fetched as upstream does it: the
backend-api call answers a ``download_url`` on this host (``/_fake/blob/...``), which a plain
GET without Authorization turns into the bytes (fakeupstream/files.py).

The answer comes in the v1 delta dialect when the request asks for ``"supported_encodings":
["v1"]`` (in the form live accounts send in 2025-2026), else whole messages; ``"encoding":
"legacy" | "v1" | "v1-2024"`` in a plan forces one (``v1-2024``: the early-2024 v1 form). The
log says which (``encoding``).

Answers that finish elsewhere (fakeupstream/stored.py): every conversation is kept, and ``GET
backend-api/conversation/{id}`` answers it as it stands now (a picture the image tool draws
appears only after its delay); ``POST f/conversation/resume`` (``x-conduit-token``) streams a
handed-off turn; ``"action": "continue"`` streams the next part of an answer cut at max_tokens;
``GET conversation/{id}/attachment/{file}/download`` serves ``sediment://`` pictures. Plan keys:
``continue_status`` (refuse continues with that status), ``poll_status`` (refuse the GET). The
log records every poll, so tests can see when polling stopped.

Plans are per key, so tests running against one fake upstream do not see each other. Besides
conversations it answers the file upload (``POST files``, ``PUT upload_url``, ``POST
files/{id}/uploaded``) and ``GET gizmos/{id}``; plan keys for those:

    "gizmos": {"g-abc": {"name": "Display Name"}}   names to answer with (default "GPT g-abc")
    "gizmo_fail": {"g-abc": 1}                      fail that many fetches of the gizmo (HTTP 500)
    "upload_fail": {"step": "create" | "put" | "uploaded", "status": 500}

Accounts, as ChatGPT's behave: a JWT access token (``mint_jwt``) is filed under its ``sub`` (the
account), so plans and logs follow the account through refreshes. Such an account answers one
message at a time (a second one gets the real 429 "Only one message at a time"; plan
``exclusive`` turns this on or off for any key); an expired JWT, or one issued before the plan's
``tokens_valid_after``, gets 401 (on every call, as a key planned ``status: 401`` does; a valid
token gets the real 404 "Conversation not found" for a conversation id it does not own, the
call a gateway re-checks a refused token with). Plan ``caps``: ``{"gpt-4o": {"after": 2, "clears_in": 30}}``
answers 429 ``model_cap_exceeded`` after that many conversations on that model. Every
conversation record has ``time`` (start), ``ended`` and ``refused`` (busy, cap), so tests can
check that no account ever answered two at once. ``POST /_fake/oauth/token`` is the refresh
grant: ``rt-<account>-<anything>`` answers a JWT for that account (plan ``token_ttl``, ``rotate``,
``token_fail``); ``GET /_fake/active`` lists the conversations being answered now.

The PUT to ``upload_url`` carries no Authorization (it goes to blob storage), so each
``upload_url`` holds a random token that the fake maps back to the key that created the file.
``GET /_fake/static/<file>`` serves fakeupstream/static/ and ``GET /_fake/redirect?to=URL``
answers 302, ``GET /_fake/bytes?n=N`` N bytes, for tests of fetching files by URL.
"""

import asyncio
import base64
import collections
import hashlib
import logging
import os
import random
import time
import uuid

import ujson
import tornado.web
from tornado.iostream import StreamClosedError

from fakeupstream import files, scenarios
from fakeupstream.stored import Stored
from fakeupstream.script import RENDERERS


MAX_CONVERSATIONS = 2000


class State:
    """Plans and request log, per API key."""

    def __init__(self):
        self.active = {}  # key -> conversations answering now (one message at a time)
        self.model_counts = {}  # (key, model) -> conversations started (usage caps)
        self.revoked = set()    # refresh tokens replaced by a rotation
        self.plans = {}   # key -> plan dict (sticky until replaced)
        self.log = {}     # key -> [record]
        self.gates = {}   # key -> asyncio.Event
        self.upload_tokens = {}  # token in an upload_url -> key that created the file
        self.files = {}   # file id -> {"key", "file_name", "file_size", "use_case", "put": bool}
        # conversation id -> Stored (GET conversation/{id}, resume, continue); the oldest are
        # forgotten past MAX_CONVERSATIONS, so a demo that runs for days stays small
        self.conversations = collections.OrderedDict()

    def gate(self, key):
        if key not in self.gates:
            self.gates[key] = asyncio.Event()
        return self.gates[key]

    def remember(self, stored):
        self.conversations[stored.cid] = stored
        while len(self.conversations) > MAX_CONVERSATIONS:
            self.conversations.popitem(last=False)
        return stored

    def record(self, key, record):
        self.log.setdefault(key, []).append(record)
        return record


def mint_jwt(sub, exp):
    """An access token shaped like ChatGPT's (a JWT; the fake never checks the signature)."""
    def part(obj):
        return base64.urlsafe_b64encode(ujson.dumps(obj).encode()).rstrip(b"=").decode()
    return "%s.%s.%s" % (part({"alg": "RS256", "typ": "JWT"}),
                         part({"sub": sub, "exp": exp, "iat": time.time(),
                               "https://api.openai.com/auth": {"user_id": sub}}),
                         "fake-signature")


def jwt_claims(token):
    parts = token.split(".")
    if len(parts) != 3 or not token.startswith("eyJ"):
        return None
    try:
        claims = ujson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def _key(handler):
    """The key plans and logs are filed under: the bearer token, or for a JWT its ``sub`` (the
    account), so that a refreshed token still names the same account."""
    auth = handler.request.headers.get("Authorization", "")
    key = auth[7:] if auth.startswith("Bearer ") else ""
    claims = jwt_claims(key.split(",")[0]) if key else None
    if claims is not None and isinstance(claims.get("sub"), str):
        sub = claims["sub"]
        # plan "tokens_valid_after": tokens issued before then are refused (a sign-out elsewhere)
        revoked = (handler.state.plans.get(sub) or {}).get("tokens_valid_after", 0) > claims.get("iat", 0)
        handler.expired = revoked or (isinstance(claims.get("exp"), (int, float)) and claims["exp"] < time.time())
        return sub
    return key


ONE_AT_A_TIME = ("Only one message at a time. Please allow any other responses to complete before sending another "
                 "message, or wait one minute.")


def _key_raw(handler):
    auth = handler.request.headers.get("Authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else ""


class FakeHandler(tornado.web.RequestHandler):
    expired = False   # the request's JWT access token has expired

    def initialize(self, state):
        self.state = state

    def check_xsrf_cookie(self):
        pass

    def json(self, status, obj):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(ujson.dumps(obj, ensure_ascii=False))

    def start_record(self):
        key = _key(self)
        body = None
        if self.request.body:
            try:
                body = ujson.loads(self.request.body)
            except ValueError:
                body = self.request.body.decode("utf-8", "replace")
        return key, self.state.record(key, {
            "method": self.request.method, "path": self.request.path, "query": self.request.query,
            "authorization": self.request.headers.get("Authorization"),
            "account_id": self.request.headers.get("ChatGPT-Account-Id"), "body": body,
            "time": time.time(), "aborted": False, "completed": False})

    def refuse_without_key(self, key):
        """401 as the real upstream answers it to every authenticated call: no key, an expired or
        signed-out JWT, or a key planned ``status: 401`` (a revoked token is refused everywhere,
        not only on conversations: a gateway's re-check of it must see that too)."""
        if not key:
            self.json(401, {"detail": "Unauthorized"})
            return True
        plan = self.state.plans.get(key) or {}
        if plan.get("status") == 401:
            self.json(401, {"detail": plan.get("detail") or "Unauthorized"})
            return True
        if self.expired:
            self.json(401, {"detail": {"message": "Your authentication token has expired. Please try signing in "
                                                  "again.", "type": "invalid_request_error", "code": "token_expired"}})
            return True
        return False


class ConversationHandler(FakeHandler):
    async def post(self, prefix=None):
        key, record = self.start_record()
        self._record = record
        if self.refuse_without_key(key):
            return
        plan = dict(self.state.plans.get(key) or {})
        body = record["body"] if isinstance(record["body"], dict) else {}
        if plan.get("hold_s"):
            await asyncio.sleep(plan["hold_s"])
        status = plan.get("status")
        if status:
            return self._error(status, plan)
        if self._refused_by_account(key, plan, body):
            return
        self.state.active[key] = self.state.active.get(key, 0) + 1
        self._active_key = key
        try:
            await self._answer(key, plan, body, record)
        finally:
            self.state.active[key] -= 1
            self._active_key = None
            record["ended"] = time.time()

    def _refused_by_account(self, key, plan, body):
        """What a real account refuses before answering: a second message while one is being
        answered (plan ``exclusive``, always for JWT accounts), and usage caps per model (plan
        ``caps``: ``{"gpt-4o": {"after": 2, "clears_in": 30}}``)."""
        exclusive = plan.get("exclusive", key != _key_raw(self))
        if exclusive and self.state.active.get(key, 0) > 0:
            self._record["refused"] = "busy"
            self.json(429, {"detail": ONE_AT_A_TIME})
            return True
        model = body.get("model", "")
        cap = (plan.get("caps") or {}).get(model)
        if cap is not None:
            n = self.state.model_counts.get((key, model), 0)
            if n >= cap.get("after", 0):
                self._record["refused"] = "cap"
                self.json(429, {"detail": {"code": "model_cap_exceeded", "clears_in": cap.get("clears_in", 3600),
                                           "message": "You have sent too many messages to the model. "
                                                      "Please try again later."}})
                return True
            self.state.model_counts[(key, model)] = n + 1
        return False

    async def _answer(self, key, plan, body, record):
        if plan.get("fault") in ("html_200", "enormous_line"):
            return await self._fault(plan["fault"], plan)
        if plan.get("flood"):
            return await self._flood(int(plan["flood"]))
        raw = plan.get("raw_sse")
        if raw is not None:
            # A transcript a test wrote itself, served verbatim (cut by the plan's chunking): the
            # gateway is then checked against the protocol's text, not against this fake's script.
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            record["encoding"] = "raw"
            await self._write_events([raw.encode("utf-8", "surrogatepass")], plan, drop=False, key=key)
            if not record["aborted"]:  # _write_events returns early when the gateway left
                record["completed"] = True
            return
        # Like the real upstream: v1 only for clients that ask for it; a plan may force either.
        encoding = plan.get("encoding") or ("v1" if "v1" in (body.get("supported_encodings") or ()) else "legacy")
        record["encoding"] = encoding
        if body.get("action") == "continue":
            return await self._continue(key, body, plan, encoding)
        messages = body.get("messages") or []
        ask = ""
        for m in messages:
            parts = (m.get("content") or {}).get("parts") or []
            ask = " ".join(p for p in parts if isinstance(p, str)) or ask
        name = plan.get("scenario") or scenarios.pick(ask, body.get("system_hints") or ())
        make = scenarios.SCENARIOS[name]
        options = plan.get("options") or {}
        script = make(ask, body.get("model", "gpt-4"), **options)
        script.ascii = not plan.get("raw_utf8")
        cid = str(uuid.uuid4())
        stored = self.state.remember(Stored(key, cid, body.get("model", "gpt-4"), messages, script, encoding))
        record["conversation_id"] = cid
        if stored.handoff is not None:
            events = stored.handoff_events(messages)
        else:
            events = RENDERERS[encoding](script, cid, messages, pings=plan.get("pings", True))
        if plan.get("future_patches") and encoding.startswith("v1"):
            events = with_future_patches(events)
        if plan.get("fault") == "invalid_utf8":
            events = [ev.replace(b'"parts": ["', b'"parts": ["\xff\xfe') if i % 2 and b'"in_progress"' in ev else ev
                      for i, ev in enumerate(events)]
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        await self._write_events(events, plan, drop=not script.done, key=key)
        if not record["aborted"]:  # _write_events returns early when the gateway left
            record["completed"] = True

    async def _fault(self, fault, plan):
        try:
            if fault == "html_200":
                self.set_header("Content-Type", "text/html; charset=utf-8")
                return self.finish(b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
                                   b"<body><div class='cf-browser-verification'>Checking your browser</div>"
                                   b"</body></html>\n")
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.write(b'data: {"message": {"content": {"parts": ["')
            await self.flush()
            left = int(plan.get("fault_bytes", 64 << 20))
            piece = b"x" * 65536
            while left > 0 and not self._record["aborted"]:
                self.write(piece[:left])
                left -= len(piece)
                await self.flush()
            self.finish()
        except StreamClosedError:
            self._record["aborted"] = True

    async def _flood(self, chars):
        """A big v1 answer at full speed, made while it is sent (the fake holds one write)."""
        cid = str(uuid.uuid4())
        msg = {"id": str(uuid.uuid4()), "author": {"role": "assistant", "name": None, "metadata": {}},
               "content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "end_turn": None,
               "weight": 1.0, "metadata": {"model_slug": "gpt-4"}, "recipient": "all"}
        head = (b'event: delta_encoding\ndata: "v1"\n\n' + b"event: delta\ndata: " + ujson.dumps(
            {"p": "", "o": "add", "v": {"message": msg, "conversation_id": cid, "error": None}, "c": 0}).encode()
            + b"\n\n")
        step = b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "%s"}\n\n'
        tail = (b'event: delta\ndata: {"p": "", "o": "patch", "v": [{"p": "/message/status", "o": "replace", '
                b'"v": "finished_successfully"}, {"p": "/message/end_turn", "o": "replace", "v": true}, '
                b'{"p": "/message/metadata", "o": "append", "v": {"finish_details": {"type": "stop"}, '
                b'"is_complete": true}}]}\n\n'
                b'data: {"type": "message_stream_complete", "conversation_id": "%s"}\n\ndata: [DONE]\n\n'
                % cid.encode())
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        try:
            self.write(head)
            await self.flush()
            sent = 0
            while sent < chars and not self._record["aborted"]:
                batch = []
                for _ in range(400):  # ~64 KB of events per write
                    if sent >= chars:
                        break
                    n = min(100, chars - sent)
                    batch.append(step % flood_text(sent, n))
                    sent += n
                self.write(b"".join(batch))
                await self.flush()
            if self._record["aborted"]:
                return
            self.write(tail)
            if not self._record["aborted"]:  # _write_events returns early when the gateway left
                self._record["completed"] = True
            self.finish()
        except StreamClosedError:
            self._record["aborted"] = True
    async def _continue(self, key, body, plan, encoding):
        """``"action": "continue"``: the next part of the answer cut at max_tokens."""
        stored = self.state.conversations.get(body.get("conversation_id"))
        if stored is None or stored.key != key:
            return self.json(404, {"detail": "Conversation not found"})
        if plan.get("continue_status"):
            return self.json(plan["continue_status"], {"detail": "continue refused (planned)"})
        stored.encoding = encoding
        events = stored.continue_events(body.get("parent_message_id"), pings=plan.get("pings", True))
        if events is None:
            return self.json(400, {"detail": "parent_message_id is not the message to continue"})
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        await self._write_events(events, plan, drop=False, key=key)
        if not self._record["aborted"]:  # _write_events returns early when the gateway left
            self._record["completed"] = True

    async def _write_events(self, events, plan, drop, key):
        pieces = split(events, plan.get("chunking", "event"))
        pace = plan.get("pace_ms", 0) / 1000.0
        silence = plan.get("silence")  # [piece index, seconds]: a long tool run
        gate = plan.get("gate")
        try:
            await self.flush()  # the status line and headers go out before any answer byte
            for i, piece in enumerate(pieces):
                if silence and i == silence[0]:
                    await asyncio.sleep(silence[1])
                if gate is not None and i == gate:
                    await self._wait_for_release(key)
                if self._record["aborted"]:
                    return
                self.write(piece)
                await self.flush()
                if pace:
                    await asyncio.sleep(pace)
            if drop:
                self.request.connection.stream.close()  # mid-answer, no terminating chunk
                return
            self.finish()
        except StreamClosedError:
            self._record["aborted"] = True

    async def _wait_for_release(self, key):
        """Wait for the test's release, but give up once the client has gone."""
        event = self.state.gate(key)
        while not event.is_set() and not self._record["aborted"]:
            try:
                await asyncio.wait_for(event.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    def on_connection_close(self):
        if not self._record.get("completed"):
            self._record["aborted"] = True

    def _error(self, status, plan):
        detail = plan.get("detail")
        for name, value in (plan.get("headers") or {}).items():  # e.g. Retry-After
            self.set_header(name, value)
        if plan.get("page") is not None:  # what another server answers: an HTML or text page
            self.set_status(status)
            self.set_header("Content-Type", plan.get("content_type", "text/html"))
            return self.finish(plan["page"])
        if status == 403 and plan.get("cloudflare"):
            self.set_status(403)
            self.set_header("Content-Type", "text/html")
            return self.finish("<html><body><div class='cf-please-wait'>Just a moment...</div></body></html>")
        defaults = {
            401: "Unauthorized",
            403: "You do not have access to this model.",
            404: "Conversation not found",
            413: {"message": "The message you submitted was too long, please reload the conversation and "
                              "submit something shorter."},
            429: {"code": "model_cap_exceeded",
                  "message": "You've reached the current usage cap for GPT-4, please try again after 2:27 PM.",
                  "clears_in": 3600},
            500: "Internal server error",
            502: "Bad gateway",
        }
        self.json(status, {"detail": detail if detail is not None else defaults.get(status, "error")})


_ALPHABET = b"abcdefghijklmnopqrstuvwxyz" * 8


def flood_text(offset, n):
    """Characters ``offset`` to ``offset + n`` (n <= 100) of a flood answer (plan "flood"): the
    alphabet over and over, so a test can check the whole text from its length alone."""
    return _ALPHABET[offset % 26:offset % 26 + n]


FUTURE_PATCH = b'event: delta\ndata: {"p": "/message/content/parts/0", "o": "future_op", "v": "?"}\n\n'
FUTURE_EVENT = b'data: {"type": "future_kind", "payload": {"p": 1}}\n\n'


def with_future_patches(events):
    """A v1 stream as a later upstream might send it: an operation and an event kind nobody
    knows yet, after the first message's ``add`` (plan option ``future_patches``)."""
    for i, event in enumerate(events):
        if event.startswith(b'event: delta\ndata: {"p": "", "o": "add"'):
            return events[:i + 1] + [FUTURE_PATCH, FUTURE_PATCH, FUTURE_EVENT] + events[i + 1:]
    return events


def split(events, chunking):
    """Cut the stream into network pieces: ``event`` (one per event), ``whole``, ``bytes:N``
    (every N bytes) or ``random:SEED[:MAX]`` (random sizes of 1 to MAX bytes, 97 by default)."""
    if chunking == "event":
        return events
    blob = b"".join(events)
    if chunking == "whole":
        return [blob]
    kind, _, arg = chunking.partition(":")
    if kind == "bytes":
        n = max(1, int(arg))
        return [blob[i:i + n] for i in range(0, len(blob), n)]
    if kind == "random":
        seed, _, most = arg.partition(":")
        rng = random.Random(int(seed or 0))
        most = int(most or 97)
        pieces, i = [], 0
        while i < len(blob):
            n = rng.randint(1, most)
            pieces.append(blob[i:i + n])
            i += n
        return pieces
    raise ValueError("unknown chunking %r" % chunking)


class HideHandler(FakeHandler):
    """``PATCH conversation/{id}`` hides it; ``GET`` answers the whole conversation as it stands
    now (a picture drawn later, a handed-off answer, appear there in their time)."""

    def patch(self, prefix, conversation_id):
        key, record = self.start_record()
        if self.refuse_without_key(key):
            return
        self.json(200, {"success": True})

    def get(self, prefix, conversation_id):
        key, record = self.start_record()
        if self.refuse_without_key(key):
            return
        stored = self.state.conversations.get(conversation_id)
        if stored is None or stored.key != key:
            return self.json(404, {"detail": "Conversation not found"})
        status = (self.state.plans.get(key) or {}).get("poll_status")
        if status:
            return self.json(status, {"detail": "poll refused (planned)"})
        self.json(200, stored.document())


class ResumeHandler(ConversationHandler):
    """``POST f/conversation/resume`` with ``x-conduit-token``: the rest of a handed-off turn."""

    async def post(self, prefix=None):
        key, record = self.start_record()
        self._record = record
        record["conduit_token"] = self.request.headers.get("x-conduit-token")
        if self.refuse_without_key(key):
            return
        body = record["body"] if isinstance(record["body"], dict) else {}
        stored = self.state.conversations.get(body.get("conversation_id"))
        if stored is None or stored.key != key or stored.handoff is None:
            return self.json(404, {"detail": "Conversation not found"})
        if record["conduit_token"] != stored.handoff["token"] or body.get("offset") != 0:
            return self.json(403, {"detail": "invalid conduit token"})
        if not stored.handoff["resume"]:
            return self.json(404, {"detail": "resume is not available through this proxy"})
        plan = dict(self.state.plans.get(key) or {})
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        await self._write_events(stored.resume_events(pings=plan.get("pings", True)), plan, drop=False, key=key)
        if not record["aborted"]:  # _write_events returns early when the gateway left
            record["completed"] = True


class AttachmentDownloadHandler(FakeHandler):
    """``GET conversation/{cid}/attachment/{file_id}/download``: a ``sediment://`` picture."""

    def get(self, prefix, conversation_id, file_id):
        key, record = self.start_record()
        if self.refuse_without_key(key):
            return
        stored = self.state.conversations.get(conversation_id)
        if stored is None or stored.key != key or files.image_bytes(file_id) is None:
            return self.json(404, {"detail": "File not found"})
        self.json(200, {"status": "success", "file_name": file_id + ".png", "file_size_bytes": 74,
                        "download_url": "%s://%s/_fake/blob/file/%s?sig=demo" % (
                            self.request.protocol, self.request.host, file_id)})


class FileDownloadHandler(FakeHandler):
    """``GET backend-api/files/{id}/download`` -> a download_url for the file's bytes."""

    def get(self, prefix, file_id):
        key, record = self.start_record()
        if self.refuse_without_key(key):
            return
        if files.image_bytes(file_id) is None:
            return self.json(404, {"detail": "File not found"})
        self.json(200, {"status": "success", "file_name": file_id + ".png", "metadata": {},
                        "download_url": "%s://%s/_fake/blob/file/%s?sig=demo" % (
                            self.request.protocol, self.request.host, file_id)})


class InterpreterDownloadHandler(FakeHandler):
    """``GET backend-api/conversation/{cid}/interpreter/download?message_id=&sandbox_path=``."""

    def get(self, prefix, conversation_id):
        key, record = self.start_record()
        if self.refuse_without_key(key):
            return
        path = self.get_argument("sandbox_path", "")
        if not self.get_argument("message_id", "") or not path.startswith("/mnt/data/"):
            return self.json(400, {"detail": "bad sandbox download request"})
        self.json(200, {"status": "success", "download_url": "%s://%s/_fake/blob/sandbox%s?sig=demo" % (
            self.request.protocol, self.request.host, path)})


class BlobHandler(FakeHandler):
    """The download_url itself: plain GET, no Authorization, the bytes."""

    def get(self, kind, name):
        self.start_record()
        data = files.image_bytes(name) if kind == "file" else files.sandbox_bytes("/" + name)
        if data is None:
            self.set_status(404)
            return self.finish(b"")
        if kind == "file":
            self.set_header("Content-Type", "image/webp" if data[:4] == b"RIFF" else "image/png")
        else:
            self.set_header("Content-Type", "text/csv")
        self.finish(data)


class FilesHandler(FakeHandler):
    """Step 1 of an upload: ``POST files`` -> an ``upload_url`` on blob storage and a file id."""

    def post(self, prefix=None):
        key, record = self.start_record()
        if self.refuse_without_key(key) or _planned_upload_failure(self, key, "create"):
            return
        body = record["body"] if isinstance(record["body"], dict) else {}
        if not isinstance(body.get("file_name"), str) or not isinstance(body.get("file_size"), int) \
                or body.get("use_case") not in ("multimodal", "my_files", "ace_upload"):
            return self.json(422, {"detail": [{"loc": ["body"], "msg": "file_name, file_size and use_case (multimodal, "
                                                                      "my_files, ace_upload) are required"}]})
        file_id = "file-" + uuid.uuid4().hex[:24]
        token = uuid.uuid4().hex
        self.state.upload_tokens[token] = key
        self.state.files[file_id] = dict(body, key=key, put=False)
        upload_url = "%s://%s/_fake/upload/%s/%s?se=2099-01-01&sp=cw&sig=fake" % (
            self.request.protocol, self.request.host, token, file_id)
        self.json(200, {"status": "success", "upload_url": upload_url, "file_id": file_id})


class UploadBlobHandler(FakeHandler):
    """Step 2: ``PUT upload_url`` as Azure blob storage takes it (no Authorization, a SAS URL)."""

    def put(self, token, file_id):
        key = self.state.upload_tokens.get(token)
        meta = self.state.files.get(file_id)
        if key is None or meta is None or meta["key"] != key:
            self.set_status(403)
            return self.finish("<Error><Code>AuthenticationFailed</Code></Error>")
        data = self.request.body
        self.state.record(key, {
            "method": "PUT", "path": self.request.path, "query": self.request.query,
            "authorization": self.request.headers.get("Authorization"),
            "x-ms-blob-type": self.request.headers.get("x-ms-blob-type"),
            "content-type": self.request.headers.get("Content-Type"),
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "time": time.time()})
        if _planned_upload_failure(self, key, "put"):
            return
        if self.request.headers.get("x-ms-blob-type") != "BlockBlob":
            self.set_status(400)
            return self.finish("<Error><Code>MissingRequiredHeader</Code></Error>")
        meta["put"] = True
        self.set_status(201)
        self.finish()


class UploadedHandler(FakeHandler):
    """Step 3: ``POST files/{id}/uploaded`` once the bytes are in."""

    def post(self, prefix, file_id):
        key, record = self.start_record()
        if self.refuse_without_key(key) or _planned_upload_failure(self, key, "uploaded"):
            return
        meta = self.state.files.get(file_id)
        if meta is None or meta["key"] != key or not meta["put"]:
            return self.json(404, {"detail": "File not found"})
        self.json(200, {"status": "success", "download_url": "%s://%s/_fake/blob/file/%s?sig=demo" % (
            self.request.protocol, self.request.host, file_id)})


def _planned_upload_failure(handler, key, step):
    fail = (handler.state.plans.get(key) or {}).get("upload_fail") or {}
    if fail.get("step") != step:
        return False
    status = fail.get("status", 500)
    if step == "put":
        handler.set_status(status)
        handler.finish("<Error><Code>InternalError</Code></Error>")
    else:
        handler.json(status, {"detail": fail.get("detail", "upload step %s failed (planned)" % step)})
    return True


class GizmoHandler(FakeHandler):
    """``GET gizmos/{id}``: the GPT's gizmo object, shaped like the web client's."""

    def get(self, prefix, gizmo_id):
        key, record = self.start_record()
        if self.refuse_without_key(key):
            return
        plan = self.state.plans.get(key) or {}
        fails = plan.get("gizmo_fail") or {}
        if fails.get(gizmo_id, 0) > 0:
            fails[gizmo_id] -= 1
            return self.json(500, {"detail": "Internal server error"})
        name = ((plan.get("gizmos") or {}).get(gizmo_id) or {}).get("name") or "GPT " + gizmo_id
        self.json(200, gizmo_object(gizmo_id, name))


def gizmo_object(gizmo_id, name):
    return {
        "gizmo": {"id": gizmo_id, "organization_id": "org-fake", "short_url": gizmo_id,
                  "author": {"user_id": "user-fake", "display_name": "Fake Author", "is_verified": False},
                  "voice": {"id": "ember"}, "workspace_id": None, "model": None, "instructions": None,
                  "settings": {}, "display": {"name": name, "description": "A GPT answered by the demo upstream.",
                                              "welcome_message": "Hello", "prompt_starters": [],
                                              "profile_picture_url": None, "categories": []},
                  "share_recipient": "marketplace", "updated_at": "2023-12-20T12:34:56.123456+00:00",
                  "last_interacted_at": None, "tags": ["public"]},
        "tools": [{"id": "gzm_cnf_fake~gzm_tool_fake", "type": "browser", "settings": None, "metadata": None}],
        "files": [],
        "product_features": {"attachments": {"type": "retrieval",
                                             "accepted_mime_types": ["application/pdf", "text/plain"],
                                             "image_mime_types": ["image/jpeg", "image/png", "image/gif", "image/webp"],
                                             "can_accept_all_mime_types": True}},
    }


class BytesHandler(FakeHandler):
    """``GET /_fake/bytes?n=5000&type=...&chunked=1``: n bytes, without Content-Length if chunked.
    ``gate=NAME``: log the fetch under the key NAME, then wait for ``/_fake/release?key=NAME``;
    the record says ``"aborted": true`` once the fetching side has closed the connection."""

    _gated = None

    async def get(self):
        gate = self.get_argument("gate", "")
        if gate:
            self._gated = self.state.record(gate, {"method": "GET", "path": self.request.path,
                                                   "query": self.request.query, "aborted": False})
            event = self.state.gate(gate)
            for _ in range(600):  # at most a minute
                if event.is_set() or self._gated["aborted"]:
                    break
                await asyncio.sleep(0.1)
            if self._gated["aborted"]:
                return
        n = int(self.get_argument("n"))
        self.set_header("Content-Type", self.get_argument("type", "application/octet-stream"))
        if self.get_argument("chunked", ""):
            for i in range(0, n, 1024):
                self.write(b"x" * min(1024, n - i))
                await self.flush()
        else:
            self.write(b"x" * n)
        self.finish()

    def on_connection_close(self):
        if self._gated is not None:
            self._gated["aborted"] = True


class RedirectHandler(tornado.web.RequestHandler):
    def get(self):
        self.redirect(self.get_argument("to"))


class TokenHandler(FakeHandler):
    """The OAuth2 token endpoint: ``grant_type=refresh_token`` (JSON or form). A refresh token
    ``rt-<account>-<anything>`` answers a JWT access token for that account, valid for the
    account plan's ``token_ttl`` seconds (default ten days); with ``rotate`` the answer carries a
    new refresh token and the old one stops working. ``token_fail``: answer that HTTP status."""

    def post(self):
        try:
            body = ujson.loads(self.request.body)
        except ValueError:
            body = {k: self.get_body_argument(k, "") for k in ("grant_type", "client_id", "refresh_token",
                                                               "redirect_uri")}
        rt = body.get("refresh_token") or ""
        sub = rt.split("-")[1] if rt.startswith("rt-") and rt.count("-") >= 2 else None
        if sub is not None:
            self.state.record(sub, {"method": "POST", "path": self.request.path, "grant": body, "time": time.time()})
        plan = self.state.plans.get(sub) or {}
        if plan.get("token_fail"):
            return self.json(plan["token_fail"], {"error": "server_error"})
        if body.get("grant_type") != "refresh_token" or not body.get("client_id") or sub is None \
                or rt in self.state.revoked:
            return self.json(403, {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."})
        ttl = plan.get("token_ttl", 864000)  # about ten days, as ChatGPT gives
        answer = {"access_token": mint_jwt(sub, int(time.time() + ttl)), "expires_in": ttl, "token_type": "Bearer",
                  "id_token": "fake", "scope": "openid profile email offline_access"}
        if plan.get("rotate"):
            self.state.revoked.add(rt)
            answer["refresh_token"] = "rt-%s-%s" % (sub, uuid.uuid4().hex)
        self.json(200, answer)


class ActiveHandler(FakeHandler):
    """``GET /_fake/active``: conversations being answered now, per key (for tests)."""

    def get(self):
        self.json(200, {k: v for k, v in self.state.active.items() if v})


class PlanHandler(FakeHandler):
    def post(self):
        plan = ujson.loads(self.request.body)
        self.state.plans[plan.pop("key")] = plan
        self.json(200, {"ok": True})


class ReleaseHandler(FakeHandler):
    def post(self):
        self.state.gate(self.get_argument("key")).set()
        self.json(200, {"ok": True})


class LogHandler(FakeHandler):
    def get(self):
        self.json(200, self.state.log.get(self.get_argument("key"), []))


STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


access_log = logging.getLogger("fakeupstream.access")


def _log_request(handler):
    """The demo upstream's own access line, under its own logger name (``fakeupstream``), at
    DEBUG: run by ``--demo`` inside the gateway's process, it never mixes into the gateway's log."""
    access_log.debug("%s %s %d %.1fms", handler.request.method, handler.request.path, handler.get_status(),
                     1000 * handler.request.request_time())


def make_app(state=None):
    state = state or State()
    args = {"state": state}
    return tornado.web.Application(log_function=_log_request, handlers=[
        (r"/(?:(.+)/)?backend-api/conversation", ConversationHandler, args),
        (r"/(?:(.+)/)?backend-api/f/conversation", ConversationHandler, args),
        (r"/(?:(.+)/)?backend-api/f/conversation/resume", ResumeHandler, args),
        (r"/(?:(.+)/)?backend-api/conversation/([^/]+)/attachment/([^/]+)/download", AttachmentDownloadHandler, args),
        (r"/(?:(.+)/)?backend-api/conversation/([^/]+)", HideHandler, args),
        (r"/(?:(.+)/)?backend-api/conversation/([^/]+)/interpreter/download", InterpreterDownloadHandler, args),
        (r"/(?:(.+)/)?backend-api/files/([^/]+)/download", FileDownloadHandler, args),
        (r"/_fake/blob/(file|sandbox)/(.+)", BlobHandler, args),
        (r"/(?:(.+)/)?backend-api/files", FilesHandler, args),
        (r"/(?:(.+)/)?backend-api/files/([^/]+)/uploaded", UploadedHandler, args),
        (r"/(?:(.+)/)?backend-api/gizmos/([^/]+)", GizmoHandler, args),
        (r"/_fake/upload/([0-9a-f]+)/([^/]+)", UploadBlobHandler, args),
        (r"/_fake/static/(.*)", tornado.web.StaticFileHandler, {"path": STATIC}),
        (r"/_fake/redirect", RedirectHandler),
        (r"/_fake/bytes", BytesHandler, args),
        (r"/_fake/plan", PlanHandler, args),
        (r"/(?:_fake/)?oauth/token", TokenHandler, args),
        (r"/_fake/active", ActiveHandler, args),
        (r"/_fake/log", LogHandler, args),
        (r"/_fake/release", ReleaseHandler, args),
    ])


def listen_app(state=None, port=0, address="127.0.0.1"):
    """Start the fake upstream on the current IOLoop; return its base URL."""
    import tornado.httpserver
    import tornado.netutil
    sockets = tornado.netutil.bind_sockets(port, address)
    server = tornado.httpserver.HTTPServer(make_app(state))
    server.add_sockets(sockets)
    return "http://%s:%d" % (address, sockets[0].getsockname()[1])


def listen(port=0, address="127.0.0.1"):
    return listen_app(None, port, address)


start_demo_upstream = listen
