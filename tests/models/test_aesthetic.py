"""The aesthetic predictors load the published files strictly and compute what the published nets compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlv.models.aesthetic import (
    PUBLISHED_WEIGHTS,
    AestheticLinearV1,
    AestheticMLPv2,
    load_predictor,
    predict_scores,
    random_predictor,
)

# The key names and shapes of sac+logos+ava1-l14-linearMSE.pth as published (nn.Sequential indices skip the
# Dropout modules at 1, 3 and 5).
V2_PUBLISHED_SHAPES = {
    "layers.0.weight": (1024, 768), "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024), "layers.2.bias": (128,),
    "layers.4.weight": (64, 128), "layers.4.bias": (64,),
    "layers.6.weight": (16, 64), "layers.6.bias": (16,),
    "layers.7.weight": (1, 16), "layers.7.bias": (1,),
}
V1_PUBLISHED_SHAPES = {"weight": (1, 768), "bias": (1,)}


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in shapes.items()}


def _save(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def test_v2_structure_matches_the_published_state_dict():
    shapes = {k: tuple(v.shape) for k, v in AestheticMLPv2().state_dict().items()}
    assert shapes == V2_PUBLISHED_SHAPES
    assert [type(m).__name__ for m in AestheticMLPv2().layers] == [
        "Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout", "Linear", "Linear"]
    assert [m.p for m in AestheticMLPv2().layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]


def test_v2_published_layout_loads_strictly_and_keeps_the_values(tmp_path):
    state = _random_state(V2_PUBLISHED_SHAPES)
    model = load_predictor("v2-mlp", _save(tmp_path, "sac+logos+ava1-l14-linearMSE.pth", state))
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_v2_forward_is_the_composition_of_its_linear_maps(tmp_path):
    state = _random_state(V2_PUBLISHED_SHAPES, seed=3)
    model = load_predictor("v2-mlp", _save(tmp_path, "v2.pth", state))
    x = np.random.default_rng(0).normal(size=(5, 768))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    expected = x
    for index in (0, 2, 4, 6, 7):  # no activations: each layer is y = x W^T + b, dropout is off in eval
        expected = expected @ state[f"layers.{index}.weight"].double().numpy().T \
            + state[f"layers.{index}.bias"].double().numpy()
    scores = predict_scores(model, x.astype(np.float32))
    assert scores.shape == (5,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected[:, 0], rtol=1e-4, atol=1e-6)
    assert np.array_equal(scores, predict_scores(model, x.astype(np.float32)))  # eval: dropout inactive


def test_v1_published_layout_loads_and_is_one_affine_map(tmp_path):
    state = _random_state(V1_PUBLISHED_SHAPES, seed=1)
    model = load_predictor("v1-linear", _save(tmp_path, "sa_0_4_vit_l_14_linear.pth", state))
    assert isinstance(model, AestheticLinearV1)
    x = np.random.default_rng(1).normal(size=(4, 768)).astype(np.float32)
    expected = x.astype(np.float64) @ state["weight"].double().numpy().T + state["bias"].double().numpy()
    np.testing.assert_allclose(predict_scores(model, x), expected[:, 0], rtol=1e-5, atol=1e-6)


def test_wrong_keys_name_the_file_and_the_published_one(tmp_path):
    state = {f"model.{k}": v for k, v in _random_state(V2_PUBLISHED_SHAPES).items()}
    path = _save(tmp_path, "renamed.pth", state)
    with pytest.raises(ValueError) as info:
        load_predictor("v2-mlp", path)
    message = str(info.value)
    assert "renamed.pth" in message and "unexpected keys" in message and "missing keys" in message
    assert PUBLISHED_WEIGHTS["v2-mlp"].file_name in message


def test_the_other_predictors_file_is_rejected_with_a_clear_error(tmp_path):
    v1_file = _save(tmp_path, "sa_0_4_vit_l_14_linear.pth", _random_state(V1_PUBLISHED_SHAPES))
    with pytest.raises(ValueError, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        load_predictor("v2-mlp", v1_file)
    v2_file = _save(tmp_path, "v2.pth", _random_state(V2_PUBLISHED_SHAPES))
    with pytest.raises(ValueError, match="sa_0_4_vit_l_14_linear.pth"):
        load_predictor("v1-linear", v2_file)


def test_wrong_shapes_are_named(tmp_path):
    state = _random_state(V2_PUBLISHED_SHAPES)
    state["layers.2.weight"] = torch.zeros(64, 1024)
    with pytest.raises(ValueError, match=r"layers.2.weight has shape \(64, 1024\), expected \(128, 1024\)"):
        load_predictor("v2-mlp", _save(tmp_path, "bad_shape.pth", state))


def test_missing_and_unreadable_files_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="do not exist.*sac\\+logos\\+ava1-l14-linearMSE.pth"):
        load_predictor("v2-mlp", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="no weights file given"):
        load_predictor("v2-mlp", "")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read .*garbage.pth"):
        load_predictor("v2-mlp", garbage)
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_predictor("v1-linear", _save(tmp_path, "list.pth", [torch.zeros(1)]))
    with pytest.raises(ValueError, match="unknown aesthetic predictor"):
        load_predictor("v3", garbage)


def test_random_predictor_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = random_predictor("v2-mlp", seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    second = random_predictor("v2-mlp", seed=7)
    other = random_predictor("v2-mlp", seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.layers[0].weight, other.layers[0].weight)


def test_tiny_width_keeps_the_structure():
    model = random_predictor("v2-mlp", seed=0, input_dim=16)
    assert model.layers[0].weight.shape == (1024, 16)
    assert predict_scores(model, np.ones((2, 16), np.float32)).shape == (2,)


def test_scoring_in_training_mode_is_refused():
    with pytest.raises(AssertionError, match="eval"):
        predict_scores(AestheticMLPv2().train(), np.zeros((1, 768), np.float32))
