"""The tiny evaluation sets: valid for the loaders, ten answers per question, stored the way VQAv2 stores them."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from vlv.eval.coco_captions import load_coco_captions
from vlv.eval.tiny_sets import write_tiny_eval_sets
from vlv.eval.vqa_accuracy import normalize_answer, score_vqa
from vlv.eval.vqa_data import load_vqa_dataset


@pytest.fixture
def sets(tiny_eval_sets):
    return tiny_eval_sets


def test_caption_sets_load_with_five_captions_per_existing_image(sets):
    for files, count in ((sets.captions, 8), (sets.exemplar_captions, 5)):
        caption_set = load_coco_captions(files.captions_json, images_dir=files.images_dir)
        assert len(caption_set.images) == count
        assert all(len(caps) == 5 for caps in caption_set.captions.values())
        for image, path in zip(caption_set.images, caption_set.image_paths(files.images_dir)):
            with Image.open(path) as opened:
                assert opened.mode == "RGB" and opened.size == (image.width, image.height)
                assert max(opened.size) <= 640


def test_vqa_sets_load_and_cover_all_answer_types(sets):
    val = load_vqa_dataset(sets.vqa.questions_json, sets.vqa.annotations_json)
    exemplars = load_vqa_dataset(sets.exemplar_vqa.questions_json, sets.exemplar_vqa.annotations_json)
    assert len(val) == 28 and len(exemplars) == 11
    assert {a.answer_type for a in val.annotations.values()} == {"yes/no", "number", "other"}
    assert not set(val.image_ids()) & set(exemplars.image_ids())  # separate splits
    captioned = {i.image_id for i in load_coco_captions(sets.captions.captions_json).images}
    assert set(val.image_ids()) == captioned
    disagreeing = [a for a in val.annotations.values() if len({x.answer for x in a.answers}) > 1]
    assert len(disagreeing) >= 8


def test_answers_are_stored_normalised_like_vqav2(sets):
    for files in (sets.vqa, sets.exemplar_vqa):
        dataset = load_vqa_dataset(files.questions_json, files.annotations_json)
        for annotation in dataset.annotations.values():
            for answer in annotation.answers:
                assert normalize_answer(answer.answer) == answer.answer, (annotation.question_id, answer.answer)


def test_majority_answers_score_as_expected(sets):
    val = load_vqa_dataset(sets.vqa.questions_json, sets.vqa.annotations_json)
    score = score_vqa(val, {q.question_id: val.annotations[q.question_id].majority_answer() for q in val.questions})
    for qid, accuracy in score.per_question.items():
        counts = Counter(a.answer for a in val.annotations[qid].answers)
        majority = counts[val.annotations[qid].majority_answer()]
        # >= 4 votes -> 1.0; 3 votes -> 0.9 (see test_vqa_accuracy)
        assert accuracy == (1.0 if majority >= 4 else pytest.approx(0.9)), qid
    assert score.per_question[6004] == pytest.approx(0.9)  # "taking picture": 3 of 10


def test_rewriting_gives_identical_files(sets, tmp_path):
    again = write_tiny_eval_sets(tmp_path)
    assert again.vqa.annotations_json.read_bytes() == sets.vqa.annotations_json.read_bytes()
    assert (again.captions.images_dir / "rocket.png").read_bytes() == (sets.captions.images_dir
                                                                       / "rocket.png").read_bytes()
