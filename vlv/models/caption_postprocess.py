"""Post-processing of generated captions (docs/DESIGN.md section 2.2, inference): trim to the last full sentence, drop
repeated sentences. Beam search with a token budget often stops mid-sentence or loops on a sentence; both
hurt the downstream text-to-image and VQA evaluations, which read the caption as plain prose.
"""

from __future__ import annotations

import re

# A sentence ends at . ! or ? (possibly repeated, e.g. "?!" or "..."), optionally followed by closing quotes or
# brackets, then whitespace or the end of the text.
_SENTENCE = re.compile(r"[^.!?]*?[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)", re.DOTALL)


def split_sentences(text: str) -> tuple[list[str], str]:
    """(complete sentences, trailing unfinished text), whitespace-normalised."""
    text = " ".join(text.split())
    sentences: list[str] = []
    position = 0
    for match in _SENTENCE.finditer(text):
        if match.start() < position:
            continue
        sentence = text[position:match.end()].strip()
        if sentence:
            sentences.append(sentence)
        position = match.end()
    return sentences, text[position:].strip()


def clean_caption(text: str) -> str:
    """Keep complete sentences only, each the first time it appears (case- and space-insensitive).

    A text with no complete sentence at all is returned whitespace-normalised rather than emptied: a short
    unpunctuated caption is still a caption.
    """
    sentences, tail = split_sentences(text)
    if not sentences:
        return tail
    seen: set[str] = set()
    kept: list[str] = []
    for sentence in sentences:
        key = sentence.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)
