"""Image-text evaluators for R-precision and CLIP score, chosen by `evaluator_type`.

* `lit` (embedded default): LiT-style, frozen EfficientNet-Lite0 image tower and frozen
  all-MiniLM-L6-v2 text tower; only two linear projection heads (and the temperature) are
  trained, contrastively, on train-split renders and their captions.
* `clip` (research scale): OpenAI / OpenCLIP CLIP in transformers' format (`CLIPModel`
  folder: B/32, B/16, L/14) loaded from a local path.
A folder holds `evaluator.json` (type, name, settings) and the weights; every number an
evaluator produces carries its `name`.

Device and precision are arguments (params `compute`, resolved by the flows): the frozen
towers and CLIP are stored in `frozen_dtype(precision)` on the device and run under
autocast; the LiT heads keep float32 weights (and float32 Adam state while they train),
their matmuls autocast. Embeddings come back as float32 numpy arrays.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamline.atomic import write_json_atomic
from dreamline.device import autocast, frozen_dtype
from dreamline.models.sampling import place
from dreamline.registry import Registry

EVALUATORS: Registry[type] = Registry("evaluator")
CONFIG = "evaluator.json"


class LiTHeads(torch.nn.Module):
    def __init__(self, image_dim: int = 1280, text_dim: int = 384, dim: int = 256):
        super().__init__()
        self.image = torch.nn.Linear(image_dim, dim)
        self.text = torch.nn.Linear(text_dim, dim)
        self.log_scale = torch.nn.Parameter(torch.tensor(float(np.log(10.0))))

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image(image_feats), dim=-1), F.normalize(self.text(text_feats), dim=-1)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, same_text: torch.Tensor,
                     log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every caption equal to an image's own counts as its positive
    (identical captions in one batch are not negatives of each other)."""
    logits = log_scale.exp().clamp(max=100.0) * img @ txt.t()
    target = same_text.float() / same_text.float().sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target.t() * F.log_softmax(logits.t(), 1), 1).mean())


def train_heads(image_feats: np.ndarray, text_feats: np.ndarray, caption_ids: np.ndarray,
                objects: np.ndarray, dim: int, steps: int, batch: int, lr: float, seed: int,
                device: torch.device | str | None = None, precision: str = "fp32"
                ) -> tuple[LiTHeads, list[dict]]:
    """Train the projection heads (float32 weights on `device`, autocast to `precision`).
    Each batch takes one random view from each of `batch` random objects (views of one
    object are not negatives of each other); the batches are drawn on the CPU, from a CPU
    generator, whatever the device."""
    device = torch.device(device or "cpu")
    g = torch.Generator().manual_seed(seed)
    # nn.Linear initialises from the global RNG: seed a private copy of it, so the heads are a
    # function of `seed` alone (they varied between runs of the stage) and the caller's RNG
    # is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = LiTHeads(image_feats.shape[1], text_feats.shape[1], dim).to(device)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    img_all = torch.from_numpy(image_feats).float().to(device)
    txt_all = torch.from_numpy(text_feats).float().to(device)
    caption_ids = torch.from_numpy(np.asarray(caption_ids))
    uniq, obj_index = np.unique(objects, return_inverse=True)
    views_of = [np.flatnonzero(obj_index == k) for k in range(len(uniq))]
    curve = []
    for step in range(steps):
        pick = torch.randperm(len(uniq), generator=g)[:batch].numpy()
        rows = np.array([views_of[k][int(torch.randint(len(views_of[k]), (1,), generator=g))] for k in pick])
        cap = caption_ids[rows]
        with autocast(device, precision):
            img, txt = heads(img_all[torch.from_numpy(rows).to(device)], txt_all[cap.to(device)])
        same = (cap[:, None] == cap[None, :]).to(device)
        loss = contrastive_loss(img.float(), txt.float(), same, heads.log_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append({"step": step + 1, "loss": round(float(loss.detach()), 5),
                      "temperature": round(float(heads.log_scale.detach().exp()), 3)})
    return heads.eval(), curve


@EVALUATORS.register("lit")
class LiTEvaluator:
    def __init__(self, heads: LiTHeads, image_size: int, name: str, towers=None,
                 device: torch.device | str | None = None, precision: str = "fp32"):
        """`towers`: (EfficientNetLite0, MiniLMSentences) already loaded, else loaded here
        on `device` at `precision`."""
        from dreamline.evaluation.towers import EfficientNetLite0, MiniLMSentences

        self.device, self.precision = torch.device(device or "cpu"), precision
        self.heads = heads.to(self.device).eval()
        self.images, self.texts = towers or (EfficientNetLite0(image_size, self.device, precision),
                                             MiniLMSentences(device=self.device, precision=precision))
        self.name = name

    def _project(self, layer: torch.nn.Module, feats: np.ndarray) -> np.ndarray:
        with autocast(self.device, self.precision):
            out = layer(torch.from_numpy(feats).float().to(self.device)).float()
        return F.normalize(out, dim=-1).cpu().numpy()

    @torch.no_grad()
    def embed_image_features(self, feats: np.ndarray) -> np.ndarray:
        return self._project(self.heads.image, feats)

    @torch.no_grad()
    def embed_text_features(self, feats: np.ndarray) -> np.ndarray:
        return self._project(self.heads.text, feats)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        return self.embed_image_features(self.images(images)[0])

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed_text_features(self.texts(texts))

    def save(self, folder: Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.cpu() for k, v in self.heads.state_dict().items()}, str(folder / "heads.safetensors"))
        write_json_atomic(folder / CONFIG, {
            "type": "lit", "name": self.name, "image_size": self.images.image_size,
            "image_dim": self.heads.image.in_features, "text_dim": self.heads.text.in_features,
            "dim": self.heads.image.out_features, **(extra or {})})

    @classmethod
    def load(cls, folder: Path, config: dict, device: torch.device | str | None = None,
             precision: str = "fp32") -> "LiTEvaluator":
        from safetensors.torch import load_file

        heads = LiTHeads(config["image_dim"], config["text_dim"], config["dim"])
        heads.load_state_dict(load_file(str(folder / "heads.safetensors")))
        return cls(heads, config["image_size"], config["name"], device=device, precision=precision)


@EVALUATORS.register("clip")
class CLIPEvaluator:
    """A transformers CLIPModel folder (convert OpenCLIP / OpenAI checkpoints to it once)."""

    def __init__(self, folder: Path, name: str | None = None, device: torch.device | str | None = None,
                 precision: str = "fp32"):
        from transformers import CLIPModel, CLIPTokenizer

        from dreamline.models.weights import load_pretrained

        self.device, self.precision = torch.device(device or "cpu"), precision
        self.dtype = frozen_dtype(precision)
        self.model = load_pretrained(CLIPModel, folder, "evaluate.evaluator").eval().requires_grad_(False)
        place(self.model, self.device, precision)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        cfg = self.model.config.vision_config
        self.image_size = cfg.image_size
        self.name = name or f"clip:{Path(folder).name}"
        # CLIP's own preprocessing constants (OpenAI).
        self.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=self.device).reshape(1, 3, 1, 1)
        self.std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=self.device).reshape(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        x = F.interpolate(images.float().to(self.device), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        with autocast(self.device, self.precision):
            out = self.model.get_image_features(pixel_values=((x - self.mean) / self.std).to(self.dtype))
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        with autocast(self.device, self.precision):
            out = self.model.get_text_features(**tok)
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1).cpu().numpy()

    @classmethod
    def load(cls, folder: Path, config: dict, device: torch.device | str | None = None,
             precision: str = "fp32") -> "CLIPEvaluator":
        return cls(folder, config.get("name"), device=device, precision=precision)


def load_evaluator(folder: str | Path, device: torch.device | str | None = None, precision: str = "fp32"):
    """An evaluator folder: `evaluator.json` names its type; a bare transformers CLIP folder
    (config.json of model_type clip) is accepted as type `clip`. Loaded onto `device` at
    `precision` (default: the CPU at fp32)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG
    if cfg_path.is_file():
        config = json.loads(cfg_path.read_text())
    elif (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()).get("model_type") == "clip":
        config = {"type": "clip"}
    else:
        raise FileNotFoundError(f"{folder}: neither {CONFIG} nor a CLIP config.json (train the evaluator "
                                f"with the train_evaluator stage, or point at a CLIP folder)")
    return EVALUATORS.get(config["type"]).load(folder, config, device=device, precision=precision)
