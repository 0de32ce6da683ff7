"""The FID Inception: pytorch-fid's network and preprocessing, local weights only, deterministic tiny weights."""

from __future__ import annotations

import hashlib
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import vlv.eval.inception as inception_mod
from vlv.eval.inception import (
    FEATURE_DIM,
    FID_WEIGHTS_FILE,
    InceptionFeatureExtractor,
    InceptionSpec,
    build_fid_inception,
    resolve_inception_weights,
)


def _images(count: int, seed: int, size=(48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatureExtractor(InceptionSpec(random_init_seed=0, batch_size=4))


@pytest.fixture(scope="module")
def seeded_inception_state_dict():
    """The raw (torchvision-layout) state dict that the seed-0 tiny model is made of, as a weights file holds."""
    inception = inception_mod._patched_torchvision_inception()
    inception_mod._seeded_random_init_(inception, 0)
    return inception.state_dict()


def test_features_are_2048_d_and_deterministic(extractor):
    images = _images(2, seed=0)
    features = extractor.features(images)
    assert features.shape == (2, FEATURE_DIM) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std() > 1e-3  # a live network, not zeros
    assert np.array_equal(extractor.features(images), features)
    rebuilt = InceptionFeatureExtractor(InceptionSpec(random_init_seed=0, batch_size=1))
    assert np.array_equal(rebuilt.features(images), features)  # same seed, other batch size: same numbers
    assert not rebuilt.comparable
    other_seed = InceptionFeatureExtractor(InceptionSpec(random_init_seed=1)).features(images[:1])
    assert not np.allclose(other_seed, features[:1])


def test_equals_pytorch_fid_inception_and_preprocessing(extractor, seeded_inception_state_dict, tmp_path):
    """pytorch-fid's own InceptionV3 (its download replaced by the same weights) on pytorch-fid's own image
    loading (ImagePathDataset + ToTensor) gives the features our extractor gives from the file paths."""
    from pytorch_fid import inception as pytorch_fid_inception
    from pytorch_fid.fid_score import ImagePathDataset
    from torchvision import transforms

    paths = []
    for i, array in enumerate(_images(2, seed=1, size=(120, 90))):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(array).save(paths[-1])
    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url",
                           return_value=seeded_inception_state_dict):
        reference_model = pytorch_fid_inception.InceptionV3([3]).eval()
    batch = torch.stack(list(ImagePathDataset(paths, transforms=transforms.ToTensor())))
    with torch.no_grad():
        reference = reference_model(batch)[0].squeeze(-1).squeeze(-1).numpy()
    ours = extractor.features(paths)
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
    assert list(extractor.model.state_dict()) == list(reference_model.state_dict())


def test_mixed_sizes_and_modes_in_one_batch(extractor):
    rgb = _images(1, seed=2, size=(50, 70))[0]
    gray = rgb[:, :, 0].copy()
    small = _images(1, seed=3, size=(20, 20))[0]
    small_rgba = np.dstack([small, np.full(small.shape[:2], 7, np.uint8)])
    together = extractor.features([rgb, gray, small_rgba])
    alone = np.concatenate([extractor.features([image]) for image in (rgb, gray, small)])
    # RGBA drops alpha (PIL convert("RGB"), as pytorch-fid reads files), so small_rgba must give small's features
    assert np.abs(together - alone).max() <= 1e-5 * np.abs(alone).max()


def test_bad_images_are_rejected(extractor, tmp_path):
    with pytest.raises(ValueError, match="image arrays must be uint8"):
        extractor.features([np.zeros((8, 8, 3), dtype=np.float32)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        extractor.features([broken])


def test_missing_weights_name_the_file_the_field_and_the_source(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as err:
        resolve_inception_weights(str(tmp_path / "nope.pth"), config_field="eval_fid.inception_weights")
    message = str(err.value)
    assert FID_WEIGHTS_FILE in message and "eval_fid.inception_weights" in message
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in message
    with pytest.raises(ValueError, match=f"{FID_WEIGHTS_FILE} not found"):
        build_fid_inception(InceptionSpec(weights=str(tmp_path), config_field="x.y"))  # a folder without it
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="torch hub cache .*x.y is empty"):
        resolve_inception_weights("", config_field="x.y")


def test_a_wrong_weights_file_is_rejected_by_checksum(tmp_path):
    fake = tmp_path / FID_WEIGHTS_FILE
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="is not the pytorch-fid Inception weights"):
        build_fid_inception(InceptionSpec(weights=str(tmp_path)))


def test_weights_file_loads_strictly(extractor, seeded_inception_state_dict, tmp_path):
    """A weights file in the published layout (here the seed-0 weights) loads from a folder, strict keys, when the
    expected hash is its own; it is then not the official file, so its FIDs are not comparable."""
    path = tmp_path / FID_WEIGHTS_FILE
    torch.save(seeded_inception_state_dict, path)
    own_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="is not the pytorch-fid Inception weights"):
        InceptionFeatureExtractor(InceptionSpec(weights=str(tmp_path)))  # the default expects the official file
    loaded = InceptionFeatureExtractor(InceptionSpec(weights=str(tmp_path), batch_size=4, weights_sha256=own_hash))
    assert not loaded.comparable and loaded.spec.identity == f"inception-sha256-{own_hash}"
    images = _images(2, seed=4)
    assert np.array_equal(loaded.features(images), extractor.features(images))
