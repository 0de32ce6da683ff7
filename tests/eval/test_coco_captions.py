"""COCO-format caption loader: typed result and clear errors; the seeded choice of evaluated images."""

from __future__ import annotations

import json
import random

import pytest

from vlv.eval.coco_captions import CocoImage, load_coco_captions, select_images


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _data():
    return {"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 3},
                       {"id": 2, "file_name": "b.png"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": " A cat. "},
                            {"id": 11, "image_id": 2, "caption": "A dog."},
                            {"id": 12, "image_id": 1, "caption": "A small cat."}]}


def test_loads_captions_per_image_in_file_order(tmp_path):
    caption_set = load_coco_captions(_write(tmp_path / "c.json", _data()))
    assert [i.file_name for i in caption_set.images] == ["a.png", "b.png"]
    assert caption_set.images[1].width is None
    assert caption_set.captions == {1: ("A cat.", "A small cat."), 2: ("A dog.",)}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("annotations"), "expected a JSON object with a 'annotations' list"),
    (lambda d: d["annotations"][0].update(image_id=3), r"annotations\[0\]: image_id 3 is not in 'images'"),
    (lambda d: d["annotations"].pop(1), "1 images have no caption"),
    (lambda d: d["annotations"][1].update(caption=""), "empty caption"),
    (lambda d: d["images"][1].update(id=1), "duplicate image ids"),
    (lambda d: d["images"][0].update(width=0), "'width' must be a positive int"),
])
def test_malformed_files_are_rejected(tmp_path, mutate, message):
    data = _data()
    mutate(data)
    with pytest.raises(ValueError, match=message):
        load_coco_captions(_write(tmp_path / "c.json", data))


def test_missing_images_are_reported(tmp_path):
    path = _write(tmp_path / "c.json", _data())
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 images of .* are missing from .*\['b.png'\]"):
        load_coco_captions(path, images_dir=tmp_path)


# --- which images are evaluated -------------------------------------------------------------------------------

def _images(ids) -> list[CocoImage]:
    return [CocoImage(image_id=i, file_name=f"{i}.jpg") for i in ids]


def _ids(images) -> list[int]:
    return [image.image_id for image in images]


def test_random_subset_is_pinned_by_seed_in_image_id_order():
    # sha256("<seed>:<image_id>") ranks: fixed values, the same on every machine and Python version
    assert _ids(select_images(_images(range(1, 21)), 5, seed=0)) == [4, 7, 15, 18, 20]
    assert _ids(select_images(_images(range(1, 21)), 5, seed=1)) == [4, 7, 8, 11, 17]
    assert _ids(select_images(_images(range(1, 21)), 10, seed=0)) == [3, 4, 7, 9, 10, 14, 15, 17, 18, 20]


def test_random_subset_ignores_file_order_and_repeats_exactly():
    images = _images(range(1, 201))
    shuffled = list(images)
    random.Random(5).shuffle(shuffled)
    picked = select_images(images, 30, seed=7)
    assert select_images(shuffled, 30, seed=7) == picked == select_images(images, 30, seed=7)
    assert _ids(picked) == sorted(_ids(picked)) and len(set(_ids(picked))) == 30


def test_different_seeds_give_different_subsets_and_smaller_ones_nest():
    images = _images(range(1000))
    subsets = {seed: set(_ids(select_images(images, 100, seed=seed))) for seed in range(4)}
    assert len({frozenset(s) for s in subsets.values()}) == 4
    assert all(len(subsets[a] & subsets[b]) < 40 for a in range(4) for b in range(a + 1, 4))  # ~10 expected
    assert set(_ids(select_images(images, 20, seed=0))) <= subsets[0]
    spread = _ids(select_images(images, 500, seed=0))
    assert 400 < sum(spread) / len(spread) < 600  # drawn across the whole set, not its start (first 500: 249.5)


def test_first_subset_and_all_images():
    images = _images([5, 3, 9, 1])
    assert _ids(select_images(images, 2, subset="first")) == [5, 3]  # file order
    assert _ids(select_images(images, 0, subset="first")) == [5, 3, 9, 1]
    assert _ids(select_images(images, 0)) == [1, 3, 5, 9]  # random mode lists image_id order
    assert _ids(select_images(images, 10, seed=3)) == [1, 3, 5, 9]
    with pytest.raises(ValueError, match="subset must be one of"):
        select_images(images, 2, subset="middle")  # type: ignore[arg-type]
