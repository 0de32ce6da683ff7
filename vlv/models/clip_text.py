"""The frozen CLIP text encoder of SD 2.1, run on input EMBEDDINGS instead of token ids, and its tokenizer.

Stage 1 feeds its 77 projected vectors where token embeddings would go: position embeddings are added, all
layers run with the causal mask, then the final LayerNorm. That last hidden state is what the UNet
cross-attends to, exactly as for a text prompt. transformers' `CLIPTextModel.forward` only takes ids, so
`ClipTextOnEmbeddings.forward` repeats its body from the embedding lookup on (checked equal in the tests).

The tokenizer is only needed for the empty prompt (classifier-free guidance). It is built offline from the BPE
file that ships inside open_clip, the same vocabulary SD 2.1's OpenCLIP ViT-H text tower was trained with.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from vlv.models.arch_configs import clip_text_config
from vlv.models.loading import InitMode, freeze, require_weights, seeded_init

CLIP_CONTEXT_LENGTH = 77
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# SD 2.x's tokenizer pads with "!" (id 0), as OpenCLIP did in training; SD 1.x padded with the EOS token.
SD2_PAD = "!"
_NUM_MERGES = 49152 - 256 - 2  # open_clip.tokenizer.SimpleTokenizer reads this many merges


class ClipTextOnEmbeddings(nn.Module):
    """CLIPTextModel whose input is (B, 77, D) embeddings; `forward` returns the last hidden state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        max_len = self.model.config.max_position_embeddings
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[1] > max_len or inputs_embeds.shape[2] != self.hidden_size:
            raise ValueError(f"CLIP text encoder expects (batch, <= {max_len}, {self.hidden_size}) embeddings; "
                             f"got {tuple(inputs_embeds.shape)}")
        hidden = self.model.embeddings(inputs_embeds=inputs_embeds)  # adds position embeddings
        mask = create_causal_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = self.model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return self.model.final_layer_norm(hidden)

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings.token_embedding(input_ids)

    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The ordinary text path (a tokenised prompt) -> last hidden state."""
        return self.model(input_ids=input_ids).last_hidden_state

    @torch.no_grad()
    def empty_prompt_embedding(self, tokenizer) -> torch.Tensor:
        """(1, 77, D): the unconditional embedding SD 2.1 uses for classifier-free guidance."""
        ids = tokenizer([""], padding="max_length", max_length=CLIP_CONTEXT_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        return self.encode_ids(ids.to(self.model.device))


def build_clip_text_encoder(*, arch: str, weights: str | None, init: InitMode, seed: int,
                            weights_field: str = "sd_weights") -> ClipTextOnEmbeddings:
    """Frozen CLIP text encoder: `<weights>/text_encoder` (diffusers layout) or seeded random init of `arch`."""
    from transformers import CLIPTextModel

    if init == "pretrained":
        path = require_weights(weights, weights_field, "the Stable Diffusion 2.1 base folder "
                               "(stabilityai/stable-diffusion-2-1-base, with a text_encoder/ subfolder)")
        model = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    else:
        with seeded_init(seed):
            model = CLIPTextModel(clip_text_config(arch))
    encoder = ClipTextOnEmbeddings(model)
    freeze(encoder)
    return encoder


def open_clip_bpe_path() -> Path:
    """open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`, found without importing open_clip (slow import)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("open_clip is not installed; it ships the CLIP BPE vocabulary (pip install open-clip-torch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ValueError(f"open_clip's BPE vocabulary is missing at {path}; reinstall open-clip-torch")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character table of GPT-2 / CLIP BPE (as open_clip.tokenizer has it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    byte_values = printable[:]
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(code) for code in codes)))


@lru_cache(maxsize=1)
def _open_clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """vocab and merges exactly as open_clip.tokenizer.SimpleTokenizer builds them, with HF's special names."""
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:_NUM_MERGES + 1])
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer(out_dir: str | Path | None = None, pad_token: str = SD2_PAD):
    """transformers CLIPTokenizer from open_clip's bundled BPE; writes vocab.json/merges.txt to `out_dir` if given.

    Without `out_dir` nothing touches the disk. With it, the folder is a normal tokenizer folder that
    `CLIPTokenizer.from_pretrained(out_dir)` reads back (no download).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _open_clip_vocab()
    kwargs = dict(bos_token=CLIP_BOS, eos_token=CLIP_EOS, unk_token=CLIP_EOS, pad_token=pad_token,
                  model_max_length=CLIP_CONTEXT_LENGTH)
    if out_dir is None:
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(merge) for merge in merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(out), **kwargs)
