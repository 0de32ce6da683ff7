"""The text-only LLM that answers VQA questions from captions (paper Table 3), run over Ray tasks.

`pretrained`: any local transformers causal LM folder (AutoModelForCausalLM + AutoTokenizer). `tiny-random`: a
toy-width Qwen2 (the `tiny_qwen2` architecture of `vlv/models`) with seeded random weights and a byte-level BPE
trained on the prompt instruction, deterministic everywhere; its answers are noise, the code path is real.
Decoding is greedy with a few new tokens; the answer is the first line of the continuation
(`extract_short_answer`). Prompts are batched longest-first with left padding, so a batch wastes little compute.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from vlv.engine.pools import map_chunks_with_tasks
from vlv.engine.storage import local_weights
from vlv.eval.vqa_prompts import INSTRUCTION, extract_short_answer
from vlv.logs import configure_logging
from vlv.models.arch_configs import llm_config
from vlv.models.caption_tokenizer import train_caption_tokenizer
from vlv.progress import rate_and_eta

log = logging.getLogger("vlv.eval.vqa_llm")

_PROGRESS_EVERY_S = 30.0
_TINY_CONTEXT = 16384  # RoPE: a position limit only; 32-shot prompts of long captions fit


@dataclass(frozen=True)
class LlmSpec:
    kind: Literal["pretrained", "tiny-random"] = "pretrained"
    path: str = ""  # local transformers folder (pretrained)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0  # tiny-random init
    max_new_tokens: int = 10
    batch_size: int = 8
    device: str = "cpu"
    num_threads: int = 1


def build_llm(spec: LlmSpec) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer with left padding and a pad token)."""
    import torch

    if spec.kind == "pretrained":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not spec.path:
            raise ValueError("eval_vqa.llm_path is not set: put a local transformers causal LM folder there")
        path = local_weights(spec.path)  # a store URI is fetched to this node once
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        from transformers import Qwen2ForCausalLM

        from vlv.models.loading import seeded_init

        tokenizer = train_caption_tokenizer([INSTRUCTION], vocab_size=300)
        config = llm_config("tiny_qwen2", vocab_size=-(-len(tokenizer) // 64) * 64)
        config.max_position_embeddings = _TINY_CONTEXT
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        with seeded_init(spec.seed):
            model = Qwen2ForCausalLM(config)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(spec.device).eval(), tokenizer


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                     batch_size: int) -> list[str]:
    """Greedy continuations of each prompt, cut to the short answer; results in prompt order."""
    import torch

    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False).input_ids]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    started = last_log = time.monotonic()
    for start in range(0, len(order), batch_size):
        picked = order[start:start + batch_size]
        encoded = tokenizer([prompts[i] for i in picked], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(output[:, encoded.input_ids.shape[1]:], skip_special_tokens=True)
        for i, text in zip(picked, texts):
            answers[i] = extract_short_answer(text)
        if time.monotonic() - last_log >= _PROGRESS_EVERY_S:
            last_log = time.monotonic()
            done = min(start + batch_size, len(order))
            log.info("VQA answers: %d/%d prompts, %s", done, len(order),
                     rate_and_eta(done, len(order), last_log - started, "prompts"))
    return answers


@dataclass(frozen=True)
class AnswerJob:
    spec: LlmSpec
    prompts: tuple[str, ...]


def answer_job(job: AnswerJob) -> list[str]:
    """One Ray task: load the LLM once, answer this chunk of prompts."""
    import torch

    configure_logging()
    torch.set_num_threads(max(1, job.spec.num_threads))
    model, tokenizer = build_llm(job.spec)
    return generate_answers(model, tokenizer, job.prompts, max_new_tokens=job.spec.max_new_tokens,
                            batch_size=job.spec.batch_size)


def distributed_answers(prompts: Sequence[str], spec: LlmSpec, *, num_workers: int, num_cpus_per_worker: float,
                        num_gpus_per_worker: float = 0.0) -> list[str]:
    """Answers to every prompt, the prompts split into `num_workers` Ray tasks; in prompt order."""
    from vlv.eval.fid import split_evenly

    if not prompts:
        return []
    chunks = split_evenly(list(prompts), num_workers)
    results = map_chunks_with_tasks(answer_job, [AnswerJob(spec, tuple(chunk)) for chunk in chunks],
                                    num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker, name="vlv:vqa_answers")
    return [answer for chunk in results for answer in chunk]
