"""Conversations as the fake upstream stores them, for the answers that finish elsewhere
(docs/upstream-protocol.md 5.5, 5.6, and ``"action": "continue"``).

``GET backend-api/conversation/{id}`` answers the whole conversation (``mapping``, ``current_node``)
as it stands *now*: a picture the image tool draws appears there only once its delay has passed
(``script.later``), a handed-off answer only once it has finished (``script.handoff``). The
resume endpoint streams a handed-off answer; a continue request streams the next part of an
answer cut at max_tokens (``script.continuations``), as the same message again or as a new one.
"""

import time
import uuid

from fakeupstream.script import (DELTA_ENCODING, RENDERERS, Msg, Script, _echo, _event, _Patches, legacy_events,
                                 message_dict)

T = 1703062013.02
# When a conversation has no scripted continuation (the plain max_tokens scenario), each
# continue answers this, cut again.
ENDLESS_PART = "（继续）"


class Stored:
    """One conversation: its messages in order, and what happens to it later."""

    def __init__(self, key, cid, model, user_messages, script, encoding, now=None):
        now = time.time() if now is None else now
        self.key = key
        self.cid = cid
        self.model = model
        self.encoding = encoding
        self.ascii = script.ascii
        self.nodes = [_echo(m) for m in user_messages]
        self.later = None       # (ready at, [message dicts]): replaces or follows the stored ones
        self.handoff = None     # {"resume", "token", "turn", "ready_at", "script"}
        self.continuations = getattr(script, "continuations", None)
        handoff = getattr(script, "handoff", None)
        answer = self._finals(script.messages)
        if handoff is None:
            self.nodes.extend(answer)
        else:
            self.handoff = dict(handoff, token="conduit-" + uuid.uuid4().hex, turn=str(uuid.uuid4()),
                                ready_at=now + handoff["delay"], script=script, finals=answer)
            partial = dict(answer[-1], status="in_progress", end_turn=None)
            partial["content"] = dict(partial["content"], parts=[script.messages[-1].text[:5]])
            self.nodes.append(partial)
        later = getattr(script, "later", None)
        if later:
            self.later = (now + later["delay"], self._finals(later["messages"]))
        self.last_msg = script.messages[-1] if script.messages else None

    def _finals(self, messages):
        parent = self.nodes[-1]["id"] if self.nodes else str(uuid.uuid4())
        out = []
        for msg in messages:
            out.append(message_dict(msg, msg.text, True, parent, self.model, T))
            parent = msg.id
        return out

    def messages(self, now=None):
        """The conversation's messages as the upstream has them at ``now``."""
        now = time.time() if now is None else now
        nodes = list(self.nodes)
        if self.handoff is not None and now >= self.handoff["ready_at"]:
            nodes = nodes[:-1] + self.handoff["finals"]
        if self.later is not None and now >= self.later[0]:
            for m in self.later[1]:
                ids = [n["id"] for n in nodes]
                if m["id"] in ids:
                    nodes[ids.index(m["id"])] = m
                else:
                    nodes.append(m)
        return nodes

    def document(self, now=None):
        """What ``GET conversation/{id}`` answers."""
        root = "client-created-root"
        mapping = {root: {"id": root, "message": None, "parent": None, "children": []}}
        parent = root
        for m in self.messages(now):
            mapping[m["id"]] = {"id": m["id"], "message": m, "parent": parent, "children": []}
            mapping[parent]["children"].append(m["id"])
            parent = m["id"]
        return {"title": "演示对话", "create_time": T, "update_time": T, "mapping": mapping,
                "current_node": parent, "conversation_id": self.cid, "is_archived": False,
                "default_model_slug": self.model}

    # hand-offs

    def handoff_events(self, user_messages, pings=True):
        """The POST's whole SSE for a handed-off turn: a resume token, the echo, the hand-off."""
        h = self.handoff
        typed = [{"type": "resume_conversation_token", "kind": "conduit", "token": h["token"],
                  "conversation_id": self.cid}]
        typed += [{"type": "input_message", "input_message": _echo(m), "conversation_id": self.cid}
                  for m in user_messages]
        typed.append({"type": "stream_handoff", "conversation_id": self.cid, "turn_exchange_id": h["turn"],
                      "options": [{"type": "resume_sse_endpoint", "topic_id": "conversation-turn-" + h["turn"]},
                                  {"type": "subscribe_ws_topic", "topic_id": "conversation-turn-" + h["turn"]}]})
        events = [DELTA_ENCODING] if self.encoding == "v1" else []
        events += [_event(t, self.ascii) for t in typed]
        events.append(b"data: [DONE]\n\n")
        return events

    def resume_events(self, pings=True):
        """What ``f/conversation/resume`` streams: the handed-off answer, whole."""
        self.nodes = self.nodes[:-1] + self.handoff["finals"]
        self.handoff["ready_at"] = 0
        return RENDERERS[self.encoding](self.handoff["script"], self.cid, [], pings=pings)

    # continuations

    def continue_events(self, parent_id, pings=True):
        """The next part of an answer cut at max_tokens, or None if ``parent_id`` is not the cut
        message. The stored message grows (same id) or a new one follows it."""
        cut = self.last_msg
        if cut is None or parent_id != cut.id:
            return None
        spec = self.continuations or {"parts": [], "same_id": True, "endless": True}
        if spec["parts"]:
            part = spec["parts"].pop(0)
        else:
            part = ENDLESS_PART
            spec["endless"] = True
        self.continuations = spec
        more = bool(spec["parts"]) or spec.get("endless")
        metadata = {"finish_details": {"type": "max_tokens"}, "is_complete": False} if more else {}
        end_turn = None if more else True
        parent = self.nodes[-2]["id"] if len(self.nodes) > 1 else str(uuid.uuid4())
        if spec["same_id"]:
            old = cut.text
            msg = Msg(old + part, step=cut.step, metadata=metadata, end_turn=end_turn)
            msg.id = cut.id
            events = self._same_message_events(msg, old, parent, pings)
        else:
            msg = Msg(part, step=cut.step, metadata=metadata, end_turn=end_turn)
            parent = cut.id
            events = RENDERERS[self.encoding](Script([msg], self.model), self.cid, [], pings=pings)
            events = [e for e in events if b"title_generation" not in e]
        final = message_dict(msg, msg.text, True, parent, self.model, T)
        if spec["same_id"]:
            self.nodes[-1] = final
        else:
            self.nodes.append(final)
        self.last_msg = msg
        return events

    def _same_message_events(self, msg, old, parent, pings):
        """The cut message streamed again: it starts with its whole text so far and grows."""
        step = msg.step
        text = msg.text
        if self.encoding != "v1":
            msg.cuts = list(range(len(old) + step, len(text), step)) or [len(old)]
            events = legacy_events(Script([msg], self.model), self.cid, [], pings=pings)
            return [e for e in events if b"title_generation" not in e]
        events = [DELTA_ENCODING]
        out = _Patches(events, self.ascii)
        out.add({"message": message_dict(msg, old, False, parent, self.model, T), "conversation_id": self.cid,
                 "error": None}, 0)
        sent = len(old)
        for cut in range(len(old) + step, len(text), step):
            out.op("/message/content/parts/0", "append", text[sent:cut])
            sent = cut
        final = message_dict(msg, text, True, parent, self.model, T)
        ops = [{"p": "/message/content/parts/0", "o": "append", "v": text[sent:]}] if text[sent:] else []
        ops.append({"p": "/message/status", "o": "replace", "v": final["status"]})
        if final["end_turn"] is not None:
            ops.append({"p": "/message/end_turn", "o": "replace", "v": final["end_turn"]})
        ops.append({"p": "/message/metadata", "o": "append", "v": final["metadata"]})
        out.patch(ops)
        events.append(_event({"type": "message_stream_complete", "conversation_id": self.cid}, self.ascii))
        events.append(b"data: [DONE]\n\n")
        return events

