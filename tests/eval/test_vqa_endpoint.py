"""VQA answers through an OpenAI-compatible endpoint: a real HTTP server on 127.0.0.1 answering with the tiny LLM.

Each test starts `ChatServer` (vlv.testing.chat_server) with the faults it needs and checks what the client did:
the answers (the model's own continuations, cut to the short answer), the requests the server saw, the retries,
the cache files, and the cost counters.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from vlv.eval.chat_endpoint import ChatEndpoint, EndpointError, check_api_key_env_name
from vlv.eval.vqa_endpoint import AnswerCache, endpoint_answers, prompt_hash
from vlv.eval.vqa_prompts import extract_short_answer, format_vqa_prompt
from vlv.testing.chat_server import ChatServer, Faults, tiny_llm_generator
from vlv.testing.object_store import free_port

MAX_TOKENS = 6
CAPTIONS = ("A brown dog sleeps on a red sofa next to a window.", "Two people ride bicycles along a beach at sunset.",
            "A bowl of oranges and a knife on a wooden table.")
QUESTIONS = ("What colour is the sofa?", "How many people are there?", "What fruit is shown?")
PROMPTS = [format_vqa_prompt(c, q) for c in CAPTIONS for q in QUESTIONS[:2]]  # 6 distinct
PROMPTS += [PROMPTS[0], PROMPTS[3]]  # asked twice: answered once
DISTINCT = 6


@pytest.fixture(scope="module")
def generate():
    """The tiny LLM, each continuation computed once: the server then answers in microseconds, so the client's
    short timeouts in these tests only ever fire on the stalls they inject."""
    return functools.lru_cache(maxsize=None)(tiny_llm_generator(seed=0))


@pytest.fixture(scope="module")
def expected(generate):
    return [extract_short_answer(generate(p, MAX_TOKENS)[0]) for p in PROMPTS]


def _endpoint(server_url: str, **overrides) -> ChatEndpoint:
    settings = dict(base_url=server_url, model="tiny-random", max_tokens=MAX_TOKENS, timeout_s=30.0, max_retries=4,
                    backoff_s=0.01, max_backoff_s=0.05)
    settings.update(overrides)
    return ChatEndpoint(**settings)


def _ask(server_url: str, cache: Path, *, concurrency: int = 2, chunk_size: int = 100, prompts=PROMPTS, **overrides):
    return endpoint_answers(prompts, _endpoint(server_url, **overrides), concurrency=concurrency,
                            cache_uri=str(cache), chunk_size=chunk_size)


def test_answers_are_the_models_and_a_second_run_asks_the_server_nothing(generate, expected, tmp_path):
    with ChatServer(generate) as server:
        answers, usage = _ask(server.base_url, tmp_path, chunk_size=4)
        assert answers == expected and any(answers)
        assert server.outcomes() == ["answered"] * DISTINCT  # duplicates asked once
        assert {r.max_tokens for r in server.requests} == {MAX_TOKENS} and {r.temperature for r in server.requests} \
            == {0.0}
        assert (usage.calls, usage.answered, usage.cache_hits, usage.retries) == (DISTINCT, DISTINCT, 0, 0)
        served = {prompt_hash(p): generate(p, MAX_TOKENS) for p in set(PROMPTS)}
        assert usage.prompt_tokens == sum(s[1] for s in served.values())
        assert usage.completion_tokens == sum(s[2] for s in served.values())
        chunks = sorted((tmp_path / "llm_answers").rglob("*.jsonl"))
        assert [len(c.read_text().splitlines()) for c in chunks] == [4, 2]  # written in chunks as answers came

        again, usage2 = _ask(server.base_url, tmp_path)
        assert again == expected
        assert len(server.requests) == DISTINCT  # the second run called the server 0 times
        assert (usage2.calls, usage2.answered, usage2.cache_hits) == (0, 0, DISTINCT)


def test_the_cache_key_is_model_prompt_and_max_tokens_not_the_url(generate, tmp_path):
    with ChatServer(generate) as first:
        _ask(first.base_url, tmp_path)
    with ChatServer(generate) as second:  # another port: another base URL, same model
        _, usage = _ask(second.base_url, tmp_path)
        assert len(second.requests) == 0 and usage.cache_hits == DISTINCT
        _, usage = _ask(second.base_url, tmp_path, max_tokens=MAX_TOKENS + 1)
        assert len(second.requests) == DISTINCT and usage.cache_hits == 0
        _, usage = _ask(second.base_url, tmp_path, model="another-model")
        assert len(second.requests) == 2 * DISTINCT and usage.cache_hits == 0


def test_rate_limits_are_retried_after_the_servers_retry_after(generate, expected, tmp_path):
    with ChatServer(generate, faults=Faults(rate_limit_first=2, retry_after_s=1.0)) as server:
        answers, usage = _ask(server.base_url, tmp_path, concurrency=2)
        outcomes = server.outcomes()
        requests = list(server.requests)
    assert answers == expected
    assert outcomes[:2] == ["429", "429"] and outcomes[2:] == ["answered"] * DISTINCT
    assert (usage.retries, usage.calls, usage.answered) == (2, DISTINCT + 2, DISTINCT)
    # nobody asked again before the first 429's Retry-After (1 s) was over. Measured from the first 429, not the
    # last: on a loaded machine the second thread's 429 may be read after the first thread's pause has ended
    # (found by CI at load 20).
    first_retry = min(r.at for r in requests[2:])
    assert first_retry - min(r.at for r in requests[:2]) >= 1.0


@pytest.mark.parametrize("faults, outcome", [(Faults(drop_first=3), "dropped"),
                                             (Faults(server_error_first=3), "503"),
                                             (Faults(stall_first=1, stall_s=6.0), "stalled")])
def test_dropped_connections_server_errors_and_timeouts_are_retried(generate, expected, tmp_path, faults, outcome):
    with ChatServer(generate, faults=faults) as server:
        answers, usage = _ask(server.base_url, tmp_path, concurrency=1, timeout_s=2.0)
        outcomes = server.outcomes()
    faulty = faults.drop_first + faults.server_error_first + faults.stall_first
    assert answers == expected
    assert outcomes == [outcome] * faulty + ["answered"] * DISTINCT
    assert (usage.retries, usage.calls, usage.answered) == (faulty, DISTINCT + faulty, DISTINCT)


def test_answers_come_back_in_prompt_order_under_concurrency_and_faults(tmp_path):
    """The tiny LLM answers every prompt alike, so order is checked with a server that echoes the question."""
    def echo(prompt: str, max_tokens: int) -> tuple[str, int, int]:
        question = prompt.rsplit("Question: ", 1)[1].split("\n", 1)[0]
        return f" {question}\nDescription:", len(prompt), 3

    prompts = [format_vqa_prompt(CAPTIONS[i % 3], f"Question number {i}?") for i in range(40)]
    with ChatServer(echo, faults=Faults(rate_limit_first=1, retry_after_s=0.2, server_error_first=2,
                                        drop_first=2)) as server:
        answers, usage = _ask(server.base_url, tmp_path, concurrency=4, prompts=prompts, chunk_size=7)
    assert answers == [f"Question number {i}?" for i in range(40)]
    assert usage.retries == 5 and usage.answered == 40 and usage.calls == 45
    assert len(list((tmp_path / "llm_answers").rglob("*.jsonl"))) == 6  # 40 answers in chunks of 7


def test_a_server_that_is_down_fails_clearly_after_the_retries(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(EndpointError) as info:
        _ask(url, tmp_path, concurrency=1, max_retries=2, prompts=PROMPTS[:1])
    message = str(info.value)
    assert f"{url}/chat/completions did not answer after 3 attempts (last: connection refused)" in message
    assert "check that the server is up" in message and "eval_vqa.endpoint_url" in message


def test_a_crash_keeps_the_answers_so_far_and_the_rerun_pays_only_for_the_rest(generate, expected, tmp_path):
    with ChatServer(generate, faults=Faults(fail_from=4)) as failing:
        with pytest.raises(EndpointError, match="HTTP 500"):
            _ask(failing.base_url, tmp_path, concurrency=1, max_retries=1, chunk_size=100)
    cached = AnswerCache(str(tmp_path), "tiny-random", MAX_TOKENS).load({prompt_hash(p) for p in PROMPTS})
    assert len(cached) == 4  # the 4 answers before the server failed were written although the chunk was not full
    with ChatServer(generate) as healthy:
        answers, usage = _ask(healthy.base_url, tmp_path)
        assert answers == expected
        assert len(healthy.requests) == DISTINCT - 4 and usage.cache_hits == 4


def test_a_chunk_cut_short_by_a_crash_loses_only_its_broken_line(generate, expected, tmp_path):
    with ChatServer(generate) as server:
        _ask(server.base_url, tmp_path, chunk_size=100)
        chunk = next((tmp_path / "llm_answers").rglob("*.jsonl"))
        chunk.write_bytes(chunk.read_bytes()[:-20])  # the last line loses its end
        answers, usage = _ask(server.base_url, tmp_path)
        assert answers == expected
        assert usage.cache_hits == DISTINCT - 1 and len(server.requests) == DISTINCT + 1


def test_the_api_key_is_sent_and_never_repeated_in_an_error(generate, tmp_path, monkeypatch):
    secret = "sk-test-endpoint-9f8e7d6c5b4a3f2e1d0c"
    monkeypatch.setenv("VLV_TEST_ENDPOINT_API_KEY", secret)
    with ChatServer(generate, faults=Faults(status_always=401)) as server:  # echoes the Authorization header
        with pytest.raises(EndpointError) as info:
            _ask(server.base_url, tmp_path, concurrency=1, prompts=PROMPTS[:1], api_key_env="VLV_TEST_ENDPOINT_API_KEY")
        assert server.requests[0].authorization == f"Bearer {secret}"
    message = str(info.value)
    assert secret not in message and "invalid credentials: Bearer ***" in message
    assert "HTTP 401" in message and "refused the API key: check the key in VLV_TEST_ENDPOINT_API_KEY" in message


def test_a_missing_or_misnamed_key_variable_is_refused_without_echoing_it(monkeypatch, tmp_path):
    monkeypatch.delenv("VLV_TEST_ENDPOINT_API_KEY", raising=False)
    with pytest.raises(EndpointError, match="VLV_TEST_ENDPOINT_API_KEY, but that environment variable is not set"):
        _ask("http://127.0.0.1:1/v1", tmp_path, api_key_env="VLV_TEST_ENDPOINT_API_KEY")
    pasted_key = "sk-abc123def456"
    with pytest.raises(ValueError) as info:
        check_api_key_env_name(pasted_key, "eval_vqa.endpoint_api_key_env")
    assert pasted_key not in str(info.value) and "must be the NAME of an environment variable" in str(info.value)
    with pytest.raises(ValueError, match="KEY, TOKEN, SECRET"):
        check_api_key_env_name("DEEPSEEK", "eval_vqa.endpoint_api_key_env")  # would not be redacted
    check_api_key_env_name("DEEPSEEK_API_KEY", "eval_vqa.endpoint_api_key_env")
