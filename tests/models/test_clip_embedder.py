"""The open_clip embedder: seeded tiny model, unit-norm 768-d output, and local-only pretrained weights."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from vlv.models.clip_embedder import TINY_CLIP_CONFIG, ClipImageEmbedder, build_clip_embedder, resolve_clip_weights


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [np.asarray(Image.fromarray(img).resize((48, 40))) for img in (data.astronaut(), data.coffee())] + [
        data.camera()[::8, ::8]]  # a grayscale one too: the embedder converts to RGB


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the embedder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tiny_random_is_seeded_unit_norm_and_768_wide(photos):
    first = build_clip_embedder("tiny-random", seed=0).embed(photos)
    again = build_clip_embedder("tiny-random", seed=0).embed(photos)
    other = build_clip_embedder("tiny-random", seed=1).embed(photos)
    assert first.shape == (3, 768) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    assert np.abs(first[0] - first[1]).max() > 1e-4  # different photos, different embeddings


def test_arrays_and_pil_images_embed_the_same(photos):
    embedder = build_clip_embedder("tiny-random", seed=0)
    from_arrays = embedder.embed(photos)
    from_pil = embedder.embed([Image.fromarray(p) for p in photos])
    assert np.array_equal(from_arrays, from_pil)
    assert embedder.embed([]).shape == (0, 768)


def test_building_the_tiny_model_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    build_clip_embedder("tiny-random", seed=0)
    assert torch.equal(torch.rand(2), expected)


def test_pretrained_without_weights_is_a_clear_error_and_no_download(tmp_path, no_network):
    with pytest.raises(ValueError) as info:
        build_clip_embedder("pretrained", model_name="ViT-L-14", pretrained="openai", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "ViT-L-14" in message and "'openai'" in message
    assert str(tmp_path / "ViT-L-14.pt") in message  # where to put the OpenAI file
    assert "timm/vit_large_patch14_clip_224.openai" in message  # or which Hugging Face repo to cache


def test_unknown_models_tags_and_folders_are_value_errors(tmp_path, no_network):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        resolve_clip_weights("ViT-Q-99", "openai")
    with pytest.raises(ValueError, match="neither a known tag"):
        resolve_clip_weights("ViT-L-14", "not-a-tag-or-file", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="open_clip_config.json does not exist"):
        resolve_clip_weights(f"local-dir:{tmp_path}", "")


def test_tag_weights_are_found_in_the_url_cache(tmp_path, no_network):
    (tmp_path / "ViT-L-14.pt").write_bytes(b"placeholder: resolution only checks the file exists")
    weights = resolve_clip_weights("ViT-L-14", "openai", cache_dir=str(tmp_path))
    assert weights is not None and weights.path == str(tmp_path / "ViT-L-14.pt")
    assert weights.quick_gelu  # OpenAI's weights were trained with QuickGELU; the tag says so
    assert not weights.torchscript


def test_tag_weights_are_found_in_the_hugging_face_cache_layout(tmp_path, no_network):
    repo = tmp_path / "models--timm--vit_large_patch14_clip_224.openai"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    weights = resolve_clip_weights("ViT-L-14", "openai", cache_dir=str(tmp_path))
    assert weights is not None and weights.path == str(snapshot / "open_clip_model.safetensors")


def test_pretrained_mode_loads_a_local_checkpoint(tmp_path, photos, no_network):
    """The pretrained code path on real files: a saved tiny model reloads to identical embeddings."""
    tiny = ClipImageEmbedder.tiny_random(seed=3)
    torch.save(tiny.model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    loaded = build_clip_embedder("pretrained", model_name=f"local-dir:{tmp_path}")
    assert np.array_equal(loaded.embed(photos), tiny.embed(photos))
