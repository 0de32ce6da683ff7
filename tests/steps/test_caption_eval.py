"""caption_eval on the tiny sets with a (fake, untrained) tiny captioner: outputs, values, preflight."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlv.eval.coco_captions import load_coco_captions, select_images
from vlv.eval.eval_sets import read_eval_sets
from vlv.inference import caption_images
from vlv.models.trained_folder import load_captioner
from vlv.steps.caption_eval import CaptionEvalConfig, CaptionEvalStep, CaptioningActor, VqaBenchmarkConfig
from vlv.testing.builders import run_step

TINY_VAL_IMAGES, TINY_EXEMPLAR_IMAGES = 8, 5


def test_caption_set_rows_match_the_coco_file_and_the_captioner(caption_eval_output, stage2_output):
    folder = caption_eval_output.local_dir
    table = pq.read_table(folder / "captions.parquet")
    assert table.column_names == ["image_id", "file_name", "caption", "references"]
    rows = table.to_pylist()
    sets = read_eval_sets(folder)
    coco = json.loads(open(sets.captions_json).read())
    assert [r["image_id"] for r in rows] == [image["id"] for image in coco["images"]]
    assert [r["file_name"] for r in rows] == [image["file_name"] for image in coco["images"]]
    assert all(len(r["references"]) == 5 for r in rows)
    first_refs = [a["caption"] for a in coco["annotations"] if a["image_id"] == rows[0]["image_id"]]
    assert rows[0]["references"] == first_refs
    # The pool captioned each file as the captioner does when called directly (beam search is deterministic).
    paths = [str(Path(sets.images_dir) / r["file_name"]) for r in rows[:2]]
    direct = caption_images(paths, stage2_output.local_dir, captioner=load_captioner(stage2_output.local_dir))
    assert [r["caption"] for r in rows[:2]] == direct


def test_vqa_captions_cover_both_splits_and_reuse_shared_files(caption_eval_output):
    folder = caption_eval_output.local_dir
    rows = pq.read_table(folder / "vqa_captions.parquet").to_pylist()
    by_split = {split: [r for r in rows if r["split"] == split] for split in ("eval", "exemplars")}
    assert {r["benchmark"] for r in rows} == {"tiny"}
    assert sorted(r["image_id"] for r in by_split["eval"]) == list(range(1, TINY_VAL_IMAGES + 1))
    assert sorted(r["image_id"] for r in by_split["exemplars"]) == list(range(101, 101 + TINY_EXEMPLAR_IMAGES))
    # The VQA eval images are the caption-set files: one caption per file, the same in both tables.
    coco = {r["image_id"]: r["caption"] for r in pq.read_table(folder / "captions.parquet").to_pylist()}
    assert all(coco[r["image_id"]] == r["caption"] for r in by_split["eval"])


def test_metrics_sample_csv_and_recorded_sets(caption_eval_output):
    folder = caption_eval_output.local_dir
    metrics = caption_eval_output.manifest.metrics
    assert metrics["images_captioned"] == TINY_VAL_IMAGES + TINY_EXEMPLAR_IMAGES
    assert metrics["caption_set_images"] == TINY_VAL_IMAGES
    captions = [r["caption"] for r in pq.read_table(folder / "vqa_captions.parquet").to_pylist()]
    assert metrics["mean_caption_words"] == pytest.approx(sum(len(c.split()) for c in captions) / len(captions))
    with open(folder / "sample_captions.csv", newline="") as handle:
        sample = list(csv.DictReader(handle))
    assert len(sample) == 3 and sample[0]["reference"]
    assert caption_eval_output.manifest.artifacts == ("sample_captions.csv", "eval_image_ids.json")
    sets = read_eval_sets(folder)
    assert sets.tiny and [b.name for b in sets.vqa] == ["tiny"]
    assert sets.captions_json.startswith(str(folder))  # recorded relative, resolved to the published folder


def test_recorded_image_ids_are_the_caption_set(caption_eval_output):
    folder = caption_eval_output.local_dir
    record = json.loads((folder / "eval_image_ids.json").read_text())
    rows = pq.read_table(folder / "captions.parquet").to_pylist()
    assert record["image_ids"] == [r["image_id"] for r in rows] == list(range(1, TINY_VAL_IMAGES + 1))
    assert (record["subset"], record["seed"], record["max_images"], record["images_in_file"]) == ("random", 0, 0, 8)


def test_a_random_subset_is_captioned_and_recorded_in_image_id_order(eval_store, stage2_output):
    config = CaptionEvalConfig(tiny_sets=True, vqa=[], max_images=5, seed=3, batch_size=8, sample_rows=2)
    folder = run_step(eval_store, CaptionEvalStep(), config, {"train_stage2": stage2_output}, "ce_subset").local_dir
    sets = read_eval_sets(folder)
    expected = select_images(load_coco_captions(sets.captions_json).images, 5, subset="random", seed=3)
    record = json.loads((folder / "eval_image_ids.json").read_text())
    rows = pq.read_table(folder / "captions.parquet").to_pylist()
    assert record["image_ids"] == [r["image_id"] for r in rows] == [image.image_id for image in expected]
    assert record["image_ids"] == sorted(record["image_ids"]) and len(rows) == 5
    assert record["image_ids"] != [1, 2, 3, 4, 5]  # not the first five of the file (seed 3 picks others)
    assert (sets.subset, sets.subset_seed, sets.max_images) == ("random", 3, 5)
    assert (record["subset"], record["seed"], record["order"]) == ("random", 3, "image_id")


def test_paper_config_without_paths_fails_preflight_naming_the_fields():
    with pytest.raises(ValueError) as err:
        CaptionEvalStep().preflight(CaptionEvalConfig())
    message = str(err.value)
    for name in ("caption_eval.images_dir", "caption_eval.captions_json", "caption_eval.vqa[0].questions_json",
                 "caption_eval.vqa[1].exemplar_images_dir (okvqa)"):
        assert name in message


def test_preflight_names_a_path_that_does_not_exist(tmp_path):
    config = CaptionEvalConfig(tiny_sets=True, images_dir=str(tmp_path / "nope"), vqa=[])
    with pytest.raises(ValueError, match=r"caption_eval.images_dir=.*does not exist"):
        CaptionEvalStep().preflight(config)


def test_config_rejects_bad_benchmark_names_and_patterns():
    with pytest.raises(ValueError, match="lowercase"):
        VqaBenchmarkConfig(name="VQA v2")
    with pytest.raises(ValueError, match="image_file_pattern"):
        VqaBenchmarkConfig(image_file_pattern="val.jpg")
    with pytest.raises(ValueError, match="distinct"):
        CaptionEvalConfig(vqa=[VqaBenchmarkConfig(name="a"), VqaBenchmarkConfig(name="a")])
    with pytest.raises(ValueError, match="caption_eval.subset must be 'random'"):
        CaptionEvalConfig(subset="last")  # type: ignore[arg-type]


def test_actor_turns_an_unreadable_file_into_an_error_row(stage2_output, caption_eval_output, tmp_path):
    import numpy as np

    good = sorted(Path(read_eval_sets(caption_eval_output.local_dir).images_dir).glob("*.png"))[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    actor = CaptioningActor(checkpoint=stage2_output, num_beams=0, max_new_tokens=0,
                            device="cpu", num_threads=1)
    out = actor({"path": np.array([str(broken), str(good)], dtype=object)})
    assert out["error"][0].startswith("ValueError") and out["caption"][0] == ""
    assert out["error"][1] == "" and isinstance(out["caption"][1], str)
