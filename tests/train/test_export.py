"""The trained weights file is a pure function of the weights: same tensors, same bytes."""

from __future__ import annotations

import hashlib

import torch

from vlv.train.loop import export_safetensors


def test_the_same_weights_always_give_the_same_file(tmp_path):
    state = {f"layer{i}.weight": torch.full((3, 2), float(i)) for i in range(8)}
    digests = set()
    for attempt in range(6):  # safetensors' metadata map is written in per-process hash order: repeat to see it
        path = tmp_path / f"w{attempt}.safetensors"
        export_safetensors(state, path)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
