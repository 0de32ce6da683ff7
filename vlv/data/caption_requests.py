"""Gemini Batch API request JSONL for the kept images of a run (`vlv captions request`, through
`vlv.batch_requests`). No network call.

One line per kept image: `{"key": <image key>, "request": GenerateContentRequest}` with the captioning prompt
(ours by default, or any text via `vlv captions request --prompt-file`) and the image bytes inline (base64),
read from the download step's webdataset shards. Upload the file and create the batch with the model of your
choice (e.g. `client.batches.create(model="gemini-2.0-flash", src=uploaded_file.name)` in google-genai); the Batch
API writes a responses file keyed the same way, which `ingest_captions` reads
(`--set ingest_captions.source=<responses.jsonl>`).
"""

from __future__ import annotations

import base64
import json
import os
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow.parquet as pq

from vlv.paths import child_uri

# The project's own prompt, NOT the paper's: the VLV paper (arXiv 2507.07104) gives the prompt its ~6M Gemini 2.0
# Flash captions were written with in an appendix of its arXiv HTML version, and the official code release does
# not contain it; until that text is copied here, pass it with `vlv captions request --prompt-file`. This one asks
# for what stage 2 learns to reproduce: one dense paragraph of visible content, layout, style and legible text,
# without speculation or formatting.
CAPTION_PROMPT = (
    "Describe this image in detail in one paragraph of plain English prose. Cover the main subjects and their "
    "attributes (colours, materials, textures, sizes, counts), where things are and how they relate spatially, "
    "any actions, the background and setting, the lighting, the medium or style (photograph, painting, "
    "illustration, render) and the overall mood. Transcribe any clearly legible text. Describe only what is "
    "visible; do not guess identities, brands or places that cannot be seen. No lists, headings or markdown."
)
MIME_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
DEFAULT_GENERATION_CONFIG = {"temperature": 0.2, "maxOutputTokens": 1024}


def caption_request(key: str, image: bytes, mime_type: str = "image/jpeg", *, prompt: str = CAPTION_PROMPT,
                    generation_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One Batch API input line (as a dict)."""
    return {"key": key, "request": {
        "contents": [{"role": "user", "parts": [
            {"text": prompt},
            {"inline_data": {"mime_type": mime_type, "data": base64.b64encode(image).decode("ascii")}},
        ]}],
        "generationConfig": dict(generation_config or DEFAULT_GENERATION_CONFIG),
    }}


def iter_shard_images(tar_uri: str, keys: set[str]) -> Iterator[tuple[str, bytes, str]]:
    """(key, image bytes, mime type) for the wanted keys of one webdataset tar, streamed member by member."""
    with fsspec.open(tar_uri, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            stem, ext = os.path.splitext(member.name.rsplit("/", 1)[-1])
            if stem in keys and ext.lower() in MIME_TYPES:
                handle = tar.extractfile(member)
                if handle is not None:
                    yield stem, handle.read(), MIME_TYPES[ext.lower()]


def write_caption_requests(kept_uri: str, shards_uri: str, output_path: str, *, prompt: str = CAPTION_PROMPT,
                           generation_config: dict[str, Any] | None = None) -> int:
    """Requests for every row of kept.parquet, images from `shards_uri/<shard>`; returns the number written.

    Written to a temporary file and renamed at the end, so a failure leaves no half file behind.
    """
    with fsspec.open(kept_uri, "rb") as handle:
        kept = pq.read_table(handle, columns=["key", "shard"])
    by_shard: dict[str, set[str]] = defaultdict(set)
    for key, shard in zip(kept.column("key").to_pylist(), kept.column("shard").to_pylist()):
        by_shard[shard].add(key)
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    written = 0
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for shard in sorted(by_shard):
                wanted = by_shard[shard]
                found = set()
                tar_uri = child_uri(shards_uri, shard, f"shard name in {kept_uri}", single=True)
                for key, image, mime in iter_shard_images(tar_uri, wanted):
                    if key in found:
                        continue
                    found.add(key)
                    out.write(json.dumps(caption_request(key, image, mime, prompt=prompt,
                                                         generation_config=generation_config)) + "\n")
                    written += 1
                missing = sorted(wanted - found)
                if missing:
                    raise ValueError(f"{len(missing)} kept image(s) not found in shard {shard} (e.g. {missing[0]}): "
                                     "the download output does not match aesthetic_filter's; rerun both")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return written
