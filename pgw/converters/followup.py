"""Answers that finish elsewhere: reading a polled conversation, and the body of a continuation.

The one place that knows the shape of ``GET backend-api/conversation/{id}`` (``{"mapping": {id:
{"message": {...}, "parent": id, "children": [id...]}}, "current_node": id}``) and of the
``"action": "continue"`` request. ``pgw.runtime.ConversationRun`` does the IO (polling, resuming,
continuing) and feeds what it gets to the answer's own ``Conversion`` (``Conversion.follow``), so
polled content is converted exactly like streamed content. Nothing here does IO.
"""

from typing import Any, Dict, List, Optional

Message = Dict[str, Any]


def path(doc: Any) -> List[Message]:
    """The messages of the conversation's current branch, oldest first (root to ``current_node``).

    A mapping that loops or points nowhere gives what could be read, never an endless walk."""
    if not isinstance(doc, dict):
        return []
    mapping = doc.get("mapping")
    if not isinstance(mapping, dict):
        return []
    node_id = doc.get("current_node")
    if node_id not in mapping:
        node_id = _last_leaf(mapping)
    out: List[Message] = []
    seen = set()
    while isinstance(node_id, str) and node_id in mapping and node_id not in seen:
        seen.add(node_id)
        node = mapping[node_id]
        if not isinstance(node, dict):
            break
        message = node.get("message")
        if isinstance(message, dict) and message.get("id"):
            out.append(message)
        node_id = node.get("parent")
    out.reverse()
    return out


def _last_leaf(mapping: Dict[str, Any]) -> Optional[str]:
    """Without a usable ``current_node``: the last node that has no children."""
    leaf = None
    for node_id, node in mapping.items():
        if isinstance(node, dict) and not node.get("children"):
            leaf = node_id
    return leaf


def _finished(message: Message) -> bool:
    return message.get("status") not in (None, "in_progress")


def _has_images(message: Message) -> bool:
    parts = (message.get("content") or {}).get("parts") or ()
    return any(isinstance(p, dict) and isinstance(p.get("asset_pointer"), str) for p in parts)


def _turn_ended(messages: List[Message]) -> bool:
    """The last assistant message says the turn is over (finished, ``end_turn: true``)."""
    for message in reversed(messages):
        if (message.get("author") or {}).get("role") == "assistant":
            return message.get("status") == "finished_successfully" and message.get("end_turn") is True
    return False


def images_ready(messages: List[Message], task_ids) -> Optional[List[Message]]:
    """For pending image placeholders (their message ids): the messages to feed once every
    placeholder is resolved (it holds its picture, is a ``system_error``, or the turn went on
    and ended without it) and everything after it has finished; None while still waiting."""
    ids = set(task_ids)
    start = next((i for i, m in enumerate(messages) if m.get("id") in ids), None)
    if start is None:
        return None  # not in the conversation yet: the upstream has not stored it
    rest = messages[start:]
    if not all(_finished(m) for m in rest if m.get("id") not in ids):
        return None
    ended = _turn_ended(rest)
    for m in rest:
        if m.get("id") in ids:
            system_error = (m.get("content") or {}).get("content_type") == "system_error"
            if not (_has_images(m) or system_error or ended):
                return None
    return rest


def turn_ready(messages: List[Message]) -> Optional[List[Message]]:
    """For a hand-off followed by polling: the messages to feed once the last assistant message
    is finished (``finished_successfully``, ``end_turn: true``); None while still waiting."""
    if messages and _turn_ended(messages) and all(_finished(m) for m in messages):
        return messages
    return None


def continue_payload(payload: Dict[str, Any], conversation_id: str, parent_id: str) -> Dict[str, Any]:
    """The web client's "Continue generating": the same model and mode as ``payload`` (the
    request that was cut), ``"action": "continue"`` on its conversation, after its last
    assistant message, and no new messages."""
    body = {k: v for k, v in payload.items() if k != "messages"}
    body["action"] = "continue"
    body["conversation_id"] = conversation_id
    body["parent_message_id"] = parent_id
    return body
