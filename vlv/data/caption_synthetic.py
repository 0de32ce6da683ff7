"""Synthetic Gemini Batch API output lines: for the `tiny` preset and for the ingestion benchmark.

The lines have the shape the Gemini Batch API writes to its responses file (one JSON object a line: the
request `key` and a `GenerateContentResponse`, or an `error` status), so the tiny pipeline and the benchmark
exercise the same parser as real output. Every faulty kind the validator must catch has a builder here, so
the tiny file and the tests can include one of each.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Sequence

MODEL_VERSION = "gemini-2.0-flash"
# What Gemini 2.0 Flash bills for one image at the default media resolution, plus our prompt.
IMAGE_PROMPT_TOKENS = 258

_SUBJECTS = ("the main subject", "the central figure", "the foreground object", "the focal point")
_LIGHT = ("soft natural light", "warm late-afternoon light", "diffuse overcast light", "bright midday sun",
          "cool bluish light", "dramatic side lighting")
_PALETTE = ("muted earth tones", "saturated primary colours", "pastel shades", "deep greens and browns",
            "a monochrome palette", "contrasting warm and cool hues")
_LAYOUT = ("is placed slightly left of centre", "fills most of the frame", "sits in the lower third",
           "is framed by the edges of the scene", "is centred against the background")
_BACKGROUND = ("a softly blurred background", "a plain studio backdrop", "an outdoor scene with trees",
               "an interior with shelves and a window", "an open sky", "a textured wall")
_MOOD = ("calm and quiet", "lively and energetic", "nostalgic", "clean and modern", "cosy and intimate")
_DETAIL = ("Fine textures are visible on the surfaces.", "Small highlights catch the light along the edges.",
           "There is no visible text in the image.", "Shadows fall gently to the right.",
           "The depth of field is shallow, drawing attention to the subject.",
           "The composition feels balanced, with space around the subject.",
           "Reflections appear on the glossy parts of the scene.",
           "The photograph appears to be taken at eye level.")


def describe_image(laion_text: str, rng: random.Random) -> str:
    """A detailed multi-sentence caption in Gemini's style, seeded, built around the image's LAION TEXT."""
    topic = " ".join(laion_text.split())[:200] or "an everyday scene"
    sentences = [
        f"The image shows {topic.rstrip('.')}.",
        f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_LAYOUT)}, set against {rng.choice(_BACKGROUND)}.",
        f"The scene is lit by {rng.choice(_LIGHT)}, with {rng.choice(_PALETTE)} throughout.",
        f"The overall mood is {rng.choice(_MOOD)}.",
    ]
    sentences += rng.sample(_DETAIL, k=rng.randint(2, 4))
    return " ".join(sentences)


def response_line(key: str, text: str | Sequence[str], *, finish_reason: str = "STOP",
                  prompt_tokens: int = IMAGE_PROMPT_TOKENS, output_tokens: int | None = None) -> str:
    """One successful (or truncated, with finish_reason="MAX_TOKENS") response line; text may be split in parts."""
    parts = [text] if isinstance(text, str) else list(text)
    if output_tokens is None:
        output_tokens = max(1, sum(len(p) for p in parts) // 5)
    response = {
        "candidates": [{"content": {"parts": [{"text": p} for p in parts], "role": "model"},
                        "finishReason": finish_reason, "avgLogprobs": -0.21}],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
                          "totalTokenCount": prompt_tokens + output_tokens},
        "modelVersion": MODEL_VERSION,
    }
    return json.dumps({"key": key, "response": response}, ensure_ascii=False)


def error_line(key: str, code: int = 500, message: str = "Internal error encountered.") -> str:
    status = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED"}.get(code, "INTERNAL")
    return json.dumps({"key": key, "error": {"code": code, "message": message, "status": status}})


def blocked_line(key: str, reason: str = "SAFETY") -> str:
    """A prompt the model refused: no candidates, `promptFeedback.blockReason` set."""
    response = {"promptFeedback": {"blockReason": reason},
                "usageMetadata": {"promptTokenCount": IMAGE_PROMPT_TOKENS, "totalTokenCount": IMAGE_PROMPT_TOKENS},
                "modelVersion": MODEL_VERSION}
    return json.dumps({"key": key, "response": response})


def vertex_line(key: str | None, text: str, *, status: str = "", key_in: str = "labels",
                finish_reason: str = "STOP") -> str:
    """A Vertex AI batch prediction output line: the original request, a status string and the response.

    Vertex echoes the request; the image key travels in `request.labels` (key_in="labels") or in a top-level
    field kept by `instanceConfig` (key_in="key" / "custom_id" / "id").
    """
    request: dict = {"contents": [{"role": "user", "parts": [{"text": "Describe this image."}]}]}
    record: dict = {"status": status, "processed_time": "2025-03-01T12:00:00.000+00:00"}
    if key is not None:
        if key_in == "labels":
            request["labels"] = {"key": key}
        else:
            record[key_in] = key
    record["request"] = request
    if not status:
        record["response"] = json.loads(response_line("x", text, finish_reason=finish_reason))["response"]
    return json.dumps(record, ensure_ascii=False)


@dataclass(frozen=True)
class TinyCaptionFile:
    """What `write_tiny_gemini_output` wrote, so callers and tests know the expected outcome per reason."""

    path: str
    good_lines: int
    faulty: dict[str, int]


def write_tiny_gemini_output(path: str, keys: Sequence[str], laion_texts: Sequence[str], seed: int) -> TinyCaptionFile:
    """A Gemini Batch API output file for `keys`, with one faulty line of each kind the validator catches.

    The first line starts with a UTF-8 BOM and every third line ends with CRLF: both are valid input and those
    rows must be kept. Faulty lines replace the captions of the last few keys (so those keys get no caption)
    or are extra lines (duplicate, unknown key, bad key, malformed JSON). The duplicate repeats the key of the
    first line, which is good, so the later occurrence is the one quarantined.
    """
    if not keys:
        raise ValueError("no kept images to write captions for: the aesthetic_filter output kept none")
    rng = random.Random(seed)
    keys = list(keys)
    texts = list(laion_texts)
    faulty_lines: list[tuple[str, str]] = []
    replaced = {"error_row": error_line, "blocked": blocked_line,
                "empty": lambda k: response_line(k, ""),
                "max_tokens": lambda k: response_line(k, describe_image("a truncated caption", rng)[:120],
                                                      finish_reason="MAX_TOKENS", output_tokens=1024)}
    for reason, build in list(replaced.items())[:max(0, len(keys) - 1)]:  # keep >= 1 good caption
        faulty_lines.append((reason, build(keys.pop())))
        texts.pop()
    lines: list[str] = []
    for key, text in zip(keys, texts):
        caption = describe_image(text, rng)
        split = rng.random() < 0.3  # Gemini sometimes returns the text in several parts: they are joined
        lines.append(response_line(key, [caption[:40], caption[40:]] if split else caption))
    good = len(lines)
    faulty_lines += [
        ("malformed_json", '{"key": "' + keys[0] + '", "response": {"candidates": [{'),
        ("unknown_key", response_line(f"unknown-{seed}", describe_image("an unknown image", rng))),
        ("bad_key", response_line("../../etc/passwd", describe_image("a path traversal attempt", rng))),
        ("duplicate_key", response_line(keys[0], describe_image("a second answer", rng))),
    ]
    faulty: dict[str, int] = {}
    for reason, line in faulty_lines:  # never before line 1: the BOM line stays a good one
        lines.insert(rng.randint(1, len(lines)), line)
        faulty[reason] = faulty.get(reason, 0) + 1
    with open(path, "wb") as handle:
        handle.write(b"\xef\xbb\xbf")
        for i, line in enumerate(lines):
            handle.write(line.encode("utf-8") + (b"\r\n" if i % 3 == 2 else b"\n"))
    return TinyCaptionFile(path=path, good_lines=good, faulty=faulty)
