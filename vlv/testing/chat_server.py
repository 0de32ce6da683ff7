"""An OpenAI-compatible chat-completions server on 127.0.0.1 for tests: real HTTP, a real model, chosen faults.

`ChatServer(generate)` answers `POST /v1/chat/completions` with `generate(prompt, max_tokens)` (for tests:
`tiny_llm_generator()`, the tiny-random Qwen2 of `eval_vqa.llm=tiny-random`, so answers are real model outputs)
and records every request it receives (prompt, Authorization header, what it did). `Faults` makes it misbehave
the way real servers do: rate limits with `Retry-After`, 5xx errors, connections dropped mid-response, and a
fixed error status (e.g. 401 echoing the Authorization header back, as some proxies do).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from vlv.testing.object_store import free_port

Generate = Callable[[str, int], tuple[str, int, int]]  # (prompt, max_tokens) -> (text, prompt tokens, new tokens)


@dataclass
class Faults:
    rate_limit_first: int = 0  # the first N requests get 429 with Retry-After: retry_after_s
    retry_after_s: float = 1.0
    server_error_first: int = 0  # then the next N get 503 (no Retry-After)
    drop_first: int = 0  # then the next N get half a body and a closed connection
    stall_first: int = 0  # then the next N wait stall_s before answering (longer than a client's timeout)
    stall_s: float = 2.0
    fail_from: int = 0  # from request N on (N > 0), every request gets 500: a server that went down for good
    status_always: int = 0  # every request gets this status, the body echoing the Authorization header


@dataclass(frozen=True)
class ServedRequest:
    prompt_sha256: str
    authorization: str
    outcome: str  # "answered", "429", "503", "dropped", "stalled", "500", or the fixed status
    at: float  # time.monotonic()
    max_tokens: int
    temperature: float


class ChatServer:
    """`with ChatServer(generate) as server:` ... `server.base_url` is http://127.0.0.1:<port>/v1."""

    def __init__(self, generate: Generate, *, faults: Faults | None = None, model: str = "tiny-random",
                 port: int | None = None):
        self.generate, self.faults, self.model = generate, faults or Faults(), model
        self.port = port or free_port()
        self.requests: list[ServedRequest] = []
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def outcomes(self) -> list[str]:
        with self._lock:
            return [r.outcome for r in self.requests]

    def answered(self) -> int:
        return self.outcomes().count("answered")

    def __enter__(self) -> ChatServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: tests read `requests`
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                try:
                    server._handle(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): expected
                    self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="chat-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.rstrip("/") != "/v1/chat/completions":
            self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        request = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", "0"))))
        prompt = request["messages"][-1]["content"]
        authorization = handler.headers.get("Authorization", "")
        with self._lock:
            number = len(self.requests)
            outcome = self._outcome(number)
            self.requests.append(ServedRequest(hashlib.sha256(prompt.encode()).hexdigest(), authorization, outcome,
                                               time.monotonic(), int(request.get("max_tokens", 16)),
                                               float(request.get("temperature", 1.0))))
        if outcome == "429":
            self._send(handler, 429, {"error": {"message": "rate limit reached", "type": "rate_limit"}},
                       {"Retry-After": f"{self.faults.retry_after_s:g}"})
            return
        if outcome in ("503", "500"):
            self._send(handler, int(outcome), {"error": {"message": "overloaded"}})
            return
        if outcome == "stalled":
            time.sleep(self.faults.stall_s)
        if outcome not in ("answered", "dropped", "stalled"):
            self._send(handler, int(outcome), {"error": {"message": f"invalid credentials: {authorization}"}})
            return
        with self._model_lock:
            text, prompt_tokens, completion_tokens = self.generate(prompt, int(request.get("max_tokens", 16)))
        body = {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if completion_tokens >= request.get("max_tokens", 16)
                             else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
        if outcome == "dropped":
            data = json.dumps(body).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[:len(data) // 2])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        self._send(handler, 200, body)

    def _outcome(self, number: int) -> str:
        f = self.faults
        if f.status_always:
            return str(f.status_always)
        if f.fail_from and number >= f.fail_from:
            return "500"
        for outcome, count in (("429", f.rate_limit_first), ("503", f.server_error_first),
                               ("dropped", f.drop_first), ("stalled", f.stall_first)):
            if number < count:
                return outcome
            number -= count
        return "answered"

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, status: int, body: dict,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


def tiny_llm_generator(seed: int = 0) -> Generate:
    """Greedy continuations from the tiny-random LLM of `eval_vqa.llm=tiny-random` (one prompt at a time, so a
    prompt's continuation equals `generate_answers(..., batch_size=1)`'s before the short answer is cut)."""
    import torch

    from vlv.eval.vqa_llm import LlmSpec, build_llm

    model, tokenizer = build_llm(LlmSpec(kind="tiny-random", seed=seed))

    def generate(prompt: str, max_tokens: int) -> tuple[str, int, int]:
        encoded = tokenizer([prompt], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_tokens, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = output[0, encoded.input_ids.shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True), int(encoded.input_ids.shape[1]), int(new.shape[0])

    return generate
