"""Loading a trained captioner folder: its weights file must hold exactly the tensors the captioner trains."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlv.models.trained_folder import CAPTIONER_WEIGHTS, load_captioner
from vlv.testing.builders import write_captioner_folder, write_stage1_folder


@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory):
    stage1, stage2 = tmp_path_factory.mktemp("stage1"), tmp_path_factory.mktemp("stage2")
    write_stage1_folder(stage1)
    write_captioner_folder(stage2, stage1)
    return stage2


def _copy(source, folder):
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / "tokenizer").symlink_to(source / "tokenizer")
    return folder


def _rewrite(folder, change) -> None:
    path = folder / CAPTIONER_WEIGHTS
    state = load_file(str(path))
    save_file(change(dict(state)), str(path))


def test_a_complete_folder_loads_every_trained_tensor(captioner_folder):
    state = load_file(str(captioner_folder / CAPTIONER_WEIGHTS))
    captioner = load_captioner(captioner_folder)
    params = dict(captioner.named_parameters())
    assert set(state) == {name for name, p in params.items() if p.requires_grad}
    assert all(torch.equal(params[name], tensor) for name, tensor in state.items())


def test_missing_trained_tensors_are_named_with_the_likely_cause(captioner_folder, tmp_path):
    folder = _copy(captioner_folder, tmp_path / "captioner")
    dropped = ["mlp.2.bias", "mlp.0.weight"]
    _rewrite(folder, lambda state: {k: v for k, v in state.items() if k not in dropped})
    with pytest.raises(ValueError, match=r"lacks 2 of the \d+ tensors this captioner trains \(e\.g\. mlp\.0\.weight, "
                                         r"mlp\.2\.bias\).*trainable='mlp\+llm\+encoder'.*smaller trainable set"):
        load_captioner(folder)


def test_tensors_the_captioner_does_not_train_are_refused(captioner_folder, tmp_path):
    folder = _copy(captioner_folder, tmp_path / "captioner")
    _rewrite(folder, lambda state: {**state, "embedder.encoder.queries": torch.zeros(1, 77, 64)})
    with pytest.raises(ValueError, match=r"holds 1 tensors this captioner does not train.*embedder\.encoder\.queries"):
        load_captioner(folder)
