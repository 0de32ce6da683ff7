"""Step `eval_vqa`: VQAv2 / OK-VQA from captions with a text-only LLM, 0- and k-shot (paper Table 3).

The benchmarks, their official question/annotation files and the selected questions come from caption_eval's
`eval_sets.json` (the one place they are configured), the captions from its `vqa_captions.parquet`. For each
benchmark and shot count, every question gets a prompt (`vqa_prompts`: exemplars drawn per question from the
separate exemplar split), all prompts are answered by the LLM over Ray tasks (chunks of prompts), and each
(benchmark, shots) is scored with the VQA accuracy, overall and per answer type: by default as the current
official GT-Vision-Lab script computes it (2021 revision), or as the EvalAI challenge server does
(`answer_processing`; vlv/eval/vqa_accuracy.py explains how they differ).
Outputs: `vqa_scores.csv` (every accuracy), `vqa_results.parquet` (every answer), `vqa_results.csv` (question,
caption, answer, score; at most `results_csv_rows` rows per benchmark and shot count, for MLflow), and
`vqa_predictions_<benchmark>_<k>shot.json` in the official results format. Accuracies are percentages, as the
official script prints them. Metrics `vqa_accuracy_<benchmark>_<k>shot` (+ `_<answer type>`) and
`vqa_accuracy` = the largest shot count of the first benchmark.

The answerer is a local transformers model (`llm=pretrained`, `tiny-random`) run over Ray tasks, or an
OpenAI-compatible chat endpoint (`llm=endpoint`: DeepSeek's API for the paper's DeepSeek-V3, or a vLLM / SGLang
server), asked from this step's own task with `endpoint_concurrency` requests in flight; its answers are cached
in the store (`vlv.eval.vqa_endpoint`) and its cost is logged as it goes and published as the metrics
`vqa_endpoint_{calls,retries,answered,cache_hits,prompt_tokens,completion_tokens}`.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepResult, WorkerPool
from vlv.engine.storage import checked_on_this_machine
from vlv.eval.chat_endpoint import ChatEndpoint, EndpointUsage, check_api_key_env_name, read_api_key
from vlv.eval.eval_sets import load_split, read_eval_sets
from vlv.eval.vqa_accuracy import score_vqa
from vlv.eval.vqa_data import write_vqa_predictions
from vlv.eval.vqa_endpoint import endpoint_answers
from vlv.eval.vqa_llm import LlmSpec, distributed_answers
from vlv.eval.vqa_prompts import build_vqa_prompts, exemplars_from_dataset, queries_from_dataset

ENDPOINT_METRIC_PREFIX = "vqa_endpoint"
TINY_WARNING = "random LLM over random-model captions (tiny / paper_mini): these VQA accuracies mean nothing"


@dataclass
class EvalVqaConfig:
    # "pretrained": a local transformers causal LM folder in llm_path. "tiny-random": a toy Qwen2 with seeded
    # random weights and a byte-level tokenizer (tiny preset; answers are noise). "endpoint": an OpenAI-compatible
    # chat server at endpoint_url (DeepSeek's API for the paper's DeepSeek-V3; vLLM; SGLang).
    llm: Literal["pretrained", "tiny-random", "endpoint"] = "pretrained"
    llm_path: str = ""
    llm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    benchmarks: list[str] = field(default_factory=list)  # caption_eval's benchmarks to score; empty = all
    shots: list[int] = field(default_factory=lambda: [0, 4, 32])
    max_new_tokens: int = 10  # also the endpoint's max_tokens
    batch_size: int = 8
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    seed: int = 0  # exemplar draws (per question) and the tiny-random init
    results_csv_rows: int = 200  # per benchmark and shot count in vqa_results.csv (all in vqa_results.parquet)
    # "official": GT-Vision-Lab/VQA vqaEval.py as it is today (2021: answers normalised only when the ten humans
    # disagree, then on both sides). "evalai": the EvalAI challenge server's script (prediction always normalised).
    answer_processing: Literal["official", "evalai"] = "official"
    # llm="endpoint": base URL as OpenAI clients take it (requests go to <base>/chat/completions), the model name,
    # and the NAME of the environment variable holding the API key (never the key; "" = the server needs none).
    endpoint_url: str = ""  # e.g. https://api.deepseek.com/v1, http://127.0.0.1:8000/v1
    endpoint_model: str = ""  # e.g. deepseek-chat (DeepSeek-V3)
    endpoint_api_key_env: str = ""  # e.g. DEEPSEEK_API_KEY
    endpoint_concurrency: int = 8  # requests in flight
    endpoint_timeout_s: float = 120.0  # per attempt
    endpoint_max_retries: int = 8  # on 429, 5xx, timeouts and dropped connections (exponential backoff, jitter)
    endpoint_backoff_s: float = 1.0  # the first retry's wait (at most); doubles each retry up to the max below
    endpoint_max_backoff_s: float = 60.0
    endpoint_cache_chunk: int = 200  # answers per cache file: a crash loses at most this many (or one minute's)

    def __post_init__(self) -> None:
        if self.llm != "pretrained" and self.llm_path:
            raise ValueError(f"eval_vqa.llm_path is ignored while eval_vqa.llm={self.llm!r}; to answer with that "
                             "model add --set eval_vqa.llm=pretrained")
        given = [name for name in ("endpoint_url", "endpoint_model", "endpoint_api_key_env") if getattr(self, name)]
        if self.llm != "endpoint" and given:
            raise ValueError(f"eval_vqa.{given[0]} is ignored while eval_vqa.llm={self.llm!r}; to answer through "
                             "that server add --set eval_vqa.llm=endpoint")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"eval_vqa.endpoint_url must start with http:// or https:// (e.g. "
                             f"https://api.deepseek.com/v1), got {self.endpoint_url!r}")
        check_api_key_env_name(self.endpoint_api_key_env, "eval_vqa.endpoint_api_key_env")
        if not self.shots or any(k < 0 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ValueError(f"eval_vqa.shots must be distinct shot counts >= 0 (paper: [0, 4, 32]), got "
                             f"{self.shots}")
        for name in ("max_new_tokens", "batch_size", "num_workers", "endpoint_concurrency", "endpoint_cache_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval_vqa.{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.results_csv_rows < 0:
            raise ValueError("eval_vqa.cpus_per_worker must be > 0, gpus_per_worker and results_csv_rows >= 0")
        if self.endpoint_timeout_s <= 0 or self.endpoint_max_retries < 0 or self.endpoint_backoff_s < 0 \
                or self.endpoint_max_backoff_s < self.endpoint_backoff_s:
            raise ValueError("eval_vqa.endpoint_timeout_s must be > 0, endpoint_max_retries >= 0 and 0 <= "
                             "endpoint_backoff_s <= endpoint_max_backoff_s")
        if self.answer_processing not in ("official", "evalai"):
            raise ValueError(f"eval_vqa.answer_processing must be 'official' (GT-Vision-Lab vqaEval.py, 2021) or "
                             f"'evalai' (the EvalAI challenge server), got {self.answer_processing!r}")

    def llm_spec(self) -> LlmSpec:
        return LlmSpec(kind=self.llm, path=self.llm_path, dtype=self.llm_dtype, seed=self.seed,
                       max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                       device="cuda" if self.gpus_per_worker > 0 else "cpu",
                       num_threads=max(1, int(self.cpus_per_worker)))

    def chat_endpoint(self) -> ChatEndpoint:
        return ChatEndpoint(base_url=self.endpoint_url, model=self.endpoint_model,
                            api_key_env=self.endpoint_api_key_env, max_tokens=self.max_new_tokens,
                            timeout_s=self.endpoint_timeout_s, max_retries=self.endpoint_max_retries,
                            backoff_s=self.endpoint_backoff_s, max_backoff_s=self.endpoint_max_backoff_s)


@dataclass(frozen=True)
class PromptRow:
    benchmark: str
    shots: int
    question_id: int
    image_id: int
    question: str
    caption: str
    prompt: str


class EvalVqaStep(Step[EvalVqaConfig]):
    name = "eval_vqa"
    upstream = ("caption_eval",)
    code_version = "2"  # 2: the 2021 official answer processing
    description = "VQAv2 / OK-VQA accuracy of a text-only LLM answering from the captions (0- and k-shot)"
    system_metrics = True
    outputs = (OutputFile("vqa_scores.csv", "accuracy per benchmark, shot count and answer type"),
               OutputFile("vqa_results.parquet", "every prompt's answer and score"),
               OutputFile("vqa_results.csv", "a sample of answers for MLflow"))

    def resources(self, config: EvalVqaConfig) -> Resources:
        if config.llm == "endpoint":
            return Resources(num_cpus=1)  # this task sends the requests (threads waiting on the network)
        return Resources(num_cpus=0)  # the answer tasks ask for their own CPUs/GPUs

    def worker_pools(self, config: EvalVqaConfig) -> tuple[WorkerPool, ...]:
        if config.llm == "endpoint":
            return ()
        return (answer_pool(config),)

    def weight_paths(self, config: EvalVqaConfig) -> dict[str, str]:
        return {"eval_vqa.llm_path": config.llm_path} if config.llm == "pretrained" else {}

    def preflight(self, config: EvalVqaConfig) -> None:
        if config.llm == "endpoint":
            for name, example in (("endpoint_url", "https://api.deepseek.com/v1"), ("endpoint_model", "deepseek-chat")):
                if not getattr(config, name):
                    raise ValueError(f"eval_vqa.{name} is not set (eval_vqa.llm=endpoint): e.g. --set eval_vqa."
                                     f"{name}={example} (DeepSeek-V3, with eval_vqa.endpoint_api_key_env="
                                     "DEEPSEEK_API_KEY), or a vLLM / SGLang server's http://<host>:<port>/v1")
            if not os.environ.get("RAY_ADDRESS"):  # on a cluster the step's node reads it (checked there)
                read_api_key(config.chat_endpoint(), "eval_vqa.endpoint_api_key_env")
            return
        if config.llm != "pretrained":
            return
        if not config.llm_path:
            raise ValueError("eval_vqa.llm_path is not set: put a local transformers causal LM folder there "
                             "(the text-only LLM that answers from captions), or use eval_vqa.llm=tiny-random")
        if checked_on_this_machine(config.llm_path) and not (Path(config.llm_path) / "config.json").is_file():
            raise ValueError(f"eval_vqa.llm_path={config.llm_path!r} is not a transformers model folder "
                             "(no config.json)")

    def run(self, ctx: StepContext[EvalVqaConfig]) -> StepResult:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cfg = ctx.config
        upstream = ctx.input("caption_eval").local_folder()  # small files, fetched once from an object store
        sets = read_eval_sets(upstream)
        names = cfg.benchmarks or [b.name for b in sets.vqa]
        if not names:
            raise ValueError("eval_vqa: caption_eval captioned no VQA benchmark (caption_eval.vqa is empty)")
        meaningless = cfg.llm == "tiny-random" or sets.tiny or ctx.random_models
        if meaningless:
            ctx.log.warning(TINY_WARNING)
        captions = read_vqa_captions(upstream / "vqa_captions.parquet")
        datasets, rows = {}, []
        for name in names:
            bench = sets.benchmark(name)
            datasets[name] = load_split(bench.eval)
            exemplar_set = load_split(bench.exemplars)
            rows += build_prompt_rows(name, datasets[name], exemplar_set, captions, cfg.shots, cfg.seed)
        ctx.log.debug("VQA answer processing: %s", cfg.answer_processing)
        metrics: dict[str, float] = {}
        prompts = [row.prompt for row in rows]
        if cfg.llm == "endpoint":
            ctx.log.info("answering %d prompts (%d benchmarks x shots %s) with %s at %s", len(rows), len(names),
                         cfg.shots, cfg.endpoint_model, cfg.endpoint_url)
            answers, usage = endpoint_answers(prompts, cfg.chat_endpoint(), concurrency=cfg.endpoint_concurrency,
                                              cache_uri=ctx.cache_uri, chunk_size=cfg.endpoint_cache_chunk,
                                              progress=lambda u, total: _log_endpoint_cost(ctx, u, total))
            metrics.update(usage.metrics(ENDPOINT_METRIC_PREFIX))
        else:
            pool = answer_pool(cfg)
            ctx.log.info("answering %d prompts (%d benchmarks x shots %s) with the %s LLM on %s",
                         len(rows), len(names), cfg.shots, cfg.llm, pool.describe())
            answers = distributed_answers(prompts, cfg.llm_spec(), num_workers=pool.count,
                                          num_cpus_per_worker=pool.cpus, num_gpus_per_worker=pool.gpus)
        score_rows: list[tuple[str, int, str, int, float]] = []
        per_question: dict[tuple[str, int, int], float] = {}
        for name in names:
            for shots in cfg.shots:
                predictions = {r.question_id: a for r, a in zip(rows, answers) if (r.benchmark, r.shots) == (name,
                                                                                                            shots)}
                score = score_vqa(datasets[name], predictions, answer_processing=cfg.answer_processing)
                write_predictions(ctx.output_dir / f"vqa_predictions_{name}_{shots}shot.json", predictions)
                metric = f"vqa_accuracy_{name}_{shots}shot"
                metrics[metric] = 100 * score.overall
                score_rows.append((name, shots, "all", score.num_questions, 100 * score.overall))
                for answer_type, accuracy in score.per_answer_type.items():
                    metrics[f"{metric}_{_slug(answer_type)}"] = 100 * accuracy
                    count = sum(1 for q in datasets[name].questions
                                if datasets[name].annotations[q.question_id].answer_type == answer_type)
                    score_rows.append((name, shots, answer_type, count, 100 * accuracy))
                per_question.update({(name, shots, qid): acc for qid, acc in score.per_question.items()})
                ctx.log.info("%s %d-shot: %.2f%% over %d questions", name, shots, 100 * score.overall,
                             score.num_questions)
        metrics["vqa_accuracy"] = metrics[f"vqa_accuracy_{names[0]}_{max(cfg.shots)}shot"]
        metrics["vqa_questions"] = float(sum(len(d) for d in datasets.values()))
        write_scores_csv(ctx.output_dir / "vqa_scores.csv", score_rows, comparable=not meaningless)
        scores = [per_question[(r.benchmark, r.shots, r.question_id)] for r in rows]
        pq.write_table(pa.table({
            "benchmark": [r.benchmark for r in rows], "shots": pa.array([r.shots for r in rows], pa.int32()),
            "question_id": pa.array([r.question_id for r in rows], pa.int64()),
            "image_id": pa.array([r.image_id for r in rows], pa.int64()), "question": [r.question for r in rows],
            "caption": [r.caption for r in rows], "answer": answers, "score": pa.array(scores, pa.float64()),
        }), ctx.output_dir / "vqa_results.parquet")
        write_results_csv(ctx.output_dir / "vqa_results.csv", rows, answers, scores, cfg.results_csv_rows)
        return StepResult(metrics=metrics, artifacts=["vqa_scores.csv", "vqa_results.csv"])


def answer_pool(config: EvalVqaConfig) -> WorkerPool:
    """The tasks that answer the prompts with a local LLM (one model load each); none with an endpoint."""
    return WorkerPool("LLM answer task", "tasks", config.num_workers, config.cpus_per_worker, config.gpus_per_worker)


def _log_endpoint_cost(ctx: StepContext[EvalVqaConfig], usage: EndpointUsage, total: int) -> None:
    """The endpoint's cost so far: a log line, and the counters as MLflow metrics by prompts done."""
    done = usage.answered + usage.cache_hits
    ctx.log.info("VQA endpoint: %d/%d distinct prompts done; %s", done, total, usage.describe())
    for name, value in usage.metrics(ENDPOINT_METRIC_PREFIX).items():
        ctx.metrics.log_metric(name, value, step=done)


def read_vqa_captions(path: Path) -> dict[tuple[str, str], dict[int, str]]:
    """(benchmark, split) -> {image_id: caption} from caption_eval's vqa_captions.parquet."""
    import pyarrow.parquet as pq

    captions: dict[tuple[str, str], dict[int, str]] = {}
    for row in pq.read_table(path).to_pylist():
        captions.setdefault((row["benchmark"], row["split"]), {})[int(row["image_id"])] = str(row["caption"])
    return captions


def build_prompt_rows(name: str, dataset: Any, exemplar_set: Any, captions: dict[tuple[str, str], dict[int, str]],
                      shots: list[int], seed: int) -> list[PromptRow]:
    eval_captions = captions.get((name, "eval"), {})
    queries = queries_from_dataset(dataset, eval_captions)
    pool = exemplars_from_dataset(exemplar_set, captions.get((name, "exemplars"), {}))
    image_of = {q.question_id: q.image_id for q in dataset.questions}
    rows = []
    for k in shots:
        if k > len(pool):
            raise ValueError(f"eval_vqa: {k}-shot prompts need {k} exemplars but the {name} exemplar pool has "
                             f"{len(pool)}; raise caption_eval.vqa[{name}].exemplar_pool_size or drop {k} from "
                             f"eval_vqa.shots")
        for query, prompt in zip(queries, build_vqa_prompts(queries, pool, num_shots=k, seed=seed)):
            rows.append(PromptRow(name, k, query.question_id, image_of[query.question_id], query.question,
                                  query.caption, prompt.text))
    return rows


def write_predictions(path: Path, predictions: dict[int, str]) -> None:
    write_vqa_predictions(path, predictions)


def write_scores_csv(path: Path, rows: list[tuple[str, int, str, int, float]], *, comparable: bool) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", "shots", "answer_type", "questions", "accuracy_percent", "comparable"])
        for name, shots, answer_type, count, accuracy in rows:
            writer.writerow([name, shots, answer_type, count, f"{accuracy:.2f}", str(comparable).lower()])


def write_results_csv(path: Path, rows: list[PromptRow], answers: list[str], scores: list[float],
                      per_setting: int) -> None:
    written: dict[tuple[str, int], int] = {}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", "shots", "question_id", "question", "caption", "answer", "score"])
        for row, answer, score in zip(rows, answers, scores):
            setting = (row.benchmark, row.shots)
            if written.get(setting, 0) >= per_setting:
                continue
            written[setting] = written.get(setting, 0) + 1
            writer.writerow([row.benchmark, row.shots, row.question_id, row.question, row.caption, answer,
                             f"{score:.4f}"])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
