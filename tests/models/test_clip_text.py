"""CLIP text encoder on input embeddings, and the offline CLIP tokenizer built from open_clip's BPE."""

from __future__ import annotations

import pytest
import torch

from vlv.models.clip_text import build_clip_text_encoder, build_clip_tokenizer

TEXTS = ["A photo of a cat sitting on a mat.", "two Dogs, running on the beach at sunset", "naïve café 2024",
         "A very long caption " + "with many words " * 30]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def tiny_clip():
    return build_clip_text_encoder(arch="tiny_sd", weights=None, init="random", seed=3)


def test_embeddings_path_equals_clip_text_model_on_token_ids(tiny_clip, clip_tokenizer):
    ids = clip_tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    reference = tiny_clip.model(input_ids=ids).last_hidden_state
    ours = tiny_clip(tiny_clip.token_embeddings(ids))
    assert ours.shape == (len(TEXTS), 77, 64)
    assert torch.equal(ours, reference)


def test_embeddings_path_is_causal_and_uses_positions(tiny_clip):
    embeds = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(0))
    changed = embeds.clone()
    changed[0, 40] += 1.0
    base, moved = tiny_clip(embeds), tiny_clip(changed)
    assert torch.equal(base[0, :40], moved[0, :40])  # earlier positions never see later ones
    assert not torch.allclose(base[0, 40:], moved[0, 40:])
    shorter = tiny_clip(embeds[:, :10])  # position embeddings come from the index, so a prefix is a prefix
    assert torch.allclose(shorter[0], base[0, :10], atol=1e-5)


def test_wrong_width_is_refused(tiny_clip):
    with pytest.raises(ValueError, match="expects"):
        tiny_clip(torch.zeros(1, 77, 32))
    with pytest.raises(ValueError, match="expects"):
        tiny_clip(torch.zeros(1, 78, 64))


def test_clip_text_encoder_is_frozen(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    assert not tiny_clip.training


def test_tokenizer_matches_open_clip(clip_tokenizer):
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    for text in TEXTS[:3]:
        expected = [reference.sot_token_id] + reference.encode(text) + [reference.eot_token_id]
        assert clip_tokenizer(text).input_ids == expected
    assert len(clip_tokenizer) == 49408
    assert (clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id) == (49406, 49407)


def test_empty_prompt_is_bos_eos_then_sd2_padding(clip_tokenizer, tiny_clip):
    ids = clip_tokenizer([""], padding="max_length", max_length=77).input_ids[0]
    assert ids == [49406, 49407] + [0] * 75  # SD 2.x pads with "!" (id 0), like OpenCLIP
    uncond = tiny_clip.empty_prompt_embedding(clip_tokenizer)
    assert uncond.shape == (1, 77, 64)
    assert torch.equal(uncond, tiny_clip.model(input_ids=torch.tensor([ids])).last_hidden_state)


def test_written_vocab_files_reload_to_the_same_tokenizer(tmp_path, clip_tokenizer):
    from transformers import CLIPTokenizer

    build_clip_tokenizer(tmp_path)
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    reloaded = CLIPTokenizer.from_pretrained(str(tmp_path), pad_token="!")
    for text in TEXTS:
        assert reloaded(text).input_ids == clip_tokenizer(text).input_ids
