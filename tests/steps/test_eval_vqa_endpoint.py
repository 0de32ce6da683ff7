"""eval_vqa with llm=endpoint: the tiny VQA set answered by the tiny LLM behind a real HTTP server on 127.0.0.1.

The step's answers must be the model's own (as eval_vqa's local path computes them), its answer cache must make
a rerun free and a new shot count pay only for its new prompts, and the API key must reach the server and nothing
else: not the step output, the cache, MLflow (params, tags, metrics, artifacts) or the logs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlv.engine.store import RunStore
from vlv.eval.chat_endpoint import EndpointError
from vlv.eval.eval_sets import load_split, read_eval_sets
from vlv.eval.vqa_llm import LlmSpec, build_llm, generate_answers
from vlv.steps.eval_vqa import EvalVqaConfig, EvalVqaStep, build_prompt_rows, read_vqa_captions
from vlv.testing.builders import run_step
from vlv.testing.chat_server import ChatServer, Faults, tiny_llm_generator

MAX_TOKENS = 6
KEY_VARIABLE = "VLV_TEST_ENDPOINT_API_KEY"
SECRET = "sk-vlv-test-0a1b2c3d4e5f60718293a4b5c6d7e8f9"


@pytest.fixture(scope="module")
def generate():
    return functools.lru_cache(maxsize=None)(tiny_llm_generator(seed=0))


def _config(server: ChatServer, shots: list[int], **overrides) -> EvalVqaConfig:
    settings = dict(llm="endpoint", endpoint_url=server.base_url, endpoint_model="tiny-random", shots=shots,
                    max_new_tokens=MAX_TOKENS, endpoint_concurrency=3, endpoint_backoff_s=0.01,
                    endpoint_max_backoff_s=0.05, endpoint_cache_chunk=10)
    settings.update(overrides)
    return EvalVqaConfig(**settings)


def _prompts(caption_eval_output, shots: list[int]) -> list[str]:
    folder = caption_eval_output.local_dir
    bench = read_eval_sets(folder).vqa[0]
    captions = read_vqa_captions(folder / "vqa_captions.parquet")
    return [row.prompt for row in build_prompt_rows("tiny", load_split(bench.eval), load_split(bench.exemplars),
                                                    captions, shots, seed=0)]


@dataclasses.dataclass
class Runs:
    outputs: dict
    requests_after: dict  # requests the server had received after each run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, caption_eval_output, generate) -> Runs:
    """Three runs on one fresh store: 0-shot, the same again (other key), then 0- and 4-shot."""
    store = RunStore(str(tmp_path_factory.mktemp("endpoint_store")))
    outputs, requests_after = {}, {}
    with ChatServer(generate) as server:
        for name, shots in (("first", [0]), ("again", [0]), ("more_shots", [0, 4])):
            outputs[name] = run_step(store, EvalVqaStep(), _config(server, shots),
                                     {"caption_eval": caption_eval_output}, f"ep_{name}")
            requests_after[name] = len(server.requests)
    return Runs(outputs, requests_after)


def test_the_endpoints_answers_are_the_tiny_llms_and_are_scored(runs, caption_eval_output):
    prompts = _prompts(caption_eval_output, [0])
    model, tokenizer = build_llm(LlmSpec(kind="tiny-random", seed=0))
    local = generate_answers(model, tokenizer, prompts, max_new_tokens=MAX_TOKENS, batch_size=1)
    output = runs.outputs["first"]
    rows = pq.read_table(output.local_dir / "vqa_results.parquet").to_pylist()
    assert [r["answer"] for r in rows] == local
    metrics = output.manifest.metrics
    assert metrics["vqa_accuracy"] == pytest.approx(100 * sum(r["score"] for r in rows) / len(rows))
    distinct = len(set(prompts))
    assert runs.requests_after["first"] == distinct
    assert (metrics["vqa_endpoint_answered"], metrics["vqa_endpoint_calls"], metrics["vqa_endpoint_cache_hits"],
            metrics["vqa_endpoint_retries"]) == (distinct, distinct, 0, 0)
    assert metrics["vqa_endpoint_prompt_tokens"] > metrics["vqa_endpoint_completion_tokens"] > 0
    assert output.manifest.config["endpoint_model"] == "tiny-random"


def test_a_rerun_calls_the_server_zero_times_and_new_shots_only_their_new_prompts(runs, caption_eval_output):
    zero_shot = set(_prompts(caption_eval_output, [0]))
    four_shot = set(_prompts(caption_eval_output, [4]))
    assert runs.requests_after["again"] == runs.requests_after["first"]  # 0 calls
    again = runs.outputs["again"].manifest.metrics
    assert (again["vqa_endpoint_calls"], again["vqa_endpoint_cache_hits"]) == (0, len(zero_shot))
    assert again["vqa_accuracy"] == runs.outputs["first"].manifest.metrics["vqa_accuracy"]
    more = runs.outputs["more_shots"].manifest.metrics
    assert runs.requests_after["more_shots"] - runs.requests_after["again"] == len(four_shot - zero_shot) > 0
    assert (more["vqa_endpoint_cache_hits"], more["vqa_endpoint_answered"]) == (len(zero_shot),
                                                                              len(four_shot - zero_shot))
    assert more["vqa_endpoint_prompt_tokens"] > again["vqa_endpoint_prompt_tokens"] == 0


def test_preflight_and_config_of_the_endpoint(monkeypatch):
    with pytest.raises(ValueError, match="eval_vqa.endpoint_url is not set"):
        EvalVqaStep().preflight(EvalVqaConfig(llm="endpoint", endpoint_model="deepseek-chat"))
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    config = EvalVqaConfig(llm="endpoint", endpoint_url="http://127.0.0.1:1/v1", endpoint_model="m",
                           endpoint_api_key_env=KEY_VARIABLE)
    with pytest.raises(ValueError, match=f"{KEY_VARIABLE}, but that environment variable is not set"):
        EvalVqaStep().preflight(config)
    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    EvalVqaStep().preflight(config)
    assert EvalVqaStep().worker_pools(config) == () and EvalVqaStep().resources(config).num_cpus == 1
    with pytest.raises(ValueError, match="eval_vqa.endpoint_url is ignored while eval_vqa.llm='pretrained'; .*"
                                         "--set eval_vqa.llm=endpoint"):
        EvalVqaConfig(endpoint_url="https://api.deepseek.com/v1")
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        EvalVqaConfig(llm="endpoint", endpoint_url="api.deepseek.com")
    with pytest.raises(ValueError) as info:
        EvalVqaConfig(llm="endpoint", endpoint_api_key_env=SECRET)  # the key pasted where its name belongs
    assert SECRET not in str(info.value)


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_the_api_key_reaches_the_server_and_nothing_else(tmp_path, caption_eval_output, generate, monkeypatch):
    from mlflow.tracking import MlflowClient

    from vlv.tracking import PipelineTracking

    monkeypatch.setenv(KEY_VARIABLE, SECRET)
    store = RunStore(str(tmp_path / "store"))
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)  # no redaction filter: what the code itself writes
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    tracking = PipelineTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "vlv", str(tmp_path / "mlflow-artifacts"))
    tracking.start_parent(tags={"vlv.pipeline": "test"}, params={"preset": "tiny"})
    try:
        with ChatServer(generate) as server:
            config = _config(server, [0], endpoint_api_key_env=KEY_VARIABLE)
            child = tracking.start_child("eval_vqa", "key_ok", store.output_uri("eval_vqa", "key_ok"),
                                         dataclasses.asdict(config))
            output = run_step(store, EvalVqaStep(), config, {"caption_eval": caption_eval_output}, "key_ok",
                              tracking_uri=tracking.tracking_uri, mlflow_run_id=child)
            tracking.finish_child(child, "executed", output.manifest, output)
            assert {r.authorization for r in server.requests} == {f"Bearer {SECRET}"}
        with ChatServer(generate, faults=Faults(status_always=401)) as refusing:  # echoes the header back
            config = _config(refusing, [4], endpoint_api_key_env=KEY_VARIABLE)
            child = tracking.start_child("eval_vqa", "key_refused", store.output_uri("eval_vqa", "key_refused"),
                                         dataclasses.asdict(config))
            with pytest.raises(EndpointError) as info:
                run_step(store, EvalVqaStep(), config, {"caption_eval": caption_eval_output}, "key_refused",
                         tracking_uri=tracking.tracking_uri, mlflow_run_id=child)
            logging.getLogger("vlv.test").error("step failed: %s", info.value)
            tracking.finish_child(child, "failed", None, None, error=str(info.value))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    assert "HTTP 401" in str(info.value) and SECRET not in str(info.value)
    logged = log_file.read_text()
    assert "VQA endpoint:" in logged and server.base_url in logged  # the logs were captured
    assert _files_holding(tmp_path, SECRET.encode()) == []  # store, cache, MLflow db and artifacts, log
    assert list((tmp_path / "store" / "cache" / "llm_answers").rglob("*.jsonl"))  # the cache was written there
    client = MlflowClient(tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("vlv").experiment_id])
    ok = next(r for r in runs if r.data.tags.get("vlv.key") == "key_ok")
    assert ok.data.params["endpoint_api_key_env"] == KEY_VARIABLE
    assert ok.data.metrics["vqa_endpoint_prompt_tokens"] > 0
    for run in runs:
        assert SECRET not in repr(run.data.params) + repr(run.data.tags) + repr(run.data.metrics)
