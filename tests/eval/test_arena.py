"""The caption arena's pieces: judge replies to scores, the bootstrap interval, the rubric, requests and pairs."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from vlv.eval.arena import (
    DEFAULT_RUBRIC,
    JUDGE_GENERATION_CONFIG,
    ArenaPair,
    arena_images,
    bootstrap_interval,
    build_pairs,
    captions_for,
    judge_prompt,
    judge_request,
    judge_score,
    load_rubric,
    read_captioner_file,
)


@pytest.mark.parametrize("reply, score", [
    ('{"justification": "Accurate and detailed.", "score": 5}', 5),
    ('```json\n{"justification": "ok", "score": 6}\n```', 6),
    ('{"score": 0}', 0),
    ('{"score": 4.0}', 4),
    ("Score: 3", 3),
    ("4", 4),
    ("2/6", 2),
])
def test_replies_holding_an_integer_0_to_6_give_that_score(reply, score):
    assert judge_score(reply) == (score, "")


@pytest.mark.parametrize("reply, why", [
    ('{"justification": "Perfect.", "score": 7}', "score 7 is outside 0-6"),
    ("-1", "score -1 is outside 0-6"),
    ('{"score": 4.5}', "score 4.5 is not an integer"),
    ('{"score": "5"}', "score '5' is not a number"),
    ('{"score": true}', "score True is not a number"),
    ('{"verdict": 5}', "the reply's JSON has no 'score' (keys: verdict)"),
    ("I cannot rate this caption.", "no score in the reply: 'I cannot rate this caption.'"),
    ("Score: 4.5", "score 4.5 is not an integer"),
])
def test_other_replies_say_why_they_hold_no_score(reply, why):
    assert judge_score(reply) == (None, why)


def test_bootstrap_interval_matches_the_normal_approximation_and_is_seeded():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 7, size=200)
    mean, low, high = bootstrap_interval(scores, resamples=10_000, seed=0)
    assert mean == pytest.approx(scores.mean())
    half_width = 1.96 * scores.std() / math.sqrt(len(scores))  # what the CLT says for a mean of 200 scores
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert low < mean < high
    assert bootstrap_interval(scores, resamples=10_000, seed=0) == (mean, low, high)
    other_seed = bootstrap_interval(scores + 0.001 * rng.random(200), resamples=10_000, seed=1)
    assert other_seed[1:] != (low, high) and other_seed[1:] == pytest.approx((low, high), abs=0.05)
    assert bootstrap_interval([4, 4, 4], resamples=1000, seed=0) == (4.0, 4.0, 4.0)
    assert all(math.isnan(v) for v in bootstrap_interval([], resamples=1000, seed=0))


def test_the_default_rubric_is_labelled_as_the_projects_own_on_a_0_to_6_scale():
    assert "project's own" in DEFAULT_RUBRIC and "not the wording used in the VLV paper" in DEFAULT_RUBRIC
    assert all(f"\n{score} - " in DEFAULT_RUBRIC for score in range(7))
    assert judge_prompt(DEFAULT_RUBRIC, "A dog.").count("A dog.") == 1 and "{caption}" not in judge_prompt(
        DEFAULT_RUBRIC, "A dog.")
    assert load_rubric("") == DEFAULT_RUBRIC


def test_a_rubric_file_places_the_caption_at_its_slot_or_after_it(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("Rate the caption from 0 to 6.\n")
    assert judge_prompt(load_rubric(str(plain)), "A cat.") == "Rate the caption from 0 to 6.\n\nCaption:\nA cat."
    slotted = tmp_path / "slot.txt"
    slotted.write_text("Caption: <{caption}>. Reply with the score only.")
    assert judge_prompt(load_rubric(str(slotted)), "A cat.") == "Caption: <A cat.>. Reply with the score only."
    (tmp_path / "two.txt").write_text("{caption} and {caption}")
    with pytest.raises(ValueError, match="has \\{caption\\} 2 times"):
        load_rubric(str(tmp_path / "two.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="eval_arena.rubric_file=.*is empty"):
        load_rubric(str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="cannot be read"):
        load_rubric(str(tmp_path / "missing.txt"))


def test_a_judge_request_is_a_batch_api_line_with_the_image_inline():
    pair = ArenaPair("gpt4o", 139, "COCO_val2014_000000000139.jpg", "A living room with a TV.")
    line = judge_request(pair, b"\xff\xd8jpeg", "image/jpeg", DEFAULT_RUBRIC, json_reply=True)
    assert line["key"] == "gpt4o-139"
    (content,) = line["request"]["contents"]
    text, image = content["parts"]
    assert text["text"] == judge_prompt(DEFAULT_RUBRIC, "A living room with a TV.")
    assert image["inline_data"] == {"mime_type": "image/jpeg", "data": base64.b64encode(b"\xff\xd8jpeg").decode()}
    config = line["request"]["generationConfig"]
    assert config == JUDGE_GENERATION_CONFIG and config["temperature"] == 0
    assert config["responseSchema"]["properties"]["score"] == {"type": "INTEGER"}
    plain = judge_request(pair, b"x", "image/png", DEFAULT_RUBRIC, json_reply=False)["request"]["generationConfig"]
    assert "responseSchema" not in plain


CAPTION_SET = [{"image_id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "caption": f"VLV caption {i}"}
               for i in (101, 102, 103, 104, 105, 106)]


def test_captioner_files_by_image_id_or_file_name(tmp_path):
    jsonl = tmp_path / "gpt4o.jsonl"
    jsonl.write_text('{"image_id": 101, "caption": " A red  bus. "}\n\n{"image_id": "102", "caption": "A cat."}\n'
                     '{"image_id": 101, "caption": "a second caption"}\n{"image_id": 999, "caption": "elsewhere"}\n')
    by_id, by_file = read_captioner_file(str(jsonl), "gpt4o")
    assert captions_for(CAPTION_SET, by_id, by_file) == {101: "A red bus.", 102: "A cat."}  # first wins
    csv = tmp_path / "qwen.csv"
    csv.write_text("file_name,caption\nval2014/COCO_val2014_000000000103.jpg,\"A dog, running.\"\n")
    assert captions_for(CAPTION_SET, *read_captioner_file(str(csv), "qwen")) == {103: "A dog, running."}
    (tmp_path / "bad.jsonl").write_text('{"image_id": 101, "caption": "ok"}\n{"caption": "no image"}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2: each row needs an 'image_id' or a 'file_name' "
                                         "\\(eval_arena.other_captioners\\[x\\].path\\)"):
        read_captioner_file(str(tmp_path / "bad.jsonl"), "x")
    (tmp_path / "broken.jsonl").write_text('{"image_id": 101, "caption": "ok"}\n{"image_id": 1\n')
    with pytest.raises(ValueError, match="broken.jsonl line 2 is not JSON"):
        read_captioner_file(str(tmp_path / "broken.jsonl"), "x")
    with pytest.raises(ValueError, match="eval_arena.other_captioners\\[x\\].path=.*does not exist"):
        read_captioner_file(str(tmp_path / "none.jsonl"), "x")


def test_pairs_cover_the_images_every_captioner_captioned():
    others = {"gpt4o": {i: f"gpt {i}" for i in (101, 102, 103, 104, 105)},
              "qwen": {i: f"qwen {i}" for i in (102, 103, 104, 105, 106)}}
    pairs = build_pairs(CAPTION_SET, others, num_images=3, seed=0)
    images = sorted({p.image_id for p in pairs})
    assert len(images) == 3 and set(images) <= {102, 103, 104, 105}
    assert [(p.captioner, p.image_id) for p in pairs[:3]] == [("vlv", images[0]), ("gpt4o", images[0]),
                                                               ("qwen", images[0])]
    assert {p.key for p in pairs} == {f"{c}-{i}" for c in ("vlv", "gpt4o", "qwen") for i in images}
    assert next(p.caption for p in pairs if p.key == f"qwen-{images[1]}") == f"qwen {images[1]}"
    assert set(arena_images(range(100), 10, seed=3)) <= set(arena_images(range(100), 20, seed=3))  # nested
    with pytest.raises(ValueError, match="num_images=5, but only 4 of caption_eval's 6 caption-set images have a "
                                         "caption from every captioner \\(gpt4o 5, qwen 5\\)"):
        build_pairs(CAPTION_SET, others, num_images=5, seed=0)
