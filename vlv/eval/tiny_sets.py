"""Tiny evaluation sets in the official formats, from real photos that ship with scikit-image (offline).

- `val/`: 8 photos, a COCO-format caption file (5 hand-written reference captions each) and a VQA split in the
  official questions + annotations format: 28 hand-written questions with ten human-style answers each
  (answer types yes/no, number, other; several questions where the ten answers disagree, as in VQAv2).
- `exemplars/`: 5 other photos with captions and 11 questions, the separate split k-shot prompts draw from.

Captions and answers were written by looking at each picture. Answers are stored the way VQAv2 stores them
(lowercase, digits, no articles), because the official scorer normalises predictions but not agreeing
human answers. Photos are resized so the longer side is at most 640 px (COCO's size) and saved as RGB PNG.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

_MAX_SIDE = 640


@dataclass(frozen=True)
class _Photo:
    image_id: int
    source: str  # file name in skimage.data.data_dir
    captions: tuple[str, ...]


@dataclass(frozen=True)
class _Qa:
    question_id: int
    question: str
    question_type: str
    answer_type: str
    answers: tuple[str, ...]
    multiple_choice_answer: str | None = None  # set where the majority is a tie

    @property
    def image_id(self) -> int:
        return self.question_id // 1000


def _votes(*counts: tuple[str, int]) -> tuple[str, ...]:
    answers = tuple(answer for answer, n in counts for _ in range(n))
    assert len(answers) == 10, answers
    return answers


_VAL_PHOTOS = (
    _Photo(1, "astronaut.png", (
        "A smiling woman astronaut in an orange spacesuit poses in front of an American flag.",
        "An astronaut with short blonde hair in an orange flight suit next to a space shuttle model.",
        "Portrait of a female astronaut with her helmet in front of her and a flag behind her.",
        "A woman in an orange pressure suit smiles for her official astronaut photo.",
        "An astronaut in orange stands beside a white model of the space shuttle and a black helmet.")),
    _Photo(2, "chelsea.png", (
        "A close up of a tabby cat's face with green eyes.",
        "A brown striped cat looks to the side with wide yellow green eyes.",
        "Close-up portrait of a tabby cat with long white whiskers and a pink nose.",
        "The face of a tabby cat staring past the camera.",
        "A cat with large green eyes photographed very close up indoors.")),
    _Photo(3, "coffee.png", (
        "A cup of espresso on a red saucer with a silver spoon on a wooden table.",
        "A small red coffee cup, white inside, filled with espresso.",
        "View from above of an espresso cup and saucer sitting on a wooden counter.",
        "A shot of coffee with crema in a dark red cup, a spoon resting on the saucer.",
        "A red espresso cup and matching saucer on a worn wooden surface.")),
    _Photo(4, "rocket.jpg", (
        "A white rocket stands on the launch pad at dusk surrounded by tall towers.",
        "A rocket ready for launch under a deep blue evening sky with bright lights at its base.",
        "A tall white rocket between metal lightning towers at twilight.",
        "A launch pad in the evening with a rocket in the middle and lights shining below it.",
        "A space rocket standing upright on its pad, flanked by four steel towers.")),
    _Photo(5, "motorcycle_left.png", (
        "A red Yamaha motorcycle parked inside a cluttered garage.",
        "A red and black motorbike on its stand in a workshop with shelves of boxes.",
        "A classic red motorcycle parked on a concrete floor in front of a wooden bench.",
        "A shiny red motorcycle with a black seat stands in a garage full of storage boxes.",
        "An old Yamaha motorbike with a chrome exhaust parked indoors next to metal shelving.")),
    _Photo(6, "camera.png", (
        "A black and white photo of a man looking through a camera on a tripod.",
        "A man in a dark coat uses a camera mounted on a tripod in a grassy field.",
        "A photographer stands on a lawn with a camera on a tripod, buildings in the distance.",
        "Grayscale picture of a cameraman with a tripod outdoors on a clear day.",
        "A man bends forward to look into a camera set on a tripod on a grass field.")),
    _Photo(7, "coins.png", (
        "Rows of old coins laid out on a dark background.",
        "A black and white photo of many ancient coins arranged in four rows.",
        "A collection of antique coins stamped with heads and figures.",
        "Two dozen old coins of different sizes lined up in a grid.",
        "Ancient coins with faces on them displayed on a dark cloth.")),
    _Photo(8, "hubble_deep_field.jpg", (
        "A deep space image filled with countless colorful galaxies.",
        "Thousands of tiny galaxies and stars scattered across a black sky.",
        "A telescope image of distant galaxies of many shapes and colors.",
        "A black sky full of small glowing galaxies, some spiral and some orange.",
        "A dark field of space dotted with bright stars and faraway galaxies.")),
)

_VAL_QUESTIONS = (
    _Qa(1001, "What color is the spacesuit?", "what color is the", "other",
        _votes(("orange", 8), ("red", 1), ("bright orange", 1))),
    _Qa(1002, "Is the woman smiling?", "is the", "yes/no", _votes(("yes", 10))),
    _Qa(1003, "What flag is in the background?", "what", "other",
        _votes(("american", 4), ("american flag", 3), ("usa", 2), ("us", 1))),
    _Qa(2001, "What animal is this?", "what animal is", "other", _votes(("cat", 9), ("kitten", 1))),
    _Qa(2002, "What color are the cat's eyes?", "what color are the", "other",
        _votes(("green", 6), ("yellow", 2), ("yellow green", 1), ("light green", 1))),
    _Qa(2003, "How many eyes can you see?", "how many", "number", _votes(("2", 10))),
    _Qa(3001, "What drink is in the cup?", "what", "other", _votes(("espresso", 5), ("coffee", 5)),
        multiple_choice_answer="espresso"),
    _Qa(3002, "Is there a spoon on the saucer?", "is there a", "yes/no", _votes(("yes", 10))),
    _Qa(3003, "How many cups are there?", "how many", "number", _votes(("1", 10))),
    _Qa(3004, "What is the table made of?", "what is the", "other", _votes(("wood", 8), ("wooden", 2))),
    _Qa(4001, "Is it daytime?", "is it", "yes/no", _votes(("no", 7), ("yes", 3))),
    _Qa(4002, "How many towers surround the rocket?", "how many", "number", _votes(("4", 6), ("2", 2), ("3", 2))),
    _Qa(4003, "What is in the center of the picture?", "what is in the", "other",
        _votes(("rocket", 9), ("spaceship", 1))),
    _Qa(5001, "What brand is the motorcycle?", "what brand", "other", _votes(("yamaha", 10))),
    _Qa(5002, "What color is the motorcycle?", "what color is the", "other",
        _votes(("red", 9), ("red and black", 1))),
    _Qa(5003, "Is anyone riding the motorcycle?", "is anyone", "yes/no", _votes(("no", 10))),
    _Qa(5004, "Where is the motorcycle parked?", "where is the", "other",
        _votes(("garage", 6), ("in garage", 2), ("shed", 1), ("workshop", 1))),
    _Qa(6001, "Is this picture in color?", "is this", "yes/no", _votes(("no", 10))),
    _Qa(6002, "What is the camera on?", "what is the", "other", _votes(("tripod", 10))),
    _Qa(6003, "Is the man wearing a hat?", "is the man", "yes/no", _votes(("no", 10))),
    _Qa(6004, "What is the man doing?", "what is the man", "other",
        _votes(("taking picture", 3), ("filming", 3), ("taking photo", 2), ("looking through camera", 1),
               ("photographing", 1)), multiple_choice_answer="taking picture"),
    _Qa(7001, "How many coins are there?", "how many", "number",
        _votes(("24", 5), ("23", 2), ("25", 2), ("20", 1))),
    _Qa(7002, "How many rows of coins are there?", "how many", "number", _votes(("4", 10))),
    _Qa(7003, "Are these coins old?", "are these", "yes/no", _votes(("yes", 9), ("no", 1))),
    _Qa(8001, "What is shown in this picture?", "what is", "other",
        _votes(("galaxies", 5), ("space", 3), ("stars", 2))),
    _Qa(8002, "Is the background black?", "is the", "yes/no", _votes(("yes", 10))),
    _Qa(8003, "Was this taken with a telescope?", "was", "yes/no", _votes(("yes", 9), ("no", 1))),
    _Qa(8004, "How many spiral galaxies can you see?", "how many", "number",
        _votes(("1", 3), ("2", 3), ("3", 2), ("0", 1), ("5", 1)), multiple_choice_answer="2"),
)

_EXEMPLAR_PHOTOS = (
    _Photo(101, "page.png", (
        "A printed page from a book about region-based segmentation of coins.",
        "Black text on a white page under the heading Region-based segmentation.",
        "A photo of a textbook page explaining markers and histograms.",
        "A page of printed text with a line of Python code at the bottom.",
        "A slightly tilted photograph of a page of technical text.")),
    _Photo(102, "horse.png", (
        "A black silhouette of a horse standing on a white background.",
        "The outline of a horse filled in solid black.",
        "A side view silhouette of a horse facing right.",
        "A black horse shape with its tail hanging down.",
        "Simple black and white drawing of a standing horse.")),
    _Photo(103, "retina.jpg", (
        "A photograph of the back of a human eye showing red blood vessels.",
        "A retina image with branching vessels and a bright optic disc.",
        "An orange red circular image of an eye's retina on a black background.",
        "Medical fundus photo of a retina with many blood vessels.",
        "Close view of the inside of an eye, red with dark vessels spreading out.")),
    _Photo(104, "clock_motion.png", (
        "A blurry gray photo of a round object moving across the frame.",
        "A motion blurred picture of a clock against a gray wall.",
        "A gray image with a smeared round shape in the middle.",
        "An out of focus round clock shot in black and white.",
        "A round object blurred by motion on a plain gray background.")),
    _Photo(105, "moon.png", (
        "A gray close-up of the surface of the moon with small craters.",
        "Black and white image of a rocky lunar surface.",
        "The cratered surface of the moon seen from above.",
        "A gray landscape with craters and dark patches.",
        "A view of the moon's dusty surface from orbit.")),
)

_EXEMPLAR_QUESTIONS = (
    _Qa(101001, "What is the title of the page?", "what is the", "other",
        _votes(("region based segmentation", 7), ("segmentation", 3))),
    _Qa(101002, "Is this page printed?", "is this", "yes/no", _votes(("yes", 10))),
    _Qa(102001, "What animal is this?", "what animal is", "other", _votes(("horse", 10))),
    _Qa(102002, "How many legs does the horse have?", "how many", "number", _votes(("4", 10))),
    _Qa(102003, "What color is the horse?", "what color is the", "other", _votes(("black", 10))),
    _Qa(103001, "What part of the body is this?", "what", "other", _votes(("eye", 6), ("retina", 4))),
    _Qa(103002, "What color is the image mostly?", "what color is the", "other", _votes(("red", 6), ("orange", 4))),
    _Qa(104001, "Is the picture blurry?", "is the", "yes/no", _votes(("yes", 10))),
    _Qa(104002, "Is this image in color?", "is this", "yes/no", _votes(("no", 10))),
    _Qa(105001, "Is this the surface of the moon?", "is this", "yes/no", _votes(("yes", 8), ("no", 2))),
    _Qa(105002, "What is on the ground?", "what is on the", "other", _votes(("craters", 7), ("rocks", 3))),
)


@dataclass(frozen=True)
class CaptionSetFiles:
    images_dir: Path
    captions_json: Path  # COCO format


@dataclass(frozen=True)
class VqaSetFiles:
    images_dir: Path
    questions_json: Path  # official VQA questions format
    annotations_json: Path  # official VQA annotations format


@dataclass(frozen=True)
class TinyEvalSets:
    captions: CaptionSetFiles
    vqa: VqaSetFiles
    exemplar_captions: CaptionSetFiles
    exemplar_vqa: VqaSetFiles


def write_tiny_eval_sets(out_dir: str | Path) -> TinyEvalSets:
    """Write both splits under `out_dir` (`val/`, `exemplars/`); rewriting gives identical files."""
    out_dir = Path(out_dir)
    val_captions, val_vqa = _write_split(out_dir / "val", "tiny_val", _VAL_PHOTOS, _VAL_QUESTIONS)
    ex_captions, ex_vqa = _write_split(out_dir / "exemplars", "tiny_exemplars", _EXEMPLAR_PHOTOS,
                                       _EXEMPLAR_QUESTIONS)
    return TinyEvalSets(captions=val_captions, vqa=val_vqa, exemplar_captions=ex_captions, exemplar_vqa=ex_vqa)


def _write_split(split_dir: Path, subtype: str, photos: tuple[_Photo, ...],
                 questions: tuple[_Qa, ...]) -> tuple[CaptionSetFiles, VqaSetFiles]:
    images_dir = split_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    info = {"description": f"VLV tiny evaluation set ({subtype}): scikit-image photos, hand-written captions "
                           "and answers", "version": "1"}
    images, caption_rows = [], []
    file_names = {}
    for photo in photos:
        file_name = Path(photo.source).stem + ".png"
        width, height = _save_photo(photo.source, images_dir / file_name)
        file_names[photo.image_id] = file_name
        images.append({"id": photo.image_id, "file_name": file_name, "width": width, "height": height})
        for k, caption in enumerate(photo.captions):
            caption_rows.append({"id": photo.image_id * 10 + k, "image_id": photo.image_id, "caption": caption})
    captions_json = split_dir / "captions.json"
    _write_json(captions_json, {"info": info, "images": images, "annotations": caption_rows})
    questions_json, annotations_json = split_dir / "vqa_questions.json", split_dir / "vqa_annotations.json"
    _write_json(questions_json, {
        "info": info, "task_type": "Open-Ended", "data_type": "scikit-image", "data_subtype": subtype,
        "questions": [{"image_id": q.image_id, "question": q.question, "question_id": q.question_id}
                      for q in questions],
    })
    _write_json(annotations_json, {
        "info": info, "data_type": "scikit-image", "data_subtype": subtype,
        "annotations": [_annotation_row(q) for q in questions],
    })
    return CaptionSetFiles(images_dir, captions_json), VqaSetFiles(images_dir, questions_json, annotations_json)


def _annotation_row(qa: _Qa) -> dict:
    majority = qa.multiple_choice_answer or Counter(qa.answers).most_common(1)[0][0]
    return {
        "question_id": qa.question_id, "image_id": qa.image_id, "answer_type": qa.answer_type,
        "question_type": qa.question_type, "multiple_choice_answer": majority,
        "answers": [{"answer": answer, "answer_confidence": "yes" if answer == majority else "maybe",
                     "answer_id": j + 1} for j, answer in enumerate(qa.answers)],
    }


def _save_photo(source: str, target: Path) -> tuple[int, int]:
    import skimage.data

    path = Path(skimage.data.data_dir) / source
    if not path.is_file():
        raise ValueError(f"scikit-image does not ship {source} in {path.parent}; the tiny evaluation sets need "
                         "the photos bundled with scikit-image (pip install scikit-image)")
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if max(image.size) > _MAX_SIDE:
        scale = _MAX_SIDE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    image.save(target, format="PNG", compress_level=1)  # fast; PNG is lossless at any level
    return image.width, image.height


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
