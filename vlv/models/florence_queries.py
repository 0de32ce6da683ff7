"""Stage-1 image encoder: Florence-2 with 77 learned queries in place of its decoder's token inputs.

Data flow (transformers' native `Florence2Model`):
  pixels -> DaViT vision tower -> multi-modal projector (image projection + norm + position embeddings)
         -> visual tokens, concatenated with the embedded task prompt (`<MORE_DETAILED_CAPTION>` expanded to
            its instruction text, between <s> and </s>, as Florence2Processor does)
         -> Florence's transformer ENCODER
  77 learned queries (1, 77, d_model) -> Florence's transformer DECODER (causal self-attention, cross-attends
         to the encoder states) -> (B, 77, d_model) -> projection Linear -> GELU -> Linear -> z (B, 77, D_clip).

Trainable: the transformer encoder + decoder + shared embeddings (`florence.language_model`), the queries and
the projection. Frozen (no grads): the vision tower and the multi-modal projector. The official code trains with
the whole model in train mode, so DaViT's stochastic depth (drop path up to 0.1) perturbs the frozen tower's
features during training; `frozen_vision_train_mode` keeps that (True) or puts the frozen parts in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from vlv.models.arch_configs import florence_config
from vlv.models.clip_text import build_clip_tokenizer
from vlv.models.config import FLORENCE_CAPTION_TASKS
from vlv.models.loading import InitMode, freeze, require_weights, seeded_init, unique_parameters

# Florence2Processor.task_prompts_without_inputs, for the caption tasks the recipe can use.
FLORENCE_TASK_PROMPTS = {
    "<CAPTION>": "What does the image describe?",
    "<DETAILED_CAPTION>": "Describe in detail what is shown in the image.",
    "<MORE_DETAILED_CAPTION>": "Describe with a paragraph what is shown in the image.",
}
assert tuple(FLORENCE_TASK_PROMPTS) == FLORENCE_CAPTION_TASKS


class CaptionProjection(nn.Sequential):
    """Linear(d_in, d_out) -> GELU -> Linear(d_out, d_out): Florence decoder width -> CLIP text input width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class FlorenceQueryEncoder(nn.Module):
    def __init__(self, florence, prompt_ids: list[int], *, num_queries: int, out_dim: int, query_init_std: float,
                 frozen_vision_train_mode: bool):
        super().__init__()
        self.florence = florence  # transformers Florence2Model
        self.frozen_vision_train_mode = frozen_vision_train_mode
        d_model = florence.config.text_config.d_model
        self.queries = nn.Parameter(torch.randn(1, num_queries, d_model) * query_init_std)
        self.projection = CaptionProjection(d_model, out_dim)
        # Rebuilt from the tokenizer at every build, so not part of checkpoints.
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)
        for frozen in self.frozen_modules():
            freeze(frozen)

    @property
    def num_queries(self) -> int:
        return self.queries.shape[1]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.florence.vision_tower, self.florence.multi_modal_projector]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return unique_parameters([self.florence.language_model, self.queries, self.projection])

    def train(self, mode: bool = True) -> FlorenceQueryEncoder:
        super().train(mode)
        for frozen in self.frozen_modules():
            frozen.train(mode and self.frozen_vision_train_mode)  # weights stay frozen either way
        return self

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen part: (B, N_visual, d_model). No autograd graph is kept (nothing below it trains)."""
        with torch.no_grad():
            dtype = self.florence.vision_tower.convs[0].conv.weight.dtype
            # DeepSpeed's bf16 casts parameters only; the projector's float32 cosine-embedding buffer would then turn
            # the bf16 features float32 ahead of a bf16 Linear. Buffers follow the weights' dtype.
            for module in self.frozen_modules():
                for buffer in module.buffers():
                    if buffer.is_floating_point() and buffer.dtype != dtype:
                        buffer.data = buffer.data.to(dtype)
            return self.florence.get_image_features(pixel_values.to(dtype)).pooler_output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Florence-normalised pixels (B, 3, S, S) -> caption embeddings z (B, num_queries, out_dim)."""
        language_model = self.florence.language_model
        batch = pixel_values.shape[0]
        prompt = language_model.get_input_embeddings()(self.prompt_ids)
        visual = self.visual_tokens(pixel_values).to(prompt.dtype)
        encoder_inputs = torch.cat([visual, prompt.unsqueeze(0).expand(batch, -1, -1)], dim=1)
        encoder_states = language_model.encoder(inputs_embeds=encoder_inputs).last_hidden_state
        queries = self.queries.to(prompt.dtype).expand(batch, -1, -1)
        decoded = language_model.decoder(inputs_embeds=queries, encoder_hidden_states=encoder_states,
                                         use_cache=False).last_hidden_state
        return self.projection(decoded)


def florence_prompt_ids(tokenizer, task_prompt: str) -> list[int]:
    """Token ids of `<s>` + instruction + `</s>`, the text part Florence2Processor builds for a task token."""
    if task_prompt not in FLORENCE_TASK_PROMPTS:
        raise ValueError(f"unknown Florence task prompt {task_prompt!r}; allowed: {', '.join(FLORENCE_TASK_PROMPTS)}")
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ValueError("the Florence prompt tokenizer needs bos and eos tokens")
    text = tokenizer.bos_token + FLORENCE_TASK_PROMPTS[task_prompt] + tokenizer.eos_token
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def load_florence(*, arch: str, weights: str | None, init: InitMode, seed: int,
                  weights_field: str = "florence_weights"):
    """(Florence2Model, prompt tokenizer). Pretrained: the checkpoint's own tokenizer. Random: the CLIP BPE
    built offline (Florence's BART vocabulary does not ship with any installed package)."""
    from transformers import AutoTokenizer, Florence2ForConditionalGeneration

    if init == "random":
        with seeded_init(seed):
            florence = Florence2ForConditionalGeneration(florence_config(arch)).model
        tokenizer = build_clip_tokenizer()
        if len(tokenizer) > florence.config.text_config.vocab_size:
            raise ValueError(f"florence arch {arch!r} has vocab_size {florence.config.text_config.vocab_size}, "
                             f"too small for the offline prompt tokenizer ({len(tokenizer)} ids)")
        return florence, tokenizer
    path = require_weights(weights, weights_field, "the transformers-native Florence-2-large checkpoint "
                           "(florence-community/Florence-2-large; the remote-code microsoft/Florence-2-large "
                           "layout does not load into transformers' Florence2 classes)")
    check_native_florence_checkpoint(path, weights_field)
    full, info = Florence2ForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    missing = [key for key in info.get("missing_keys", []) if "lm_head" not in key]
    if missing:
        raise ValueError(f"{weights_field}={path!r} is not a transformers-native Florence-2 checkpoint: "
                         f"{len(missing)} weights missing (e.g. {missing[0]}). {FLORENCE_CONVERSION_HINT}")
    return full.model, AutoTokenizer.from_pretrained(path)


FLORENCE_CONVERSION_HINT = (
    "Use florence-community/Florence-2-large (the transformers-native conversion: vocabulary 51,289 + the <image> "
    "token, padded to 51,328), or convert a remote-code checkpoint with convert_florence2_original_pytorch_to_hf.py "
    "from transformers' source tree (src/transformers/models/florence2/): python "
    "convert_florence2_original_pytorch_to_hf.py --hf_model_id <remote-code folder or hub id> "
    "--pytorch_dump_folder_path <new folder>, then point the setting at the new folder"
)


def check_native_florence_checkpoint(path: str, weights_field: str) -> None:
    """Refuse the remote-code layout (microsoft/Florence-2-*, loaded with trust_remote_code) from its config alone,
    before transformers tries to load its weights into classes they do not fit."""
    from transformers import PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(path)
    except OSError:
        return  # no readable config.json: from_pretrained names what is missing
    vision_type = (raw.get("vision_config") or {}).get("model_type")
    if "auto_map" in raw or vision_type == "davit":
        raise ValueError(
            f"{weights_field}={path!r} is a remote-code Florence-2 checkpoint (the microsoft/Florence-2-large layout, "
            f"run with trust_remote_code: {'auto_map in config.json' if 'auto_map' in raw else 'DaViT vision_config'}"
            f"), which transformers' native Florence2 classes used here do not load. {FLORENCE_CONVERSION_HINT}")


def build_florence_query_encoder(*, arch: str, weights: str | None, init: InitMode, seed: int, num_queries: int,
                                 out_dim: int, query_init_std: float, task_prompt: str,
                                 frozen_vision_train_mode: bool) -> FlorenceQueryEncoder:
    florence, tokenizer = load_florence(arch=arch, weights=weights, init=init, seed=seed)
    prompt_ids = florence_prompt_ids(tokenizer, task_prompt)
    with seeded_init(seed + 1):  # queries and projection are new in both modes
        return FlorenceQueryEncoder(florence, prompt_ids, num_queries=num_queries, out_dim=out_dim,
                                    query_init_std=query_init_std, frozen_vision_train_mode=frozen_vision_train_mode)
