"""N realistic Gemini Batch API output lines: the ingestion benchmark's input (`benchmarks/bench_ingest.py`,
`benchmarks/make_gemini_rows.py` writes a file of them from the command line).

Line i answers image key f"{i:09d}" (img2dataset's key format), so the benchmark's kept-key set is simply
range(N). Captions are multi-sentence English in Gemini's style, mean about 1,200 characters (about 227
tokens, the paper's mean), some with non-ASCII characters, quotes and paragraph breaks that JSON escapes.
A fraction `--faulty` of lines (default 0.2%) is faulty, spread over every kind the validator quarantines:
malformed JSON, error rows, blocked prompts, empty text, MAX_TOKENS, duplicate keys, unknown keys, bad keys.

Fast by construction (about 6M lines a minute on one core): sentences are JSON-escaped once into a pool and
lines are assembled from pre-escaped pieces.
"""

from __future__ import annotations

import json
import random
import sys
import time

_NOUNS = ["woman", "man", "dog", "cat", "house", "mountain", "lake", "car", "bicycle", "table", "vase",
          "bouquet", "bridge", "street", "forest", "beach", "window", "chair", "painting", "teapot", "boat",
          "garden", "lamp", "book", "horse", "cake", "cliff", "tower", "market stall", "staircase"]
_ADJS = ["weathered", "glossy", "bright", "rustic", "elegant", "small", "large", "vintage", "modern", "wooden",
         "ornate", "minimalist", "sunlit", "shadowy", "colourful", "pale", "rough", "delicate", "misty", "café-style"]
_COLOURS = ["red", "deep blue", "olive green", "ochre", "charcoal grey", "ivory", "teal", "burnt orange",
            "lavender", "golden"]
_PLACES = ["in the foreground", "in the background", "on the left side of the frame", "near the centre",
           "along the bottom edge", "in the upper right corner", "partly out of focus", "behind the subject"]
_TEMPLATES = [
    "A {adj} {noun} in {colour} tones stands {place}.",
    "The {noun} {place} has a {adj} texture and a subtle {colour} tint.",
    "Light falls across the {adj} {noun}, casting soft shadows {place}.",
    "There is a {adj} {noun} {place}, its surface painted {colour}.",
    "The photograph captures a {adj} {noun} {place}, with hints of {colour} around it.",
    "Behind it, a {colour} {noun} adds depth to the composition.",
    "The text \"{noun}\" is faintly visible on a {adj} sign {place}.",
    "The overall atmosphere is {adj} and calm — almost nostalgic.",
    "Overall, the image feels {adj}, balanced and carefully composed, with the {noun} as the focal point.",
]


def sentence_pool(rng: random.Random, size: int = 4000) -> list[str]:
    """JSON-escaped sentences (without the surrounding quotes), escaped once."""
    pool = []
    for _ in range(size):
        text = rng.choice(_TEMPLATES).format(adj=rng.choice(_ADJS), noun=rng.choice(_NOUNS),
                                             colour=rng.choice(_COLOURS), place=rng.choice(_PLACES))
        pool.append(json.dumps(text, ensure_ascii=False)[1:-1])
    return pool


def good_line(key: str, caption_escaped: str, out_tokens: int, finish: str = "STOP") -> str:
    return ('{"key":"' + key + '","response":{"candidates":[{"content":{"parts":[{"text":"' + caption_escaped
            + '"}],"role":"model"},"finishReason":"' + finish + '","avgLogprobs":-0.2431}],'
            '"usageMetadata":{"promptTokenCount":262,"candidatesTokenCount":' + str(out_tokens)
            + ',"totalTokenCount":' + str(262 + out_tokens) + ',"promptTokensDetails":[{"modality":"TEXT",'
            '"tokenCount":4},{"modality":"IMAGE","tokenCount":258}]},"modelVersion":"gemini-2.0-flash",'
            '"responseId":"r' + key + '"}}')


FAULTY_KINDS = ("malformed_json", "error_row", "blocked", "empty", "max_tokens", "duplicate_key", "unknown_key",
                "bad_key")


def make_line(i: int, rng: random.Random, pool: list[str], faulty: float) -> str:
    key = f"{i:09d}"
    target = min(4000, max(150, int(rng.gauss(1200, 350))))
    pieces: list[str] = []
    length = 0
    while length < target:
        piece = rng.choice(pool)
        pieces.append(piece)
        length += len(piece) + 1
        if rng.random() < 0.04:
            pieces.append("\\n\\n")
    caption = " ".join(pieces)
    tokens = max(1, length * 227 // 1200)
    if i == 0 or rng.random() >= faulty:
        return good_line(key, caption, tokens)
    kind = FAULTY_KINDS[i % len(FAULTY_KINDS)]
    if kind == "malformed_json":
        return good_line(key, caption, tokens)[: rng.randint(10, 200)]
    if kind == "error_row":
        return '{"key":"' + key + '","error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}'
    if kind == "blocked":
        return ('{"key":"' + key + '","response":{"promptFeedback":{"blockReason":"SAFETY"},'
                '"usageMetadata":{"promptTokenCount":262,"totalTokenCount":262}}}')
    if kind == "empty":
        return good_line(key, "", 0)
    if kind == "max_tokens":
        return good_line(key, caption, 8192, finish="MAX_TOKENS")
    if kind == "duplicate_key":
        return good_line(f"{i - 1:09d}", caption, tokens)
    if kind == "unknown_key":
        return good_line(f"u{i:09d}", caption, tokens)
    return good_line(f"../{key}", caption, tokens)


def write_rows(n: int, path: str, *, seed: int = 0, faulty: float = 0.002) -> None:
    rng = random.Random(seed)
    pool = sentence_pool(rng)
    started = time.time()
    with open(path, "w", encoding="utf-8", buffering=8 << 20) as out:
        batch: list[str] = []
        for i in range(n):
            batch.append(make_line(i, rng, pool, faulty))
            if len(batch) == 10000:
                out.write("\n".join(batch) + "\n")
                batch.clear()
            if i and i % 1_000_000 == 0:
                print(f"  {i:,} lines written ({i / (time.time() - started):,.0f}/s)", file=sys.stderr)
        if batch:
            out.write("\n".join(batch) + "\n")
