"""Captions from what the object looks like: a local BLIP model over a few rendered views.

Follows Cap3D (Luo et al. 2023) in spirit: render the normalised mesh from `n_views` orbit
cameras, caption every view with BLIP, then reduce the view captions to one per object.
Cap3D picks the best of several captions per view with CLIP and merges the per-view picks
with GPT-4; neither a CLIP scorer nor an LLM is available to this pipeline, so each view gets
one greedy caption and the object gets the view caption that agrees most with the others
(`consensus_index`: the medoid under token-set Jaccard similarity). That keeps the choice
deterministic and drops views whose caption is an outlier (a top-down view read as "a
square"), but it cannot combine details seen from different sides as an LLM merge would.

The model is a transformers-format BLIP captioning folder (e.g. a saved
Salesforce/blip-image-captioning-base) at `model_path`; it is loaded on the first caption
call so that building the captioner, e.g. to validate a config, stays cheap. It runs on the
`device` at the `precision` it is given (params `compute`, passed in by the caption flow):
stored in `frozen_dtype(precision)`, generating under autocast.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from dreamline.captioning.base import CAPTIONERS, CaptionInput, Captioner, clean_name
from dreamline.captioning.configs import ImageCaptionerParams

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")
# Special tokens a tokenizer failed to flag as special ([SEP], [DEC], </s>, <pad>).
_SPECIAL = re.compile(r"\[[A-Za-z_]+\]|</?[a-z_]+>")
# Openings BLIP was trained or prompted with; they describe the picture, not the object.
_PROMPTS = ("a 3d rendering of", "a rendering of", "a picture of", "a photo of", "an image of")
# Non-words the public BLIP checkpoints emit where a caption would name a person or animal.
_ARTEFACTS = re.compile(r"\b(?:arafed|araffe|arafe|araffed)\b\s*", re.I)


def caption_tokens(caption: str) -> frozenset[str]:
    return frozenset(_WORD.findall(caption.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = a | b
    # Two empty captions agree on nothing useful; scoring them 1 would let blanks win.
    return len(a & b) / len(union) if union else 0.0


def consensus_index(captions: list[str]) -> int | None:
    """Index of the medoid caption: highest mean token-set Jaccard similarity to the others.

    Empty captions are never picked (None when all are empty) but still count as "others",
    which lowers every candidate's mean alike. Ties go to the lowest index, so the front view
    wins when nothing separates the captions.
    """
    toks = [caption_tokens(c) for c in captions]
    candidates = [i for i, t in enumerate(toks) if t]
    if not candidates:
        return None
    if len(captions) == 1:
        return 0
    best, best_score = None, -1.0
    for i in candidates:
        score = sum(jaccard(toks[i], toks[j]) for j in range(len(toks)) if j != i) / (len(toks) - 1)
        if score > best_score:  # strict: an equal later score keeps the earlier view
            best, best_score = i, score
    return best


def clean_caption(text: str) -> str:
    text = _SPECIAL.sub(" ", text)
    text = _ARTEFACTS.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    low = text.lower()
    for prompt in _PROMPTS:
        if low == prompt:
            return ""
        if low.startswith(prompt + " "):
            text = text[len(prompt) + 1:].strip()
            break
    return text.strip(" ,;:")


def _check_blip_folder(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"image captioner model not found at '{path}': set caption.captioner.model_path to a "
            "local transformers-format BLIP captioning folder (config.json, weights, processor "
            "files), e.g. one saved from Salesforce/blip-image-captioning-base")
    if not path.is_dir():
        raise ValueError(f"image captioner model_path '{path}' is a file; expected a model folder")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"'{path}' is not a transformers model folder (no config.json)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"unreadable config.json in '{path}': {e}") from None
    if model_type != "blip":
        raise ValueError(
            f"'{path}' holds a {model_type!r} model; the image captioner needs a BLIP captioning "
            "model (model_type 'blip')")


@CAPTIONERS.implements(ImageCaptionerParams)
class ImageCaptioner(Captioner):
    name = "image"

    def __init__(self, config: ImageCaptionerParams, seed: int = 0, device: str = "cpu",
                 precision: str = "fp32"):
        super().__init__(config, seed)
        self.device = str(device)
        self.precision = precision
        self._model = None
        self._processor = None

    def place(self, device, precision: str = "fp32") -> "ImageCaptioner":
        """Run on `device` at `precision` (before the model is loaded)."""
        if self._model is not None and (str(device), precision) != (self.device, self.precision):
            raise RuntimeError("image captioner: the model is already loaded on another device or precision")
        self.device, self.precision = str(device), precision
        return self

    @property
    def model_path(self) -> Path:
        return Path(self.config.model_path).expanduser()

    def load(self) -> None:
        """Load model and processor now; callers wanting to fail fast can call this early."""
        if self._model is not None:
            return
        path = self.model_path
        _check_blip_folder(path)
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from dreamline.models.weights import load_pretrained

        from dreamline.device import frozen_dtype

        try:
            processor = BlipProcessor.from_pretrained(str(path))
            # Whatever the checkpoint's dtype: the compute precision's (fp32 by default).
            model = load_pretrained(BlipForConditionalGeneration, path, "caption.captioner.model_path",
                                    dtype=frozen_dtype(self.precision))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"could not load a BLIP captioner from '{path}': {e}") from None
        self._model = model.to(self.device).eval()
        self._processor = processor

    def caption_views(self, views) -> list[str]:
        """Cleaned greedy caption for each image (HxWx3 uint8), all views in one batch."""
        import torch
        from PIL import Image

        from dreamline.device import autocast

        self.load()
        images = [Image.fromarray(v).convert("RGB") for v in views]
        inputs = self._processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self._model.dtype)
        # Greedy decoding draws no random numbers; the seeded, forked RNG only guards against a
        # checkpoint's generation config turning sampling back on, without touching the caller's.
        with torch.no_grad(), torch.random.fork_rng(devices=[]), autocast(torch.device(self.device), self.precision):
            torch.manual_seed(self.seed)
            out = self._model.generate(pixel_values=pixel_values, do_sample=False, num_beams=1,
                                       max_new_tokens=self.config.max_new_tokens)
        texts = self._processor.batch_decode(out, skip_special_tokens=True)
        return [clean_caption(t) for t in texts]

    def caption_one(self, item: CaptionInput) -> str:
        fallback = clean_name(item.name) or "object"
        if item.mesh_path is None:
            log.warning("image captioner: %s has no mesh; using its name", item.uid)
            return fallback
        from dreamline.rendering.quick_views import render_views

        views = render_views(item.mesh_path, self.config.n_views, self.config.resolution,
                             self.config.elevation_deg)
        captions = self.caption_views(views)
        pick = consensus_index(captions)
        return captions[pick] if pick is not None else fallback

    def caption(self, items: list[CaptionInput]) -> list[str]:
        return [self.caption_one(i) for i in items]
