"""VQA answers from an OpenAI-compatible chat endpoint, with every answer cached in the run store.

The paper's answerer (DeepSeek-V3) is a paid API: a rerun after a crash, or with one more shot count, must pay
only for prompts never answered before. So each completion is stored under the store's shared cache folder,
keyed by (model, max_tokens, sha256 of the prompt), never by the base URL: the same model behind another URL
(a proxy, a second region) reuses the answers.

Layout: `<cache>/llm_answers/<model slug>-<hash>/max_tokens_<n>/<time>-<random>.jsonl`, one JSON object a line
(`prompt_sha256`, the raw completion `text`, `finish_reason`, token counts, `served_model`). Answers are
written as they arrive, a chunk file every `chunk_size` answers or every minute, whichever comes first, and at
the end or on failure; so a crash loses at most the chunk in progress. Chunk files are never rewritten, so
concurrent runs never collide; a chunk file cut short by a crash loses only its broken lines, which are skipped.
The short answer is extracted from the raw text when read (`extract_short_answer`), so the cache does not
depend on that rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from vlv.engine.storage import filesystem, is_remote, local_path_of
from vlv.eval.chat_endpoint import ChatClient, ChatEndpoint, Completion, EndpointUsage, read_api_key
from vlv.eval.vqa_prompts import extract_short_answer

log = logging.getLogger("vlv.eval.vqa_endpoint")

CACHE_FOLDER = "llm_answers"
_FLUSH_EVERY_S = 60.0
_PROGRESS_EVERY_S = 30.0


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedCompletion:
    prompt_sha256: str
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    served_model: str = ""

    @classmethod
    def of(cls, digest: str, completion: Completion) -> CachedCompletion:
        return cls(digest, completion.text, completion.finish_reason, completion.prompt_tokens,
                   completion.completion_tokens, completion.served_model)


class AnswerCache:
    """The completions of one (model, max_tokens) in the store's cache folder (local path or URI)."""

    def __init__(self, cache_uri: str, model: str, max_tokens: int):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._")[:60] or "model"
        folder = f"{slug}-{hashlib.sha256(model.encode('utf-8')).hexdigest()[:8]}"
        self.uri = f"{cache_uri.rstrip('/')}/{CACHE_FOLDER}/{folder}/max_tokens_{max_tokens}"
        self.fs, self.path = filesystem(self.uri)
        self.unreadable_lines = 0

    def load(self, wanted: set[str]) -> dict[str, CachedCompletion]:
        """The cached completions of the wanted prompt hashes (the first one stored wins)."""
        try:
            files = sorted(p for p in self.fs.find(self.path) if p.endswith(".jsonl"))
        except FileNotFoundError:
            return {}
        found: dict[str, CachedCompletion] = {}
        contents = self.fs.cat(files) if files else {}  # concurrent on object stores
        for name in files:
            for raw in contents[name].splitlines():
                try:
                    record = CachedCompletion(**json.loads(raw))
                except (ValueError, TypeError):  # a line cut short by a crash while it was written
                    self.unreadable_lines += 1
                    continue
                if record.prompt_sha256 in wanted and record.prompt_sha256 not in found:
                    found[record.prompt_sha256] = record
        return found

    def append(self, records: Sequence[CachedCompletion]) -> None:
        """One new chunk file with these records, written whole (rename locally, one PUT on object stores)."""
        if not records:
            return
        data = "".join(json.dumps(record.__dict__, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.jsonl"
        if is_remote(self.uri):
            self.fs.pipe_file(f"{self.path}/{name}", data)
            return
        folder = Path(local_path_of(self.uri))
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, folder / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


ProgressFn = Callable[[EndpointUsage, int], None]


def endpoint_answers(prompts: Sequence[str], endpoint: ChatEndpoint, *, concurrency: int, cache_uri: str,
                     chunk_size: int, setting: str = "eval_vqa.endpoint_url",
                     api_key_setting: str = "eval_vqa.endpoint_api_key_env",
                     progress: ProgressFn | None = None) -> tuple[list[str], EndpointUsage]:
    """Short answers to every prompt, in prompt order, and what they cost.

    Each distinct prompt is asked once: from the cache when it holds the prompt, else from the endpoint with up
    to `concurrency` requests in flight. `progress(usage, total)` is called every 30 s and at the end. The first
    prompt that fails for good stops the others and raises its `EndpointError` after what arrived is cached.
    """
    usage = EndpointUsage()
    api_key = read_api_key(endpoint, api_key_setting)
    digests = [prompt_hash(p) for p in prompts]
    distinct = dict(zip(digests, prompts))
    cache = AnswerCache(cache_uri, endpoint.model, endpoint.max_tokens) if cache_uri else None
    known = cache.load(set(distinct)) if cache else {}
    if cache and cache.unreadable_lines:
        log.warning("answer cache %s: skipped %d unreadable line(s) (cut short by a crash)", cache.uri,
                    cache.unreadable_lines)
    usage.add(cache_hits=len(known))
    todo = [d for d in distinct if d not in known]
    log.info("%d prompts (%d distinct): %d answers from the cache%s, %d to ask %s (model %s, max_tokens %d, %d "
             "requests at a time)", len(prompts), len(distinct), len(known), f" {cache.uri}" if cache else "",
             len(todo), endpoint.url, endpoint.model, endpoint.max_tokens, concurrency)
    if todo:
        client = ChatClient(endpoint, api_key=api_key, usage=usage, setting=setting)
        known.update(_ask(client, todo, distinct, cache, concurrency=concurrency, chunk_size=chunk_size, usage=usage,
                          progress=progress, total=len(distinct)))
    if progress is not None:
        progress(usage, len(distinct))
    return [extract_short_answer(known[d].text) for d in digests], usage


def _ask(client: ChatClient, todo: list[str], prompts: dict[str, str], cache: AnswerCache | None, *,
         concurrency: int, chunk_size: int, usage: EndpointUsage, progress: ProgressFn | None,
         total: int) -> dict[str, CachedCompletion]:
    answered: dict[str, CachedCompletion] = {}
    unsaved: list[CachedCompletion] = []

    def take(future: Future) -> None:
        completion = future.result()  # raises the EndpointError of a prompt that failed for good
        record = CachedCompletion.of(futures[future], completion)
        answered[record.prompt_sha256] = record
        unsaved.append(record)
        usage.add(answered=1, prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens)

    last_flush = last_progress = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(todo))), thread_name_prefix="vlv-endpoint")
    futures: dict[Future, str] = {pool.submit(client.complete, prompts[d]): d for d in todo}
    remaining = set(futures)
    try:
        while remaining:
            done, remaining = wait(remaining, timeout=5.0, return_when=FIRST_EXCEPTION)
            for future in done:
                take(future)
                now = time.monotonic()
                if cache and (len(unsaved) >= chunk_size or now - last_flush >= _FLUSH_EVERY_S):
                    cache.append(unsaved)
                    unsaved.clear()
                    last_flush = now
            now = time.monotonic()
            if progress is not None and now - last_progress >= _PROGRESS_EVERY_S:
                last_progress = now
                progress(usage, total)
    except BaseException:
        client.stop()  # requests in flight finish; waiting and retrying ones give up
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:  # answers that arrived meanwhile are paid for: keep them
            if future.done() and not future.cancelled() and future.exception() is None \
                    and futures[future] not in answered:
                take(future)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if cache:
            cache.append(unsaved)
    return answered
