"""Tokenizers in the real formats of Florence-2 (BART), Qwen2.5 (Qwen2) and T5, trained offline on a small corpus.

No model hub: each vocabulary is learned here with the `tokenizers` library, with the pre-tokenizer, special tokens
and id layout of the real one, and saved the way the real checkpoint ships it, so `AutoTokenizer` (and
`Florence2Processor`) load it exactly as they load the published files:
- BART / Florence-2: byte-level BPE, `<s> <pad> </s> <unk>` = ids 0-3, `<mask>` after the BPE vocabulary, then
  Florence's 1024 task and location tokens, then `<image>` (the processor's image token) last;
  vocab.json + merges.txt + tokenizer.json + tokenizer_config.json.
- Qwen2: Qwen's split regex + byte-level BPE, then its 22 added tokens from `<|endoftext|>` (eos and pad, no bos);
  vocab.json + merges.txt + tokenizer.json + tokenizer_config.json.
- T5 (SD 3.5's third text encoder): a Unigram model with `<pad> </s> <unk>` = ids 0-2 and 100 sentinel tokens.
Training is deterministic: the same corpus gives the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlv.data.caption_requests import CAPTION_PROMPT
from vlv.data.caption_synthetic import describe_image
from vlv.data.loopback_site import PHOTO_SOURCES
from vlv.eval.vqa_prompts import INSTRUCTION
from vlv.models.florence_queries import FLORENCE_TASK_PROMPTS
from vlv.paper_mini.eval_data import all_texts

BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# Florence2Processor's added tokens (task markers, 1000 location bins, region markers), in the published order.
FLORENCE_TOKENS = (("<od>", "</od>", "<ocr>", "</ocr>") + tuple(f"<loc_{i}>" for i in range(1000))
                   + ("<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
                      "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
                      "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"))
FLORENCE_IMAGE_TOKEN = "<image>"
# Qwen2.5's added tokens after its BPE vocabulary: the first 14 are special, the last 8 plain added tokens.
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>")
QWEN_MODEL_MAX_LENGTH = 131072  # Qwen2.5's tokenizer_config.json


def corpus(seed: int) -> list[str]:
    """The training text: photo alt texts, Gemini-style captions of them, the prompts, the eval sets' text."""
    rng = random.Random(seed)
    texts = [caption for source in PHOTO_SOURCES for caption in source.captions]
    texts += [describe_image(caption, rng) for caption in list(texts) for _ in range(12)]
    texts += list(FLORENCE_TASK_PROMPTS.values()) + [INSTRUCTION, CAPTION_PROMPT] + all_texts()
    return texts


def _train_bpe(texts: list[str], vocab_size: int, pre_tokenizer, special_tokens: list[str], normalizer=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    vocab = tokenizer.get_vocab()
    if len(vocab) != vocab_size:
        raise RuntimeError(f"the offline BPE reached {len(vocab)} tokens, not {vocab_size}: the corpus is too small")
    merges = [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    return dict(sorted(vocab.items(), key=lambda item: item[1])), merges


def _write_vocab_files(out: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """vocab.json + merges.txt, the GPT-2-style files BART and Qwen checkpoints ship beside tokenizer.json."""
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")


def write_florence_tokenizer(out_dir: Path, texts: list[str], bpe_size: int) -> int:
    """A BART tokenizer with Florence-2's added tokens and `<image>`; returns the image token's id."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import AutoTokenizer, BartTokenizer

    vocab, merges = _train_bpe(texts, bpe_size, pre_tokenizers.ByteLevel(add_prefix_space=False),
                               list(BART_SPECIALS))
    vocab["<mask>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(FLORENCE_TOKENS),
                              model_max_length=1024)
    tokenizer.add_tokens([AddedToken(FLORENCE_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    _write_vocab_files(out_dir, vocab, merges)
    config_path = out_dir / "tokenizer_config.json"  # the processor finds its image token by this name
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["image_token"] = FLORENCE_IMAGE_TOKEN
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    assert reloaded.image_token_id == len(vocab) + len(FLORENCE_TOKENS), "the <image> token comes last"
    return int(reloaded.image_token_id)


def write_qwen_tokenizer(out_dir: Path, texts: list[str], bpe_size: int) -> int:
    """A Qwen2 tokenizer (Qwen2.5 base layout: eos = pad = <|endoftext|>, no bos); returns the eos id."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    vocab, merges = _train_bpe(texts, bpe_size, pre_tokenizer, [], normalizer=normalizers.NFC())
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                               eos_token=QWEN_SPECIAL[0], pad_token=QWEN_SPECIAL[0],
                               extra_special_tokens=list(QWEN_SPECIAL[1:]), model_max_length=QWEN_MODEL_MAX_LENGTH,
                               errors="replace", clean_up_tokenization_spaces=False, split_special_tokens=False)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in QWEN_ADDED])
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    _write_vocab_files(out_dir, vocab, merges)
    assert tokenizer.eos_token_id == bpe_size and len(tokenizer) == bpe_size + len(QWEN_SPECIAL) + len(QWEN_ADDED)
    return int(tokenizer.eos_token_id)


def write_t5_tokenizer(out_dir: Path, texts: list[str], vocab_size: int) -> int:
    """A T5 tokenizer (Unigram, Metaspace, 100 sentinels); returns its length."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    unigram.train_from_iterator(texts, trainer=trainer)
    # Unigram training runs threads whose float sums differ in the last digits from run to run, and it gives the
    # characters it adds for coverage scores in hash order: rounded to 0.01 and sorted (the three specials stay
    # ids 0-2), the pieces and so the files are the same every time.
    pieces = [(piece, round(score, 2)) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    pieces = pieces[:3] + sorted(pieces[3:], key=lambda entry: (-entry[1], entry[0]))
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=100, model_max_length=512)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return len(tokenizer)
