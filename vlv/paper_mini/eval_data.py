"""The paper_mini evaluation sets, in the official file formats the paper preset reads.

- COCO 2014 style: `coco/val2014/COCO_val2014_<id:012d>.jpg` with `captions_val2014.json` (five reference
  captions an image), and `coco/train2014/` for the exemplar splits, named as COCO names them, so the paper's
  `image_file_pattern`s apply unchanged.
- VQAv2 (`v2_OpenEnded_mscoco_*_questions.json`, `v2_mscoco_*_annotations.json`: ten human answers, answer types
  yes/no, number, other, a multiple-choice answer) and OK-VQA (`OpenEnded_mscoco_*_questions.json`,
  `mscoco_*_annotations.json`: answer type "other", knowledge categories, `raw_answer`s, no multiple-choice answer),
  each with an evaluation split on the val2014 images and a separate exemplar split on the train2014 images with
  40 questions, so 32-shot prompts draw 32 distinct exemplars.

The photos are scikit-image's bundled photographs, cropped, flipped and recoloured (`make_photo`); captions and
answers were written by looking at them, stored as VQAv2 stores answers (lowercase, digits, no articles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlv.data.loopback_site import PHOTO_SOURCES, make_photo
from vlv.paper_mini.layout import PaperMiniAssets

COCO_SIDE = 640  # COCO images are at most 640 px on the longer side
EVAL_QUESTIONS_PER_IMAGE = 3  # of each benchmark; the exemplar splits use all QUESTIONS_PER_SOURCE
QUESTIONS_PER_SOURCE = 5
_VAL_ID_BASE, _TRAIN_ID_BASE = 1000, 2000


@dataclass(frozen=True)
class QA:
    question: str
    question_type: str  # VQAv2: the question's opening words; OK-VQA: the knowledge category
    answer_type: str  # yes/no | number | other
    answers: tuple[tuple[str, int], ...]  # (answer, how many of the ten annotators gave it)


@dataclass(frozen=True)
class SourceSet:
    source: str  # a PhotoSource name
    captions: tuple[str, ...]  # five COCO-style references
    vqav2: tuple[QA, ...]
    okvqa: tuple[QA, ...]


def _qa(question: str, question_type: str, answer_type: str, *answers: tuple[str, int]) -> QA:
    assert sum(n for _, n in answers) == 10, question
    return QA(question, question_type, answer_type, answers)


SOURCE_SETS: tuple[SourceSet, ...] = (
    SourceSet("astronaut", (
        "A smiling astronaut in an orange suit poses in front of a flag.",
        "A woman astronaut holding a white helmet beside a model of the shuttle.",
        "Portrait of an astronaut in an orange flight suit with an american flag behind her.",
        "An astronaut with short hair smiles for an official portrait.",
        "A female astronaut in orange stands next to a space shuttle model."), (
        _qa("What color is the suit?", "what color is the", "other", ("orange", 9), ("red", 1)),
        _qa("Is the person smiling?", "is the person", "yes/no", ("yes", 10)),
        _qa("How many flags are visible?", "how many", "number", ("1", 9), ("2", 1)),
        _qa("What is the person holding?", "what is the person", "other", ("helmet", 8), ("space helmet", 2)),
        _qa("Is this person an astronaut?", "is this person", "yes/no", ("yes", 10))), (
        _qa("What agency does this person work for?", "seven", "other", ("nasa", 10)),
        _qa("What country's flag is behind her?", "six", "other", ("usa", 6), ("america", 4)),
        _qa("What vehicle is the model behind her?", "one", "other", ("space shuttle", 7), ("shuttle", 3)),
        _qa("Where does this person travel to work?", "nine", "other", ("space", 8), ("orbit", 2)),
        _qa("Why is the suit bright orange?", "three", "other", ("visibility", 6), ("safety", 4)))),
    SourceSet("chelsea", (
        "A close up of a tabby cat looking to the side.",
        "An orange striped cat with green eyes sitting indoors.",
        "A ginger cat with long white whiskers stares past the camera.",
        "The face of a tabby cat photographed up close.",
        "A cat with large eyes looks at something off to the side."), (
        _qa("What animal is this?", "what animal is", "other", ("cat", 9), ("kitten", 1)),
        _qa("What color are the eyes?", "what color are the", "other", ("green", 7), ("yellow", 3)),
        _qa("How many cats are there?", "how many", "number", ("1", 10)),
        _qa("Is the cat sleeping?", "is the", "yes/no", ("no", 10)),
        _qa("Does the cat have whiskers?", "does the", "yes/no", ("yes", 10))), (
        _qa("What breed pattern is this cat's fur?", "eight", "other", ("tabby", 9), ("striped", 1)),
        _qa("What do these animals like to chase?", "eight", "other", ("mice", 6), ("mouse", 4)),
        _qa("What sound does this animal make?", "eight", "other", ("meow", 8), ("purr", 2)),
        _qa("What is a young one of these called?", "eight", "other", ("kitten", 10)),
        _qa("What are the long hairs on its face for?", "eight", "other", ("sensing", 6), ("touch", 4)))),
    SourceSet("coffee", (
        "A cup of coffee on a saucer with a spoon on a wooden table.",
        "A red espresso cup with crema on top, seen from above.",
        "Coffee in a small red cup on a matching saucer.",
        "A spoon rests on the saucer beside a cup of espresso.",
        "An espresso served on a worn wooden counter."), (
        _qa("What drink is this?", "what", "other", ("coffee", 6), ("espresso", 4)),
        _qa("What color is the cup?", "what color is the", "other", ("red", 9), ("dark red", 1)),
        _qa("How many spoons are there?", "how many", "number", ("1", 10)),
        _qa("Is the cup full?", "is the", "yes/no", ("yes", 8), ("no", 2)),
        _qa("Is the table made of wood?", "is the", "yes/no", ("yes", 10))), (
        _qa("What country is this drink most associated with?", "five", "other", ("italy", 8), ("brazil", 2)),
        _qa("What stimulant does this drink contain?", "five", "other", ("caffeine", 10)),
        _qa("What is the foam on top called?", "five", "other", ("crema", 7), ("foam", 3)),
        _qa("What plant does this drink come from?", "eight", "other", ("coffee plant", 6), ("coffee", 4)),
        _qa("When do people usually drink this?", "seven", "other", ("morning", 9), ("breakfast", 1)))),
    SourceSet("rocket", (
        "A rocket stands on its launch pad under a blue sky.",
        "A tall white rocket between launch towers before lift-off.",
        "A launch pad with a rocket ready for launch.",
        "A space rocket upright on the pad with service towers around it.",
        "A rocket on a launch tower on a clear day."), (
        _qa("What is this?", "what is this", "other", ("rocket", 9), ("spaceship", 1)),
        _qa("Is the rocket flying?", "is the", "yes/no", ("no", 9), ("yes", 1)),
        _qa("What color is the rocket?", "what color is the", "other", ("white", 10)),
        _qa("How many rockets are there?", "how many", "number", ("1", 10)),
        _qa("Is the sky blue?", "is the", "yes/no", ("yes", 10))), (
        _qa("What company builds this kind of rocket?", "two", "other", ("spacex", 8), ("nasa", 2)),
        _qa("Where is this rocket going?", "nine", "other", ("space", 9), ("orbit", 1)),
        _qa("What fuel do rockets burn?", "nine", "other", ("kerosene", 5), ("liquid oxygen", 5)),
        _qa("What is the countdown's last number?", "nine", "other", ("0", 7), ("1", 3)),
        _qa("What force must this overcome to fly?", "nine", "other", ("gravity", 10)))),
    SourceSet("motorcycle", (
        "A red motorcycle parked inside a garage.",
        "A sport motorbike stands in a workshop full of boxes.",
        "A red and black motorcycle on its stand indoors.",
        "A motorcycle parked next to shelves and tools.",
        "A shiny red motorbike in a cluttered garage."), (
        _qa("What vehicle is this?", "what", "other", ("motorcycle", 8), ("motorbike", 2)),
        _qa("What color is the motorcycle?", "what color is the", "other", ("red", 10)),
        _qa("How many wheels does it have?", "how many", "number", ("2", 10)),
        _qa("Is anyone riding it?", "is anyone", "yes/no", ("no", 10)),
        _qa("Is this indoors?", "is this", "yes/no", ("yes", 9), ("no", 1))), (
        _qa("What should a rider wear on the head?", "one", "other", ("helmet", 10)),
        _qa("What fuel does this vehicle use?", "one", "other", ("gas", 6), ("gasoline", 4)),
        _qa("What country is this brand from?", "two", "other", ("japan", 9), ("italy", 1)),
        _qa("Where is this vehicle usually kept?", "seven", "other", ("garage", 10)),
        _qa("What sport uses these vehicles?", "four", "other", ("racing", 6), ("motocross", 4)))),
    SourceSet("camera", (
        "A black and white photo of a man with a camera on a tripod.",
        "A cameraman in a dark coat looks through a camera on a field.",
        "A man filming outdoors with a tripod camera.",
        "A photographer stands on grass behind a camera on a tripod.",
        "Grayscale picture of a man using an old camera outside."), (
        _qa("Is this photo in color?", "is this", "yes/no", ("no", 10)),
        _qa("What is the man using?", "what is the man", "other", ("camera", 9), ("tripod", 1)),
        _qa("How many people are there?", "how many", "number", ("1", 10)),
        _qa("Is the man outside?", "is the man", "yes/no", ("yes", 10)),
        _qa("What is the camera standing on?", "what is the", "other", ("tripod", 10))), (
        _qa("What is this man's job?", "seven", "other", ("photographer", 6), ("cameraman", 4)),
        _qa("What does a camera capture?", "nine", "other", ("light", 5), ("pictures", 5)),
        _qa("What era does this photo look like?", "six", "other", ("1950s", 5), ("old", 5)),
        _qa("What is the three legged stand called?", "three", "other", ("tripod", 10)),
        _qa("What material did old cameras record on?", "nine", "other", ("film", 10)))),
    SourceSet("coins", (
        "Rows of old coins on a dark background.",
        "A black and white photo of many coins laid out in a grid.",
        "A collection of antique coins of different sizes.",
        "Old coins arranged in four rows.",
        "Ancient coins with faces on them on a dark cloth."), (
        _qa("What are these?", "what are these", "other", ("coins", 10)),
        _qa("Is this photo in color?", "is this", "yes/no", ("no", 10)),
        _qa("Are the coins in rows?", "are the", "yes/no", ("yes", 9), ("no", 1)),
        _qa("How many rows of coins are there?", "how many", "number", ("4", 7), ("3", 3)),
        _qa("What shape are the coins?", "what shape are the", "other", ("round", 8), ("circle", 2))), (
        _qa("What metal are old coins made of?", "three", "other", ("silver", 5), ("copper", 5)),
        _qa("What are these used for?", "seven", "other", ("money", 8), ("buying", 2)),
        _qa("What do you call a coin collector?", "seven", "other", ("numismatist", 10)),
        _qa("Whose faces are usually on coins?", "six", "other", ("kings", 6), ("presidents", 4)),
        _qa("Where would you see coins like these?", "six", "other", ("museum", 10)))),
    SourceSet("hubble_deep_field", (
        "A deep space image full of colorful galaxies.",
        "Thousands of tiny galaxies scattered across a black sky.",
        "A telescope image of distant galaxies of many shapes.",
        "A black sky dotted with small glowing galaxies.",
        "A dark field of space with bright stars and faraway galaxies."), (
        _qa("Is it dark?", "is it", "yes/no", ("yes", 10)),
        _qa("What color is the background?", "what color is the", "other", ("black", 10)),
        _qa("Are there many galaxies?", "are there", "yes/no", ("yes", 10)),
        _qa("How many suns are visible?", "how many", "number", ("0", 6), ("1", 4)),
        _qa("What is in the picture?", "what is in the", "other", ("galaxies", 6), ("stars", 4))), (
        _qa("What telescope took this picture?", "nine", "other", ("hubble", 10)),
        _qa("What are the bright spots?", "nine", "other", ("galaxies", 7), ("stars", 3)),
        _qa("What is the study of this called?", "nine", "other", ("astronomy", 10)),
        _qa("Where is this telescope?", "nine", "other", ("space", 7), ("orbit", 3)),
        _qa("What galaxy do we live in?", "nine", "other", ("milky way", 10)))),
)


def all_texts() -> list[str]:
    """Every caption, question and answer here (part of the corpus the offline tokenizers are trained on)."""
    texts: list[str] = []
    for entry in SOURCE_SETS:
        texts += list(entry.captions)
        texts += [f"{qa.question} {answer}" for qa in entry.vqav2 + entry.okvqa for answer, _ in qa.answers]
    return texts


@dataclass(frozen=True)
class _Image:
    image_id: int
    file_name: str
    source: SourceSet


def write_eval_sets(assets: PaperMiniAssets, seed: int) -> dict[str, int]:
    """Write the COCO captions set and the VQAv2 / OK-VQA evaluation and exemplar splits; returns counts."""
    val = _write_photos(assets.coco_images, "val2014", _VAL_ID_BASE, variant=1, seed=seed)
    train = _write_photos(assets.coco_train_images, "train2014", _TRAIN_ID_BASE, variant=2, seed=seed)
    assets.coco_captions.parent.mkdir(parents=True, exist_ok=True)
    _write_json(assets.coco_captions, {
        "info": {"description": "paper_mini COCO-format caption set (scikit-image photos)", "version": "1.0"},
        "licenses": [],
        "images": [{"id": im.image_id, "file_name": im.file_name, **_size(assets.coco_images / im.file_name)}
                   for im in val],
        "annotations": [{"id": im.image_id * 10 + k, "image_id": im.image_id, "caption": caption}
                        for im in val for k, caption in enumerate(im.source.captions)],
    })
    counts = {"coco_images": len(val), "exemplar_images": len(train)}
    for split, images, per_image in (("val", val, EVAL_QUESTIONS_PER_IMAGE), ("train", train, QUESTIONS_PER_SOURCE)):
        counts[f"vqav2_{split}_questions"] = _write_vqav2(assets, split, images, per_image)
        counts[f"okvqa_{split}_questions"] = _write_okvqa(assets, split, images, per_image)
    return counts


def _write_photos(folder: Path, subtype: str, id_base: int, *, variant: int, seed: int) -> list[_Image]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = {source.name: source for source in PHOTO_SOURCES}
    images = []
    for k, entry in enumerate(SOURCE_SETS, start=1):
        source = sources[entry.source]
        image_id = id_base + k
        base = Image.fromarray(_rgb(source.load()))
        photo, _ = make_photo(base, source, variant, COCO_SIDE, (0.75, 1.5), np.random.default_rng([seed, image_id]))
        file_name = f"COCO_{subtype}_{image_id:012d}.jpg"
        photo.save(folder / file_name, format="JPEG", quality=90)
        images.append(_Image(image_id, file_name, entry))
    return images


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]


def _size(path: Path) -> dict[str, int]:
    with Image.open(path) as image:
        return {"width": image.width, "height": image.height}


def _ten(qa: QA) -> list[str]:
    return [answer for answer, count in qa.answers for _ in range(count)]


def _write_vqav2(assets: PaperMiniAssets, split: str, images: list[_Image], per_image: int) -> int:
    subtype = f"{split}2014"
    questions, annotations = [], []
    for im in images:
        for j, qa in enumerate(im.source.vqav2[:per_image]):
            question_id = im.image_id * 1000 + j  # VQAv2 numbers an image's questions after its id
            questions.append({"image_id": im.image_id, "question": qa.question, "question_id": question_id})
            annotations.append({
                "question_type": qa.question_type, "multiple_choice_answer": qa.answers[0][0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(_ten(qa))],
                "image_id": im.image_id, "answer_type": qa.answer_type, "question_id": question_id})
    info = {"description": "paper_mini VQAv2-format split", "version": "2.0"}
    _write_json(assets.vqa_file("vqav2", split, "questions"), {
        "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype,
        "questions": questions})
    _write_json(assets.vqa_file("vqav2", split, "annotations"), {
        "info": info, "license": {}, "data_subtype": subtype, "annotations": annotations})
    return len(questions)


def _write_okvqa(assets: PaperMiniAssets, split: str, images: list[_Image], per_image: int) -> int:
    subtype = f"{split}2014"
    questions, annotations = [], []
    for im in images:
        for j, qa in enumerate(im.source.okvqa[:per_image]):
            question_id = im.image_id * 10 + j  # OK-VQA numbers an image's questions after its id
            questions.append({"image_id": im.image_id, "question": qa.question, "question_id": question_id})
            annotations.append({
                "image_id": im.image_id, "answer_type": "other", "question_type": qa.question_type,
                "question_id": question_id, "confidence": 3,
                "answers": [{"answer_id": i + 1, "raw_answer": a, "answer_confidence": "yes", "answer": a}
                            for i, a in enumerate(_ten(qa))]})
    info = {"description": "paper_mini OK-VQA-format split", "version": "1.0"}
    _write_json(assets.vqa_file("okvqa", split, "questions"), {
        "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype,
        "questions": questions})
    _write_json(assets.vqa_file("okvqa", split, "annotations"), {
        "info": info, "license": {}, "data_subtype": subtype, "annotations": annotations})
    return len(questions)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
