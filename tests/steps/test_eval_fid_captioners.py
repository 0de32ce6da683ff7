"""Caption FID of other captioners (paper Table 1): captions files and the COCO references through the same tiny
text-to-image pipeline, images, noise seeds and real statistics as VLV's captions; SD 3.5's settings and its fp16
refusal; the paper presets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.eval.eval_sets import EVAL_SETS_FILE
from vlv.eval.fid_generation import CaptionGenerator, CaptionSource, EvalImage, _build_generate, caption_label
from vlv.eval.text_to_image import TextToImageSpec
from vlv.steps.caption_eval import CaptionEvalConfig, resolve_eval_sets
from vlv.steps.eval_fid import (
    SD35_FLOAT16,
    EvalFidConfig,
    EvalFidStep,
    FidCaptionerConfig,
    FidRow,
    caption_sources,
    fid_metrics,
    fid_rows,
)
from vlv.testing.builders import publish_output, run_step

TINY_T2I = TextToImageSpec(model="tiny", image_size=64, num_steps=2)
IMAGE_IDS = [1, 2, 3, 4]
VLV_CAPTIONS = {1: "An astronaut in a white suit.", 2: "A tabby cat.", 3: "Coins on a table.", 4: "A cup of coffee."}
# Two other captioners: one by image_id (JSONL), one by file_name (CSV), with different captions.
FILE_A = [{"image_id": i, "caption": "A red bus on a wet street at night, lights reflected."} for i in IMAGE_IDS]
FILE_B_CAPTIONS = ["A snowy mountain under a blue sky.", "Green leaves.", "A yellow boat.", "An old brick wall."]


def _caption_eval_folder(folder) -> None:
    """caption_eval's output over the tiny caption set's first four photos, with VLV's captions and references."""
    sets = resolve_eval_sets(CaptionEvalConfig(tiny_sets=True, vqa=[]), folder)
    (folder / EVAL_SETS_FILE).write_text(sets.to_json())
    index = json.loads((folder / sets.captions_json).read_text())
    names = {image["id"]: image["file_name"] for image in index["images"]}
    pq.write_table(pa.table({
        "image_id": pa.array(IMAGE_IDS, pa.int64()), "file_name": [names[i] for i in IMAGE_IDS],
        "caption": [VLV_CAPTIONS[i] for i in IMAGE_IDS],
        "references": [[f"Reference caption {i}.", "A second reference."] for i in IMAGE_IDS],
    }), folder / "captions.parquet")


@pytest.fixture(scope="module")
def caption_set(eval_store):
    return publish_output(eval_store, "caption_eval", "ce-captioners", _caption_eval_folder)


@pytest.fixture(scope="module")
def captioner_files(tmp_path_factory, caption_set):
    folder = tmp_path_factory.mktemp("captioners")
    (folder / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in FILE_A))
    names = pq.read_table(caption_set.local_dir / "captions.parquet").column("file_name").to_pylist()
    with open(folder / "b.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "caption"])
        writer.writerows(zip(names, FILE_B_CAPTIONS))
    return folder


def _images(caption_set):
    from vlv.steps.eval_fid import evaluation_images

    return evaluation_images(caption_set, 0)


def test_captions_files_and_references_become_sources_in_order(caption_set, captioner_files):
    cfg = EvalFidConfig(t2i_model="tiny", reference_captions=True, other_captioners=[
        FidCaptionerConfig("a", str(captioner_files / "a.jsonl")),
        FidCaptionerConfig("b", str(captioner_files / "b.csv"))])
    images = _images(caption_set)
    sources = caption_sources(cfg, caption_set, images)
    assert [s.name for s in sources] == ["vlv", "coco_reference", "a", "b"]
    assert [sources[0].caption(image) for image in images] == [VLV_CAPTIONS[i] for i in IMAGE_IDS]
    assert sources[1].captions == {i: f"Reference caption {i}." for i in IMAGE_IDS}  # each image's first reference
    assert sources[3].captions == dict(zip(IMAGE_IDS, FILE_B_CAPTIONS))  # matched by file name
    chunk = sources[2].restricted_to(images[:2])
    assert chunk.captions == {1: FILE_A[0]["caption"], 2: FILE_A[1]["caption"]}


def test_a_captions_file_missing_images_is_refused(caption_set, tmp_path):
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"image_id": 1, "caption": "A cat."}) + "\n")
    cfg = EvalFidConfig(t2i_model="tiny", other_captioners=[FidCaptionerConfig("gpt4o", str(partial))])
    with pytest.raises(ValueError, match=r"eval_fid.other_captioners\[gpt4o\] has captions for 1 of the 4 evaluated "
                                         r"images \(missing e.g. image ids \[2, 3, 4\]\)"):
        caption_sources(cfg, caption_set, _images(caption_set))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image_id": 1}\n')
    with pytest.raises(ValueError, match=r"eval_fid.other_captioners\[x\].path"):
        caption_sources(EvalFidConfig(t2i_model="tiny", other_captioners=[FidCaptionerConfig("x", str(broken))]),
                        caption_set, _images(caption_set))


def test_each_source_generates_from_its_own_captions_with_the_same_noise():
    images = [EvalImage(1, "unused.png", "A cat."), EvalImage(2, "unused.png", "A dog.")]
    same = CaptionSource("same", {1: "A cat.", 2: "A dog."})
    other = CaptionSource("other", {1: "A blue car.", 2: "A tall tree."})
    generator = CaptionGenerator(TINY_T2I, (1.0, 2.0), (CaptionSource(), same, other))
    assert generator.labels() == ["cfg1", "cfg2", "caption_same_cfg1", "caption_same_cfg2", "caption_other_cfg1",
                                  "caption_other_cfg2"]
    generate = _build_generate(generator, "cpu")
    vlv, copy, different = (generate(images, caption_label(name, 2.0), seed=7) for name in ("vlv", "same", "other"))
    assert all(np.array_equal(a, b) for a, b in zip(vlv, copy))  # same captions, same seed: the same images
    assert not np.array_equal(vlv[0], different[0])  # other captions: other images


def test_rows_and_metrics_name_every_captioner_and_cfg():
    cfg = EvalFidConfig(t2i_model="tiny", reconstruction=True, recon_cfg_scales=[2.0], cfg_scales=[1.0, 2.0])
    fids = {"recon_cfg2": 9.0, "cfg1": 5.0, "cfg2": 4.0, "caption_gpt4o_cfg1": 3.5, "caption_gpt4o_cfg2": 3.0}
    rows = fid_rows(cfg, ["vlv", "gpt4o"], fids, {label: 4 for label in fids})
    assert [(r.kind, r.captioner, r.label) for r in rows] == [
        ("reconstruction", "", "recon_cfg2"), ("caption", "vlv", "cfg1"), ("caption", "vlv", "cfg2"),
        ("caption", "gpt4o", "caption_gpt4o_cfg1"), ("caption", "gpt4o", "caption_gpt4o_cfg2")]
    assert isinstance(rows[0], FidRow)
    metrics = fid_metrics(cfg, rows)
    assert metrics == {"fid_recon_cfg2": 9.0, "fid_cfg1": 5.0, "fid_cfg2": 4.0, "fid_caption_gpt4o_cfg1": 3.5,
                       "fid_caption_gpt4o_cfg2": 3.0, "fid": 4.0, "fid_recon": 9.0, "fid_caption_gpt4o": 3.0}


def test_sd35_refuses_float16_and_odd_sizes_naming_the_fix():
    with pytest.raises(ValueError, match="T5-XXL text encoder overflows in float16.*eval_fid.t2i_dtype=bfloat16"):
        EvalFidConfig(t2i_model="sd35_medium", t2i_dtype="float16", t2i_image_size=1024)
    assert "--set eval_fid.t2i_dtype=bfloat16" in SD35_FLOAT16
    with pytest.raises(ValueError, match="use dtype bfloat16"):
        TextToImageSpec(model="sd35_medium", dtype="float16")
    with pytest.raises(ValueError, match="multiple of 16 with t2i_model=sd35_medium"):
        EvalFidConfig(t2i_model="sd35_medium", t2i_dtype="bfloat16", t2i_image_size=520)
    EvalFidConfig(t2i_model="sd21", t2i_dtype="float16")  # SD 2.1 in fp16 stays allowed (on GPUs)


def test_captioner_names_are_checked():
    for bad in ("vlv", "coco_reference", "GPT-4o", ""):
        with pytest.raises(ValueError, match=r"eval_fid.other_captioners\[\].name must be"):
            FidCaptionerConfig(bad, "/data/x.jsonl")
    with pytest.raises(ValueError, match="must be distinct"):
        EvalFidConfig(other_captioners=[FidCaptionerConfig("a", "/x"), FidCaptionerConfig("a", "/y")])
    with pytest.raises(ValueError, match=r"eval_fid.other_captioners\[a\].path=.* does not exist"):
        EvalFidStep().preflight(EvalFidConfig(t2i_model="tiny", inception_random_seed=0,
                                              other_captioners=[FidCaptionerConfig("a", "/nonexistent/a.jsonl")]))


def test_paper_preset_generates_with_sd35_medium_as_table_1_and_paper_mini_follows():
    from vlv.paper_mini.layout import PaperMiniAssets, default_assets_dir
    from vlv.presets import paper, paper_mini

    fid = paper().eval_fid
    assert (fid.t2i_model, fid.t2i_dtype, fid.t2i_num_steps, fid.t2i_image_size) == ("sd35_medium", "bfloat16", 40,
                                                                                     1024)
    assert fid.cfg_scales == [1.0, 2.0, 3.0, 4.0] and fid.headline_cfg == 2.0 and fid.t2i_weights == ""
    assert EvalFidStep().weight_paths(fid)["eval_fid.t2i_weights"] == ""  # named by preflight before any step
    mini = paper_mini().eval_fid
    assert (mini.t2i_model, mini.t2i_dtype, mini.cfg_scales) == ("sd35_medium", "bfloat16", fid.cfg_scales)
    assert mini.t2i_weights == str(PaperMiniAssets(default_assets_dir()).sd35)


# The whole step over 4 images: VLV, the COCO references and two captions files at one CFG (4 Frechet distances).
@pytest.mark.slow
def test_step_scores_every_captioner_through_the_same_path(ray_session, eval_store, stage1_output, caption_set,
                                                           captioner_files):
    config = EvalFidConfig(inception_random_seed=0, inception_batch_size=8, reconstruction=False, t2i_model="tiny",
                           t2i_num_steps=2, t2i_image_size=64, cfg_scales=[2.0], generation_batch_size=2,
                           grid_images=2, reference_captions=True, other_captioners=[
                               FidCaptionerConfig("a", str(captioner_files / "a.jsonl")),
                               FidCaptionerConfig("b", str(captioner_files / "b.csv"))])
    output = run_step(eval_store, EvalFidStep(), config, {"train_stage1": stage1_output, "caption_eval": caption_set},
                      "fid-captioners")
    metrics = output.manifest.metrics
    names = ("fid_cfg2", "fid_caption_coco_reference", "fid_caption_a", "fid_caption_b")
    assert all(np.isfinite(metrics[name]) and metrics[name] > 0 for name in names)
    assert len({metrics[name] for name in names}) == 4  # different captions, different FIDs
    assert metrics["fid_caption_a"] == metrics["fid_caption_a_cfg2"] and "fid_recon" not in metrics
    with open(output.local_dir / "fid.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["captioner"], r["metric"], r["num_images"]) for r in rows] == [
        ("vlv", "fid_cfg2", "4"), ("coco_reference", "fid_caption_coco_reference_cfg2", "4"),
        ("a", "fid_caption_a_cfg2", "4"), ("b", "fid_caption_b_cfg2", "4")]
    assert float(rows[2]["fid"]) == pytest.approx(metrics["fid_caption_a"], abs=1e-5)
