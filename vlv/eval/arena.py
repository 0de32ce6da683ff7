"""The caption arena (paper Table 2): a vision-language judge scores each (image, caption) pair from 0 to 6.

The paper has Gemini 2.0 Flash score the captions of VLV, GPT-4o and Qwen2.5-VL-7B for 200 COCO images against
the image, with a rubric printed in its appendix. Here:
- `arena_images` picks the images: a seeded sample (ranked as caption_eval ranks its subset) of the caption-set
  images that every other captioner has a caption for, so files captioned for a fixed image list just work;
- `ArenaPair` is one (captioner, image, caption) to judge, keyed `<captioner>-<image_id>`;
- `judge_request` is one Gemini Batch API request line, in the format `vlv captions request` writes (the image
  inline, base64), asking for the score as JSON (`{"justification": ..., "score": <0-6>}`);
- `judge_score` reads the score back from the judge's reply; `score_rejects` turns the replies that hold no
  integer 0-6 into quarantine rows for the caption-ingestion machinery (reason `bad_score`);
- `bootstrap_interval` is the mean's seeded percentile bootstrap interval.

The rubric comes from a file (`eval_arena.rubric_file`) or is `DEFAULT_RUBRIC`, which is this project's own
(the paper's exact wording is not reproduced here). `{caption}` in a rubric marks where the caption goes;
without it the caption follows the rubric.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa

from vlv.data.caption_formats import Reject
from vlv.data.caption_requests import MIME_TYPES, caption_request
from vlv.engine.storage import read_bytes
from vlv.eval.coco_captions import subset_priority
from vlv.paths import child_uri

VLV = "vlv"  # the captioner under evaluation: caption_eval's captions
MIN_SCORE, MAX_SCORE = 0, 6
BAD_SCORE = "bad_score"  # the quarantine reason of a reply without an integer score 0-6
CAPTION_SLOT = "{caption}"
CAPTIONER_NAME = re.compile(r"^[a-z0-9_]+$")

DEFAULT_RUBRIC = """\
You are judging how well a caption describes an image. (This rubric is the VLV pipeline project's own, written \
for a 0-6 scale; it is not the wording used in the VLV paper.)

Look at the image carefully, then read the caption below. Judge the caption only against what is visible in \
the image.

Give the caption one integer score from 0 to 6:
6 - Excellent: accurate and thorough. It covers the main subjects and their attributes, what they are doing, \
how they are arranged, the setting and any legible text, with no errors and nothing invented.
5 - Very good: accurate and detailed; only minor details are missing, and there are no errors.
4 - Good: mostly accurate and covers the main content; a few omissions or one small error.
3 - Fair: the main subject is right, but important content is missing or there are several noticeable errors.
2 - Poor: only partly relevant; significant errors or omissions, or vague throughout.
1 - Very poor: barely related to the image; mostly wrong or invented content.
0 - Unusable: describes a different image, is empty, or is not a description at all.

Accuracy comes before detail: a long caption with invented objects scores lower than a shorter accurate one. \
Do not reward length, style or fluency by themselves.

Caption:
{caption}

Reply with a JSON object: {"justification": "<one or two sentences>", "score": <integer from 0 to 6>}"""

JUDGE_GENERATION_CONFIG: dict[str, Any] = {
    "temperature": 0.0, "maxOutputTokens": 512, "responseMimeType": "application/json",
    "responseSchema": {"type": "OBJECT", "properties": {"justification": {"type": "STRING"},
                                                        "score": {"type": "INTEGER"}},
                       "required": ["justification", "score"], "propertyOrdering": ["justification", "score"]},
}
_PLAIN_SCORE = re.compile(r"^\s*(?:score\s*[:=]\s*)?(-?\d+(?:\.\d+)?)\s*(?:/\s*6)?\s*\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ArenaPair:
    captioner: str
    image_id: int
    file_name: str
    caption: str

    @property
    def key(self) -> str:
        return pair_key(self.captioner, self.image_id)


def pair_key(captioner: str, image_id: int) -> str:
    return f"{captioner}-{image_id}"


# -- the rubric and the requests ----------------------------------------------------------------------------

def load_rubric(path: str) -> str:
    """The rubric text of `eval_arena.rubric_file` (a local path or URI), or DEFAULT_RUBRIC for ""."""
    if not path:
        return DEFAULT_RUBRIC
    try:
        text = read_bytes(path).decode("utf-8").strip()
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"eval_arena.rubric_file={path!r} cannot be read as UTF-8 text ({err})") from None
    if not text:
        raise ValueError(f"eval_arena.rubric_file={path!r} is empty: put the judge's rubric text in it")
    if text.count(CAPTION_SLOT) > 1:
        raise ValueError(f"eval_arena.rubric_file={path!r} has {CAPTION_SLOT} {text.count(CAPTION_SLOT)} times: "
                         "mark the caption's place once (or not at all: then the caption follows the rubric)")
    return text


def judge_prompt(rubric: str, caption: str) -> str:
    if CAPTION_SLOT in rubric:
        return rubric.replace(CAPTION_SLOT, caption)
    return f"{rubric}\n\nCaption:\n{caption}"


def judge_request(pair: ArenaPair, image: bytes, mime_type: str, rubric: str, *, json_reply: bool) -> dict[str, Any]:
    """One Gemini Batch API request line (as a dict), keyed by the pair."""
    config = dict(JUDGE_GENERATION_CONFIG) if json_reply else {"temperature": 0.0, "maxOutputTokens": 512}
    return caption_request(pair.key, image, mime_type, prompt=judge_prompt(rubric, pair.caption),
                           generation_config=config)


def write_judge_requests(pairs: Sequence[ArenaPair], images_dir: str, output_path: str | Path, rubric: str, *,
                         json_reply: bool = True) -> int:
    """The request JSONL for every pair, images read from `images_dir` (local or URI); written whole or not at all."""
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    images: dict[str, tuple[bytes, str]] = {}
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for pair in pairs:
                if pair.file_name not in images:
                    mime = MIME_TYPES.get(os.path.splitext(pair.file_name)[1].lower())
                    if mime is None:
                        raise ValueError(f"{pair.file_name}: the judge takes {', '.join(sorted(MIME_TYPES))} images")
                    images = {pair.file_name: (read_bytes(child_uri(images_dir, pair.file_name, "COCO file_name")),
                                               mime)}  # pairs come grouped by image: keep one in memory
                image, mime = images[pair.file_name]
                out.write(json.dumps(judge_request(pair, image, mime, rubric, json_reply=json_reply)) + "\n")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return len(pairs)


# -- which pairs --------------------------------------------------------------------------------------------

def read_captioner_file(path: str, name: str, *, section: str = "eval_arena") -> tuple[dict[int, str], dict[str, str]]:
    """A captioner's captions file: plain JSONL or CSV rows with `caption` and `image_id` and/or `file_name`.

    Returns (captions by image_id, captions by file_name); the first caption of an image wins. A row that cannot
    be read is an error naming the file and line: these files are small and made by hand or by a script. The
    caption arena and caption FID (`section` eval_fid) read them alike; errors name `<section>.other_captioners`.
    """
    setting = f"{section}.other_captioners[{name}].path"
    try:
        with fsspec.open(path, "rb", compression="infer") as handle:
            text = handle.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{setting}={path!r} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"{setting}={path!r} is not UTF-8 text (convert it, e.g. with iconv)") from None
    if path.lower().rsplit(".", 1)[-1] in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.lower().endswith(".tsv") else ",")
        rows: Iterable[tuple[int, Any]] = ((i + 2, row) for i, row in enumerate(reader))
    else:
        rows = ((i + 1, _json_line(line, path, i + 1)) for i, line in enumerate(text.splitlines()) if line.strip())
    by_id: dict[int, str] = {}
    by_file: dict[str, str] = {}
    for line, row in rows:
        where = f"{path} line {line}"
        if not isinstance(row, dict) or not isinstance(row.get("caption"), str) or not row["caption"].strip():
            raise ValueError(f"{where}: each row needs a non-empty 'caption' ({setting})")
        caption = " ".join(row["caption"].split())
        image_id, file_name = row.get("image_id"), row.get("file_name")
        if image_id not in (None, ""):
            try:
                by_id.setdefault(int(image_id), caption)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: image_id {image_id!r} is not an integer") from None
        elif isinstance(file_name, str) and file_name:
            by_file.setdefault(file_name.rsplit("/", 1)[-1], caption)
        else:
            raise ValueError(f"{where}: each row needs an 'image_id' or a 'file_name' ({setting})")
    return by_id, by_file


def _json_line(line: str, path: str, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise ValueError(f"{path} line {number} is not JSON: write one object a line, e.g. "
                         '{"image_id": 139, "caption": "..."}') from None


def captions_for(caption_set: Sequence[Mapping[str, Any]], by_id: Mapping[int, str],
                 by_file: Mapping[str, str]) -> dict[int, str]:
    """A captioner's caption of each caption-set image it has one for (by image_id, else by file name)."""
    found = {}
    for row in caption_set:
        caption = by_id.get(int(row["image_id"])) or by_file.get(str(row["file_name"]).rsplit("/", 1)[-1])
        if caption:
            found[int(row["image_id"])] = caption
    return found


def arena_images(candidates: Iterable[int], num_images: int, seed: int) -> list[int]:
    """`num_images` of the candidate image ids, a seeded sample ranked like caption_eval's subset, in id order."""
    ranked = sorted(set(candidates), key=lambda image_id: subset_priority(seed, image_id))
    return sorted(ranked[:num_images])


def build_pairs(caption_set: Sequence[Mapping[str, Any]], others: Mapping[str, Mapping[int, str]], num_images: int,
                seed: int) -> list[ArenaPair]:
    """Every (captioner, image) to judge: VLV's caption_eval captions and each other captioner's, grouped by image."""
    rows = {int(row["image_id"]): row for row in caption_set}
    candidates = set(rows)
    for captions in others.values():
        candidates &= set(captions)
    if len(candidates) < num_images:
        covered = ", ".join(f"{name} {len(set(rows) & set(c))}" for name, c in others.items())
        raise ValueError(f"eval_arena.num_images={num_images}, but only {len(candidates)} of caption_eval's "
                         f"{len(rows)} caption-set images have a caption from every captioner ({covered or 'none'}): "
                         "caption more of them or lower eval_arena.num_images")
    pairs = []
    for image_id in arena_images(candidates, num_images, seed):
        row = rows[image_id]
        pairs.append(ArenaPair(VLV, image_id, str(row["file_name"]), " ".join(str(row["caption"]).split())))
        pairs += [ArenaPair(name, image_id, str(row["file_name"]), captions[image_id])
                  for name, captions in others.items()]
    return pairs


# -- the judge's replies ------------------------------------------------------------------------------------

def judge_score(text: str) -> tuple[int | None, str]:
    """(score, "") for a reply holding an integer 0-6; else (None, why). JSON `{"score": n}` or plain `n`/`Score: n`."""
    stripped = text.strip()
    if stripped.startswith("```"):  # a fenced JSON block
        stripped = stripped.strip("`").removeprefix("json").strip()
    value: Any
    try:
        data = json.loads(stripped)
    except ValueError:
        match = _PLAIN_SCORE.match(stripped)
        if not match:
            return None, f"no score in the reply: {stripped[:80]!r}"
        value = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    else:
        if isinstance(data, dict):
            if "score" not in data:
                return None, f"the reply's JSON has no 'score' (keys: {', '.join(sorted(data))[:80]})"
            value = data["score"]
        else:
            value = data
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"score {value!r} is not a number"
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None, f"score {value!r} is not an integer"
    if not MIN_SCORE <= value <= MAX_SCORE:
        return None, f"score {int(value)} is outside {MIN_SCORE}-{MAX_SCORE}"
    return int(value), ""


def score_rejects(candidates: pa.Table) -> list[tuple[int, Reject]]:
    """Rows of an ingestion block whose reply holds no integer 0-6 (a `content_check` for ingest_captions)."""
    rejects = []
    keys, texts = candidates.column("key").to_pylist(), candidates.column("caption").to_pylist()
    for i, (key, text) in enumerate(zip(keys, texts)):
        score, why = judge_score(text)
        if score is None:
            rejects.append((i, Reject(BAD_SCORE, why, key)))
    return rejects


# -- the statistics -----------------------------------------------------------------------------------------

def bootstrap_interval(scores: Sequence[float], *, resamples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean, seeded (same scores, same interval)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // values.size)  # bounded memory for large sets
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        means[start:start + count] = values[rng.integers(0, values.size, size=(count, values.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)
