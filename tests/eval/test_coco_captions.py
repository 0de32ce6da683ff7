"""COCO-format caption loader: typed result and clear errors."""

from __future__ import annotations

import json

import pytest

from vlv.eval.coco_captions import load_coco_captions


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
