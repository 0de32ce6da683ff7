"""Caption post-processing: trim to the last full sentence, drop repeated sentences."""

from __future__ import annotations

import pytest

from vlv.models.caption_postprocess import clean_caption, split_sentences


@pytest.mark.parametrize("raw, cleaned", [
    ("A dog runs on the beach. The sky is", "A dog runs on the beach."),
    ("A dog runs. A dog runs. The sun sets.", "A dog runs. The sun sets."),
    ("A dog runs.  a DOG  runs. It is happy! Is it? Is it? And then", "A dog runs. It is happy! Is it?"),
    ("It costs 3.5 dollars. Nice.", "It costs 3.5 dollars. Nice."),
    ('He said "hello." Then he left. Then he left', 'He said "hello." Then he left.'),
    ("Wait... What is this?! Really", "Wait... What is this?!"),
    ("   a caption without punctuation  ", "a caption without punctuation"),
    ("", ""),
    ("One.\nTwo.\n\nOne.", "One. Two."),
    ("A (small) cat sits (on a mat.) Later", "A (small) cat sits (on a mat.)"),
])
def test_clean_caption(raw, cleaned):
    assert clean_caption(raw) == cleaned


def test_split_sentences_returns_the_unfinished_tail():
    assert split_sentences("First one. Second one! third") == (["First one.", "Second one!"], "third")


def test_clean_caption_is_idempotent():
    raw = "A cat. A cat. A dog sits. A dog"
    assert clean_caption(clean_caption(raw)) == clean_caption(raw) == "A cat. A dog sits."
