"""A client for OpenAI-compatible chat-completions servers: DeepSeek's API (the paper's VQA answerer,
DeepSeek-V3, is served only that way), vLLM, SGLang, and any server speaking `POST <base>/chat/completions`.

Standard library only (urllib): one prompt is one user message, temperature 0, `max_tokens` from the config.
A request that fails in a way that may pass (HTTP 429 and 5xx, a timeout, a refused or dropped connection, a
body cut short) is retried with exponential backoff and full jitter; a `Retry-After` header is honoured and pauses
every thread of the client, since a rate limit applies to the whole account. Other HTTP errors (400, 401, 404,
...) stop at once with an `EndpointError` naming the URL and the fix. Redirects are not followed: urllib would
resend the Authorization header to wherever the redirect points.

The API key is read from the environment variable the config names, at the moment the client is built, and
goes nowhere but the Authorization header: every message this module writes is redacted against it, and the
variable's name must look like a credential's (KEY, TOKEN, SECRET, ...), so `vlv.secrets` also masks its value
in every log line, MLflow param and command-line error of the pipeline.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from vlv.secrets import MIN_SECRET_CHARS, SECRET_NAME, redact

log = logging.getLogger("vlv.eval.chat_endpoint")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_RETRY_AFTER_S = 600.0  # a server asking for longer is treated as asking for this
_BODY_SNIPPET = 300


class EndpointError(ValueError):
    """The endpoint cannot be used (down, refusing the key, unknown model, ...); the message names the fix."""


@dataclass(frozen=True)
class ChatEndpoint:
    """Where and how to ask. `base_url` as OpenAI clients take it (e.g. https://api.deepseek.com/v1 or
    http://127.0.0.1:8000/v1 for vLLM / SGLang); requests go to `<base_url>/chat/completions`."""

    base_url: str
    model: str
    api_key_env: str = ""  # the NAME of the variable holding the key; "" = send no Authorization header
    max_tokens: int = 10
    timeout_s: float = 120.0  # per attempt: connecting, and each wait for bytes from the server
    max_retries: int = 8
    backoff_s: float = 1.0  # first retry waits up to this; doubles each retry (full jitter)
    max_backoff_s: float = 60.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def check_api_key_env_name(name: str, setting: str) -> None:
    """The variable must be named like a credential, so the pipeline's redaction masks its value everywhere.

    The message never repeats the value: someone may have pasted the key itself into the setting.
    """
    if not name:
        return
    if not _ENV_NAME.match(name) or not SECRET_NAME.search(name):
        raise ValueError(f"{setting} must be the NAME of an environment variable holding the API key, and the name "
                         "must contain KEY, TOKEN, SECRET, PASSWORD or CREDENTIAL (e.g. DEEPSEEK_API_KEY) so that "
                         f"logs and MLflow mask its value; the value given ({len(name)} characters) is not such a "
                         "name. Never put the key itself in the config")


def read_api_key(endpoint: ChatEndpoint, setting: str) -> str | None:
    """The key from the environment (None when no variable is named); a clear error when it is unusable."""
    if not endpoint.api_key_env:
        return None
    value = os.environ.get(endpoint.api_key_env)
    host = socket.gethostname()
    if not value:
        raise EndpointError(f"{setting}={endpoint.api_key_env}, but that environment variable is not set on host "
                            f"{host}: export {endpoint.api_key_env}=<your key> where the pipeline runs (on a cluster, "
                            "in every node's environment), or set the setting to '' for a server without a key")
    if len(value) < MIN_SECRET_CHARS:
        raise EndpointError(f"the value of {endpoint.api_key_env} is shorter than {MIN_SECRET_CHARS} characters, too "
                            "short for the log redaction to recognise it; use a longer key")
    return value


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    served_model: str


@dataclass
class EndpointUsage:
    """What the endpoint has cost so far; updated from many threads."""

    calls: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    answered: int = 0  # prompts answered by the server
    cache_hits: int = 0  # prompts answered from the cache
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{name}": float(getattr(self, name)) for name in
                ("calls", "retries", "answered", "cache_hits", "prompt_tokens", "completion_tokens")}

    def describe(self) -> str:
        return (f"{self.answered:,} answered + {self.cache_hits:,} from the cache; {self.calls:,} calls, "
                f"{self.retries:,} retries; {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                "tokens")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None  # urllib then raises HTTPError with the 3xx status, handled as a fatal error


_RETRYABLE_ERRORS = (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, urllib.error.URLError,
                     OSError)


class ChatClient:
    """Sends prompts to one endpoint; `complete` is safe to call from many threads at once."""

    def __init__(self, endpoint: ChatEndpoint, *, api_key: str | None, usage: EndpointUsage, setting: str = "",
                 rng: random.Random | None = None):
        self.endpoint = endpoint
        self.usage = usage
        self._setting = setting or "the endpoint setting"
        self._secrets = [api_key] if api_key else []
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pause_until = 0.0  # monotonic time before which no request is sent (Retry-After)
        self._stop = threading.Event()
        self._warned = False

    def stop(self) -> None:
        """Make every waiting or retrying call give up soon (another prompt failed for good)."""
        self._stop.set()

    def complete(self, prompt: str) -> Completion:
        endpoint = self.endpoint
        body = json.dumps({"model": endpoint.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": endpoint.max_tokens, "stream": False}).encode("utf-8")
        problem = ""
        for attempt in range(endpoint.max_retries + 1):
            self._wait_for_pause()
            if self._stop.is_set():
                raise EndpointError(f"stopped asking {endpoint.url}: another request failed for good")
            self.usage.add(calls=1)
            retry_after = None
            try:
                status, headers, payload = self._post(body)
            except _RETRYABLE_ERRORS as err:
                problem = _describe_network_error(err)
            else:
                if status == 200:
                    try:
                        return _parse_completion(payload)
                    except ValueError as err:  # a body cut short, or a proxy's error page
                        problem = f"unreadable response ({err})"
                elif status == 429 or status >= 500:
                    problem = f"HTTP {status} {self._snippet(payload)}".rstrip()
                    retry_after = _retry_after_seconds(headers.get("Retry-After"))
                else:
                    raise EndpointError(self._fatal_message(status, payload, headers))
            if attempt == endpoint.max_retries:
                break
            delay = self._delay(attempt, retry_after)
            self.usage.add(retries=1)
            self._note_retry(problem, delay, attempt)
            if self._stop.wait(delay):
                raise EndpointError(f"stopped asking {endpoint.url}: another request failed for good")
        raise EndpointError(self._redact(
            f"{endpoint.url} did not answer after {endpoint.max_retries + 1} attempts (last: {problem}): check that "
            f"the server is up and reachable from host {socket.gethostname()} and that {self._setting} is right. "
            "Answers received so far are cached: rerun the same command to continue"))

    # -- one attempt ---------------------------------------------------------------------------------------------

    def _post(self, body: bytes) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(self.endpoint.url, data=body, method="POST", headers=self._headers)
        try:
            with self._opener.open(request, timeout=self.endpoint.timeout_s) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers, err.read()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            delay = retry_after + self._rng.uniform(0, 0.1 * max(retry_after, 0.1))
            with self._lock:  # the limit is per account: every thread waits
                self._pause_until = max(self._pause_until, time.monotonic() + delay)
            return delay
        ceiling = min(self.endpoint.max_backoff_s, self.endpoint.backoff_s * 2 ** attempt)
        return self._rng.uniform(0.5 * ceiling, ceiling)

    def _wait_for_pause(self) -> None:
        while True:
            with self._lock:
                remaining = self._pause_until - time.monotonic()
            if remaining <= 0 or self._stop.wait(remaining):
                return

    def _note_retry(self, problem: str, delay: float, attempt: int) -> None:
        message = self._redact(f"{self.endpoint.url}: {problem}; retry {attempt + 1}/{self.endpoint.max_retries} in "
                               f"{delay:.1f}s")
        if not self._warned:  # the first one loudly; the rest show in the periodic cost line
            self._warned = True
            log.warning("%s (later retries are counted in the progress lines)", message)
        else:
            log.debug("%s", message)

    # -- messages ------------------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _snippet(self, payload: bytes) -> str:
        text = " ".join(payload[:4 * _BODY_SNIPPET].decode("utf-8", "replace").split())
        text = self._redact(text)
        return text if len(text) <= _BODY_SNIPPET else text[:_BODY_SNIPPET] + "..."

    def _fatal_message(self, status: int, payload: bytes, headers: Any) -> str:
        endpoint, setting = self.endpoint, self._setting
        if status in (401, 403):
            fix = (f"the server refused the API key: check the key in {endpoint.api_key_env}" if endpoint.api_key_env
                   else "the server wants an API key: name the variable holding it in the api_key_env setting")
        elif status == 404:
            fix = (f"check {setting} (the base URL, usually ending in /v1: requests go to <base>/chat/completions) "
                   f"and that the server serves the model {endpoint.model!r}")
        elif 300 <= status < 400:
            fix = f"the server redirects to {headers.get('Location', '?')}: put the final URL in {setting}"
        else:
            fix = f"check the model name {endpoint.model!r} and max_tokens={endpoint.max_tokens} for this server"
        return self._redact(f"{endpoint.url} answered HTTP {status} {self._snippet(payload)}".rstrip() + f": {fix}")


def _parse_completion(payload: bytes) -> Completion:
    try:
        data = json.loads(payload)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise ValueError("no choices in the response")
    choice = data["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise ValueError("choices[0] has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("choices[0].message.content is not text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return Completion(text=content or "", finish_reason=choice.get("finish_reason"),
                      prompt_tokens=_count(usage.get("prompt_tokens")),
                      completion_tokens=_count(usage.get("completion_tokens")),
                      served_model=str(data.get("model") or ""))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def _describe_network_error(err: BaseException) -> str:
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return "connection dropped by the server"
    if isinstance(reason, http.client.IncompleteRead):
        return "response cut short (connection dropped mid-response)"
    return f"{type(reason).__name__}: {reason}"
