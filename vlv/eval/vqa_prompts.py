"""Text-only VQA prompts (paper Table 3): an LLM answers a question from an image's caption, 0- or k-shot.

Exemplars come from a separate split (never the evaluated questions) and are drawn per question with an RNG
seeded by (seed, question_id): a prompt depends only on its own question, the pool and the seed, not on
which other questions are in the batch, on their order or on the process, so reruns and sharded runs agree.
Everything here is pure: strings in, strings out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from vlv.eval.vqa_data import VqaDataset

INSTRUCTION = ("Answer the question about an image using the description of the image. "
               "Reply with a short answer: one word or a short phrase.")


@dataclass(frozen=True)
class VqaExemplar:
    caption: str
    question: str
    answer: str


@dataclass(frozen=True)
class VqaQuery:
    question_id: int
    caption: str  # the caption of the question's image (e.g. written by the captioner under evaluation)
    question: str


@dataclass(frozen=True)
class VqaPrompt:
    question_id: int
    text: str
    num_shots: int


def _one_line(text: str) -> str:
    """Captions may hold newlines; the prompt's block structure must not depend on them."""
    return " ".join(text.split())


def format_vqa_prompt(caption: str, question: str, exemplars: Sequence[VqaExemplar] = ()) -> str:
    """Instruction, then one block per exemplar with its answer, then the query block ending in
    `Short answer:` for the model to continue."""
    blocks = [INSTRUCTION]
    for ex in exemplars:
        blocks.append(f"Description: {_one_line(ex.caption)}\nQuestion: {_one_line(ex.question)}\n"
                      f"Short answer: {_one_line(ex.answer)}")
    blocks.append(f"Description: {_one_line(caption)}\nQuestion: {_one_line(question)}\nShort answer:")
    return "\n\n".join(blocks)


def select_exemplars(pool: Sequence[VqaExemplar], num_shots: int, *, seed: int,
                     question_id: int) -> tuple[VqaExemplar, ...]:
    """`num_shots` distinct exemplars for one question, deterministic in (pool, seed, question_id)."""
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    if num_shots > len(pool):
        raise ValueError(f"{num_shots}-shot prompts need at least {num_shots} exemplars; the exemplar split has "
                         f"{len(pool)}")
    if num_shots == 0:
        return ()
    rng = random.Random(f"vqa-exemplars:{seed}:{question_id}")  # str seeds hash with SHA-512: stable anywhere
    return tuple(pool[i] for i in rng.sample(range(len(pool)), num_shots))


def build_vqa_prompts(queries: Sequence[VqaQuery], pool: Sequence[VqaExemplar], *, num_shots: int,
                      seed: int) -> list[VqaPrompt]:
    return [
        VqaPrompt(question_id=q.question_id, num_shots=num_shots,
                  text=format_vqa_prompt(q.caption, q.question,
                                         select_exemplars(pool, num_shots, seed=seed, question_id=q.question_id)))
        for q in queries
    ]


def exemplars_from_dataset(dataset: VqaDataset, captions_by_image: Mapping[int, str]) -> list[VqaExemplar]:
    """The exemplar pool of a VQA split: each question with its image's caption and its majority answer."""
    missing = sorted({q.image_id for q in dataset.questions} - captions_by_image.keys())
    if missing:
        raise ValueError(f"no caption for exemplar images {missing[:10]}: every image of the exemplar split "
                         "needs a caption")
    return [VqaExemplar(caption=captions_by_image[q.image_id], question=q.question,
                        answer=dataset.annotations[q.question_id].majority_answer())
            for q in dataset.questions]


def queries_from_dataset(dataset: VqaDataset, captions_by_image: Mapping[int, str]) -> list[VqaQuery]:
    """One query per question, captioned by `captions_by_image` (the captioner's output per image id)."""
    missing = sorted({q.image_id for q in dataset.questions} - captions_by_image.keys())
    if missing:
        raise ValueError(f"no caption for images {missing[:10]}: caption every image of the VQA split first")
    return [VqaQuery(question_id=q.question_id, caption=captions_by_image[q.image_id], question=q.question)
            for q in dataset.questions]


def extract_short_answer(generation: str) -> str:
    """The answer in an LLM continuation of a prompt: its first line (models often go on with a new block)."""
    stripped = generation.strip()
    return stripped.split("\n", 1)[0].strip() if stripped else ""
