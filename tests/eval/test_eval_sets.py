"""The evaluation-set record caption_eval hands to the eval steps: selection, image files, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vlv.eval.eval_sets import (
    EvalSets,
    VqaBenchmark,
    VqaSplit,
    image_files,
    load_split,
    read_eval_sets,
    read_image_index,
)


def _split(sets, **changes) -> VqaSplit:
    base = VqaSplit(str(sets.vqa.questions_json), str(sets.vqa.annotations_json), str(sets.vqa.images_dir),
                    image_index_json=str(sets.captions.captions_json))
    return dataclasses.replace(base, **changes)


def test_max_questions_keeps_the_first_questions_in_file_order(tiny_eval_sets):
    full = load_split(_split(tiny_eval_sets))
    first = load_split(_split(tiny_eval_sets, max_questions=5))
    assert [q.question_id for q in first.questions] == [q.question_id for q in full.questions[:5]]
    assert set(first.annotations) == {q.question_id for q in first.questions}
    assert first.image_ids() == [1, 2]


def test_exemplar_pool_is_a_seeded_sample_in_file_order(tiny_eval_sets):
    full = load_split(_split(tiny_eval_sets))
    pool = load_split(_split(tiny_eval_sets, pool_size=10, seed=3))
    again = load_split(_split(tiny_eval_sets, pool_size=10, seed=3))
    other = load_split(_split(tiny_eval_sets, pool_size=10, seed=4))
    ids = [q.question_id for q in pool.questions]
    assert ids == [q.question_id for q in again.questions] and len(ids) == 10
    assert ids != [q.question_id for q in other.questions]
    order = [q.question_id for q in full.questions]
    assert ids == sorted(ids, key=order.index)


def test_image_files_from_an_index_or_a_pattern(tiny_eval_sets, tmp_path):
    split = _split(tiny_eval_sets)
    files = image_files(split, [1, 2])
    assert files[1].name == read_image_index(split.image_index_json)[1] == "astronaut.png"
    (tmp_path / "COCO_val2014_000000000007.jpg").write_bytes(b"x")
    by_pattern = VqaSplit("q", "a", str(tmp_path), image_file_pattern="COCO_val2014_{image_id:012d}.jpg")
    assert image_files(by_pattern, [7])[7] == tmp_path / "COCO_val2014_000000000007.jpg"
    with pytest.raises(ValueError, match=r"1 images of q are missing .*COCO_val2014_000000000008.jpg"):
        image_files(by_pattern, [7, 8])
    with pytest.raises(ValueError, match=r"image ids \[99\] \(1\) .* are not in the image index"):
        image_files(split, [1, 99])
    with pytest.raises(ValueError, match="image_file_pattern must contain"):
        VqaSplit("q", "a", "d", image_file_pattern="fixed.jpg")


def test_record_round_trips_and_resolves_relative_paths(tmp_path):
    split = VqaSplit("sets/q.json", "sets/a.json", "sets/images", image_index_json="sets/c.json", max_questions=3)
    absolute = VqaSplit("/data/q.json", "/data/a.json", "/data/img", image_file_pattern="{image_id}.jpg")
    record = EvalSets(captions_json="sets/c.json", images_dir="/data/coco", max_images=4,
                      vqa=(VqaBenchmark("tiny", split, absolute),), tiny=True)
    (tmp_path / "eval_sets.json").write_text(record.to_json())
    loaded = read_eval_sets(tmp_path)
    assert loaded == record.resolved(tmp_path)
    assert loaded.captions_json == str(tmp_path / "sets/c.json") and loaded.images_dir == "/data/coco"
    assert loaded.benchmark("tiny").eval.image_index_json == str(tmp_path / "sets/c.json")
    assert loaded.benchmark("tiny").exemplars == absolute
    with pytest.raises(ValueError, match="did not caption a VQA benchmark named 'vqav2'; it has: tiny"):
        loaded.benchmark("vqav2")
    seeded = dataclasses.replace(record, subset="random", subset_seed=7)
    (tmp_path / "eval_sets.json").write_text(seeded.to_json())
    assert read_eval_sets(tmp_path) == seeded.resolved(tmp_path)
    legacy = json.loads(record.to_json())  # written before the subset was recorded: it took the first N
    del legacy["subset"], legacy["subset_seed"]
    (tmp_path / "eval_sets.json").write_text(json.dumps(legacy))
    assert (read_eval_sets(tmp_path).subset, read_eval_sets(tmp_path).subset_seed) == ("first", 0)
    (tmp_path / "eval_sets.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="rerun caption_eval"):
        read_eval_sets(tmp_path)
