"""The OpenAI wire shapes: ``chat.completion.chunk`` events and the ``chat.completion`` body.

A stream sends thousands of chunks that differ only in their delta, so the constant part of a
chunk is encoded once per stream and only the delta is encoded per chunk.
"""

import ujson

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: every SSE client skips it


def _dumps(obj):
    return ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)


class ChunkEncoder:
    def __init__(self, completion_id, created, model):
        self.completion_id = completion_id
        self.created = created
        self.model = model
        head = _dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": model, "system_fingerprint": None})
        self._head = b"data: " + head[:-1].encode() + b',"choices":[{"index":0,"delta":'

    def _chunk(self, delta_json, finish_reason=None):
        tail = b',"logprobs":null,"finish_reason":%s}]}\n\n' % (
            b"null" if finish_reason is None else _dumps(finish_reason).encode())
        return self._head + delta_json + tail

    def role(self):
        return self._chunk(b'{"role":"assistant","content":""}')

    def content(self, text):
        return self._chunk(b'{"content":' + _dumps(text).encode() + b"}")

    def finish(self, reason):
        return self._chunk(b"{}", reason)

    def usage(self, usage):
        return b"data: " + _dumps({"id": self.completion_id, "object": "chat.completion.chunk",
                                   "created": self.created, "model": self.model,
                                   "system_fingerprint": None, "choices": [],
                                   "usage": usage}).encode() + b"\n\n"


def error_event(error):
    """An ``ApiError`` as an SSE event; the openai SDK raises ``APIError`` when it reads one."""
    return b"data: " + _dumps(error.body()).encode() + b"\n\n"


def completion(completion_id, created, model, text, finish_reason, usage):
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def dumps(obj):
    return _dumps(obj)
