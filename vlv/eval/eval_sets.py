"""Which evaluation images and questions a run uses: written once by `caption_eval`, read by the eval steps.

`caption_eval` resolves its config (real COCO / VQA files, or the tiny sets it writes into its own output) into an
`EvalSets` record and publishes it as `eval_sets.json`. `eval_fid` and `eval_vqa` read that record instead of
repeating the paths in their own config sections, so the questions scored are exactly the ones whose images were
captioned. Relative paths in the record are relative to the caption_eval output folder (the tiny sets live
there); `EvalSets.resolved(folder)` makes them absolute.

Question selection is a pure function of the record (`select_questions`): the first `max_questions` questions of
an evaluation split in file order, and a seeded sample of `pool_size` questions of an exemplar split, so both
steps pick the same questions without passing id lists around.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from vlv.eval.json_files import read_json, require_field, top_level_list
from vlv.eval.vqa_data import VqaDataset, load_vqa_dataset
from vlv.paths import check_relative, safe_child

EVAL_SETS_FILE = "eval_sets.json"
_FORMAT = "vlv-eval-sets-v1"


@dataclass(frozen=True)
class VqaSplit:
    """One split of a VQA benchmark in the official format, and how its image ids map to image files.

    Image files: `image_index_json` (a COCO-format file whose `images` list maps `id` -> `file_name`) when set,
    else `image_file_pattern` formatted with `image_id` (COCO: `COCO_val2014_{image_id:012d}.jpg`).
    """

    questions_json: str
    annotations_json: str
    images_dir: str
    image_file_pattern: str = ""
    image_index_json: str = ""
    max_questions: int = 0  # evaluation split: the first N questions in file order (0 = all)
    pool_size: int = 0  # exemplar split: a seeded sample of N questions (0 = all)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.image_index_json and "{image_id" not in self.image_file_pattern:
            raise ValueError(f"VQA split {self.questions_json}: image_file_pattern must contain '{{image_id}}' "
                             f"(e.g. 'COCO_val2014_{{image_id:012d}}.jpg'), got {self.image_file_pattern!r}")


@dataclass(frozen=True)
class VqaBenchmark:
    name: str
    eval: VqaSplit
    exemplars: VqaSplit


@dataclass(frozen=True)
class EvalSets:
    captions_json: str  # COCO-format caption set (caption FID, reconstruction FID, sample captions)
    images_dir: str
    max_images: int  # N images of the caption set (0 = all), chosen as `subset` says
    vqa: tuple[VqaBenchmark, ...]
    tiny: bool  # the tiny sets (scikit-image photos): numbers from them compare with nothing
    subset: str = "random"  # "random": seeded sample, image_id order; "first": file order (coco_captions)
    subset_seed: int = 0

    def resolved(self, base: str | Path) -> EvalSets:
        """A copy whose relative paths are joined to `base` (the caption_eval output folder)."""

        def fix(path: str) -> str:
            return path if not path or Path(path).is_absolute() or "://" in path else str(Path(base) / path)

        def fix_split(split: VqaSplit) -> VqaSplit:
            return dataclasses.replace(split, questions_json=fix(split.questions_json),
                                       annotations_json=fix(split.annotations_json), images_dir=fix(split.images_dir),
                                       image_index_json=fix(split.image_index_json))

        return dataclasses.replace(
            self, captions_json=fix(self.captions_json), images_dir=fix(self.images_dir),
            vqa=tuple(VqaBenchmark(b.name, fix_split(b.eval), fix_split(b.exemplars)) for b in self.vqa))

    def benchmark(self, name: str) -> VqaBenchmark:
        for bench in self.vqa:
            if bench.name == name:
                return bench
        raise ValueError(f"caption_eval did not caption a VQA benchmark named {name!r}; it has: "
                         f"{', '.join(b.name for b in self.vqa) or '(none)'}")

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, **dataclasses.asdict(self)}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = EVAL_SETS_FILE) -> EvalSets:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{where} is not an evaluation-set record of format {_FORMAT}; rerun caption_eval")
        benches = tuple(VqaBenchmark(b["name"], VqaSplit(**b["eval"]), VqaSplit(**b["exemplars"]))
                        for b in data["vqa"])
        return cls(captions_json=data["captions_json"], images_dir=data["images_dir"],
                   max_images=int(data["max_images"]), vqa=benches, tiny=bool(data["tiny"]),
                   subset=str(data.get("subset", "first")),  # records written before subsets took the first N
                   subset_seed=int(data.get("subset_seed", 0)))


def read_eval_sets(folder: str | Path) -> EvalSets:
    """The record in a caption_eval output folder, with its paths made absolute."""
    path = Path(folder) / EVAL_SETS_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing: {folder} is not a caption_eval output (rerun caption_eval)")
    return EvalSets.from_json(path.read_text(encoding="utf-8"), str(path)).resolved(folder)


def load_split(split: VqaSplit) -> VqaDataset:
    """The split's dataset restricted to the selected questions (see the module docstring)."""
    return select_questions(load_vqa_dataset(split.questions_json, split.annotations_json), split)


def select_questions(dataset: VqaDataset, split: VqaSplit) -> VqaDataset:
    questions = dataset.questions
    if split.max_questions and split.max_questions < len(questions):
        questions = questions[:split.max_questions]
    if split.pool_size and split.pool_size < len(questions):
        rng = random.Random(f"vqa-exemplar-pool:{split.seed}")  # str seed: stable across processes
        picked = sorted(rng.sample(range(len(questions)), split.pool_size))
        questions = tuple(questions[i] for i in picked)
    ids = {q.question_id for q in questions}
    return VqaDataset(questions=tuple(questions),
                      annotations={qid: a for qid, a in dataset.annotations.items() if qid in ids})


def read_image_index(path: str | Path) -> dict[int, str]:
    """`id -> file_name` from the `images` list of a COCO-format file (captions or instances)."""
    index: dict[int, str] = {}
    for i, entry in enumerate(top_level_list(read_json(path, "COCO image index"), "images", path, "COCO")):
        where = f"{path}: images[{i}]"
        file_name = require_field(entry, "file_name", str, where)
        index[require_field(entry, "id", int, where)] = check_relative(file_name, "the images folder",
                                                                        f"{where}: file_name")
    return index


def image_files(split: VqaSplit, image_ids: list[int]) -> dict[int, Path]:
    """The image file of every id; ValueError listing the ids whose file is missing."""
    if split.image_index_json:
        index = read_image_index(split.image_index_json)
        unknown = [i for i in image_ids if i not in index]
        if unknown:
            raise ValueError(f"image ids {unknown[:5]} ({len(unknown)}) of {split.questions_json} are not in the "
                             f"image index {split.image_index_json}")
        files = {i: safe_child(split.images_dir, index[i], "image file_name") for i in image_ids}
    else:
        files = {i: safe_child(split.images_dir, split.image_file_pattern.format(image_id=i), "image_file_pattern")
                 for i in image_ids}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} images of {split.questions_json} are missing (e.g. {missing[:3]}); "
                         f"check images_dir / image_file_pattern of that split")
    return files
