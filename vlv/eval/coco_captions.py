"""Loader for COCO-format caption sets (`captions_val2014.json` and the tiny set), into typed dataclasses.

Format: `{"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id", "image_id", "caption"}]}`.
Caption FID and reconstruction FID iterate the images; reports show the reference captions. A malformed file
fails with a ValueError naming the file, the entry and the field.

Which images are evaluated (`select_images`): the paper reports FID on 30K images of COCO 2014 val (40,504 images)
without saying which; the official FID tool (tools/cal_fid.py, `get_matched_image_paths`, default 30000) draws them
at random from the sorted file list with NumPy's global RNG, so no list is published. Taking the first 30K in file
order would tie the numbers to the order of one JSON file, so the default is a seeded random sample: every
image_id gets the priority sha256("<seed>:<image_id>"), the N lowest priorities are kept, listed in image_id order.
The sample depends only on the seed and the set of ids (not on file order, Python version or machine), and with
one seed a smaller N is a subset of a larger one. `subset="first"` keeps the old first-N-in-file-order behaviour.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from vlv.eval.json_files import read_json, require_field, top_level_list
from vlv.paths import check_relative, safe_child

SubsetMode = Literal["random", "first"]
SUBSET_MODES = ("random", "first")


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class CocoCaptionSet:
    images: tuple[CocoImage, ...]  # file order
    captions: dict[int, tuple[str, ...]]  # image_id -> reference captions, file order

    def image_paths(self, images_dir: str | Path) -> list[Path]:
        return [safe_child(images_dir, image.file_name, "COCO file_name") for image in self.images]


def load_coco_captions(path: str | Path, *, images_dir: str | Path | None = None) -> CocoCaptionSet:
    """Every image must have at least one caption; with `images_dir`, every image file must exist there."""
    data = read_json(path, "COCO captions")
    images: list[CocoImage] = []
    for i, entry in enumerate(top_level_list(data, "images", path, "COCO captions")):
        where = f"{path}: images[{i}]"
        image_id = require_field(entry, "id", int, where)
        file_name = check_relative(require_field(entry, "file_name", str, where), images_dir or "the images folder",
                                   f"{where}: file_name")
        width, height = entry.get("width"), entry.get("height")
        for name, value in (("width", width), ("height", height)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{where}: field '{name}' must be a positive int, got {value!r}")
        images.append(CocoImage(image_id=image_id, file_name=file_name, width=width, height=height))
    ids = [image.image_id for image in images]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate image ids in 'images'")
    if not images:
        raise ValueError(f"{path}: the 'images' list is empty")
    captions: dict[int, list[str]] = {image_id: [] for image_id in ids}
    for i, entry in enumerate(top_level_list(data, "annotations", path, "COCO captions")):
        where = f"{path}: annotations[{i}]"
        require_field(entry, "id", int, where)
        image_id = require_field(entry, "image_id", int, where)
        caption = require_field(entry, "caption", str, where).strip()
        if image_id not in captions:
            raise ValueError(f"{where}: image_id {image_id} is not in 'images'")
        if not caption:
            raise ValueError(f"{where}: empty caption")
        captions[image_id].append(caption)
    uncaptioned = [image_id for image_id, caps in captions.items() if not caps]
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} images have no caption (e.g. image ids {uncaptioned[:5]})")
    if images_dir is not None:
        missing = [image.file_name for image in images if not safe_child(images_dir, image.file_name).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} images of {path} are missing from {images_dir} "
                             f"(e.g. {missing[:3]}); pass the folder that holds them")
    return CocoCaptionSet(images=tuple(images), captions={k: tuple(v) for k, v in captions.items()})


def select_images(images: Sequence[CocoImage], max_images: int, *, subset: SubsetMode = "random",
                  seed: int = 0) -> tuple[CocoImage, ...]:
    """The evaluated images (see the module docstring); `max_images` 0 = all of them."""
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    if subset == "first":
        return tuple(images[:max_images or None])
    if subset != "random":
        raise ValueError(f"subset must be one of {list(SUBSET_MODES)}, got {subset!r}")
    by_id = sorted(images, key=lambda image: image.image_id)
    if not max_images or max_images >= len(by_id):
        return tuple(by_id)
    ranked = sorted(by_id, key=lambda image: subset_priority(seed, image.image_id))
    kept = {image.image_id for image in ranked[:max_images]}
    return tuple(image for image in by_id if image.image_id in kept)


def subset_priority(seed: int, image_id: int) -> bytes:
    """An image's rank in the seeded random sample: lower is picked first."""
    return hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
