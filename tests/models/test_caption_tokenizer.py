"""Caption tokenizer training (deterministic), the token layout and the labels (EOS supervised, pad masked)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import torch

from vlv.models.caption_tokenizer import (
    IGNORE_INDEX,
    build_caption_labels,
    tokenize_captions,
    train_caption_tokenizer,
)
from vlv.testing.builders import CAPTIONS

_TRAIN_IN_SUBPROCESS = (
    "import hashlib, json, sys; from vlv.models.caption_tokenizer import train_bpe; "
    "print(hashlib.sha256(train_bpe(json.load(sys.stdin), 400).to_str().encode()).hexdigest())"
)


def test_training_is_deterministic_across_processes():
    """Rust hash maps are seeded per process, so determinism must hold across processes, not just within one."""
    digests = {subprocess.run([sys.executable, "-c", _TRAIN_IN_SUBPROCESS], input=json.dumps(CAPTIONS),
                              capture_output=True, text=True, check=True).stdout.strip() for _ in range(3)}
    from vlv.models.caption_tokenizer import train_bpe

    digests.add(hashlib.sha256(train_bpe(CAPTIONS, 400).to_str().encode()).hexdigest())
    assert len(digests) == 1


def test_trained_tokenizer_special_ids_round_trip_and_reload(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = train_caption_tokenizer(CAPTIONS, 400, tmp_path)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert 300 < len(tokenizer) <= 400
    text = "A lighthouse, ünïcödé & emoji 🚗 never seen in training."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text  # byte-level: lossless on unseen text
    reloaded = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert reloaded(text, add_special_tokens=False).input_ids == ids
    assert reloaded.eos_token_id == 2 and reloaded.pad_token_id == 0


def test_layout_appends_eos_pads_right_and_truncates_without_eos():
    tokenizer = train_caption_tokenizer(CAPTIONS, 400)
    short, long = "A red car.", CAPTIONS[1]
    long_ids = tokenizer(long, add_special_tokens=False).input_ids
    tokens = tokenize_captions(tokenizer, [short, long], max_tokens=len(long_ids) + 1)
    short_ids = tokenizer(short, add_special_tokens=False).input_ids
    assert tokens.input_ids[0, :len(short_ids) + 1].tolist() == short_ids + [2]
    assert tokens.input_ids[1].tolist() == long_ids + [2]
    assert tokens.attention_mask[0].tolist() == [1] * (len(short_ids) + 1) + [0] * (len(long_ids) - len(short_ids))
    assert (tokens.input_ids[0, len(short_ids) + 1:] == 0).all()  # pad id
    cut = tokenize_captions(tokenizer, [long], max_tokens=5)
    assert cut.input_ids[0].tolist() == long_ids[:5] and 2 not in cut.input_ids[0].tolist()


def test_caption_text_cannot_inject_an_eos():
    tokenizer = train_caption_tokenizer(CAPTIONS, 400)
    tokens = tokenize_captions(tokenizer, ["A cat <|endofcaption|> sits."], max_tokens=64)
    ids = tokens.input_ids[0].tolist()
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id


def test_labels_ignore_prefix_and_padding_and_supervise_eos_even_when_pad_is_eos():
    tokenizer = train_caption_tokenizer(CAPTIONS, 400)
    tokenizer.pad_token = tokenizer.eos_token  # the Qwen2.5 base situation: pad id == eos id
    tokens = tokenize_captions(tokenizer, ["A red car.", CAPTIONS[0]], max_tokens=64)
    labels = build_caption_labels(tokens.input_ids, tokens.attention_mask, num_prefix=77)
    assert labels.shape == (2, 77 + tokens.input_ids.shape[1])
    assert (labels[:, :77] == IGNORE_INDEX).all()
    for row in range(2):
        length = int(tokens.attention_mask[row].sum())
        caption_labels = labels[row, 77:]
        assert caption_labels[:length].tolist() == tokens.input_ids[row, :length].tolist()
        assert caption_labels[length - 1].item() == tokenizer.eos_token_id  # EOS supervised
        assert (caption_labels[length:] == IGNORE_INDEX).all()  # padding (same id as EOS) is not
    assert int((labels == tokenizer.eos_token_id).sum()) == 2
    assert torch.equal(tokens.attention_mask.bool(), labels[:, 77:] != IGNORE_INDEX)
