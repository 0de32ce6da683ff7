"""Caption tokens for the stage-2 LLM: a BPE trained on the captions (tiny preset), token layout and labels.

The layout fixes a bug of the official code, where padding reused the EOS id and every EOS was then masked out
as padding, so the model was never taught to stop. Here every caption that fits gets an end-of-caption token
(the tokenizer's EOS) that IS supervised, and padding is found from the attention mask, never from token ids,
so it does not matter whether the pad id equals the EOS id (Qwen2.5 base: both are <|endoftext|>).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from vlv.models.config import CaptionerConfig

if TYPE_CHECKING:  # torch and transformers are imported where used, so training a tokenizer does not load torch
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endofcaption|>"
IGNORE_INDEX = -100  # labels the loss skips (torch.nn.CrossEntropyLoss default)


@dataclass
class CaptionTokens:
    input_ids: torch.Tensor  # long (B, T), right-padded
    attention_mask: torch.Tensor  # long (B, T): 1 on caption tokens and their end-of-caption token


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (tokenizers library) trained on `texts`: ids 0/1/2 = pad/bos/eos, then 256 bytes.

    Byte-level means no unknown tokens: any caption encodes and decodes losslessly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_caption_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | Path | None = None
                            ) -> PreTrainedTokenizerFast:
    """`PreTrainedTokenizerFast` (bos/eos/pad set) trained on `texts`; saved to `out_dir` when given.

    Deterministic: the same texts in the same order give the same vocabulary and merges (tested across
    processes). Reload a saved one with `PreTrainedTokenizerFast.from_pretrained(out_dir)`.
    """
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("train_caption_tokenizer needs at least one caption text")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=train_bpe(texts, vocab_size), bos_token=BOS_TOKEN,
                                        eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="right")
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_tokens: int
                      ) -> CaptionTokens:
    """Token ids + EOS per caption, right-padded to the longest in the batch.

    A caption longer than `max_tokens` is cut to `max_tokens` tokens WITHOUT an EOS: it did not end there, and
    teaching the model to stop mid-sentence would be wrong. Special-token text inside a caption is encoded as
    plain text, so a caption cannot inject an EOS.
    """
    import torch

    if tokenizer.eos_token_id is None:
        raise ValueError("the caption tokenizer has no eos_token; set one (it marks the end of every caption)")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(list(captions), add_special_tokens=False, split_special_tokens=True).input_ids
    rows = [ids[:max_tokens] if len(ids) >= max_tokens else ids + [tokenizer.eos_token_id] for ids in encoded]
    length = max((len(row) for row in rows), default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, :len(row)] = 1
    return CaptionTokens(input_ids=input_ids, attention_mask=attention_mask)


def build_caption_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Labels for [prefix][caption]: IGNORE on the prefix positions and wherever attention_mask is 0 (padding).

    Aligned with the input positions; the causal LM shifts them, so the last prefix position predicts the first
    caption token and the last caption token predicts the EOS.
    """
    import torch

    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    prefix = torch.full((input_ids.shape[0], num_prefix), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    return torch.cat([prefix, labels], dim=1)


def load_caption_tokenizer(cfg: CaptionerConfig, folder: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a stage-2 run: the Qwen one (pretrained) or the trained BPE (random init).

    Not AutoTokenizer for the BPE: beside a Qwen2 config it would wrap it as a Qwen tokenizer and add a token.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if cfg.init == "pretrained":
        return AutoTokenizer.from_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)
