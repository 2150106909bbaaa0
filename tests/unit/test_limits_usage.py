"""Token counting of long texts in bounded pieces: the same text, the same count for ordinary
text, and a count for text without spaces that tiktoken would take superlinear time over whole."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pgw.usage import PIECE, TokenCounter, pieces

COUNTER = TokenCounter()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab 你\n\t.,"), max_size=3000), st.integers(4, 64))
def test_pieces_cover_the_text_in_order_and_stay_small(text, size):
    parts = list(pieces(text, size))
    assert "".join(parts) == text
    assert all(len(p) <= size for p in parts)


def test_ordinary_long_text_counts_exactly_as_one_piece_would():
    text = "The gateway counts tokens of long prompts, 中文也一样。 " * 2000
    assert len(text) > 10 * PIECE
    exact = len(COUNTER._enc().encode(text, disallowed_special=()))
    assert COUNTER.count(text) == exact


def test_text_without_spaces_is_counted_piecewise():
    text = "你" * (PIECE * 50)
    assert COUNTER.count(text) == len(text)  # one token per 你 in cl100k, cuts included
