"""Review of issue 11: 2025-2026 citation markers (docs/upstream-protocol.md 5.4) that never close.

"An unresolved marker vanishes when the message ends. Nothing around it is lost, under any
chunking." A marker whose U+E201 never comes (a stream cut inside it, an upstream slip) must not
take the prose after it along, and must not leave its fields behind as words.
"""

import pytest

from pgw.converters.render import BotRenderer, MarkdownRenderer
from tests.unit.test_review11_v1 import DONE, HEAD, TEXT, assert_seen, delta, end, message, root


def answer(*appends):
    body = HEAD + delta(root(message("ans", metadata={"content_references": []}), 0, bare=False))
    for text in appends:
        body += delta({"p": TEXT, "o": "append", "v": text})
    return body + delta(end()) + DONE


@pytest.mark.parametrize("make", [MarkdownRenderer, BotRenderer, lambda: BotRenderer(reference_output=True)])
def test_the_prose_after_a_marker_that_never_closes_is_kept(make):
    body = answer("Tornado is fast \ue200cite\ue202turn0", "search3 and async.")
    assert_seen(body, make, "Tornado is fast and async.")


def test_a_marker_opened_again_before_it_closed_leaves_no_fields_behind():
    body = answer("One \ue200cite\ue202turn0search1 two ", "\ue200cite\ue202turn0search2\ue201three.")
    assert_seen(body, MarkdownRenderer, "One two three.")


def test_a_marker_still_open_when_the_message_ends_vanishes():
    body = answer("Done. \ue200cite\ue202turn0sea")
    assert_seen(body, MarkdownRenderer, "Done. ")
