"""Image-text evaluators for R-precision and CLIP score, chosen by `evaluator_type`.

* `lit` (embedded default): LiT-style, frozen EfficientNet-Lite0 image tower and frozen
  all-MiniLM-L6-v2 text tower; only two linear projection heads (and the temperature) are
  trained, contrastively, on train-split renders and their captions.
* `clip` (research scale): OpenAI / OpenCLIP CLIP in transformers' format (`CLIPModel`
  folder: B/32, B/16, L/14) loaded from a local path.
A folder holds `evaluator.json` (type, name, settings) and the weights; every number an
evaluator produces carries its `name`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamline.atomic import write_json_atomic
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
                objects: np.ndarray, dim: int, steps: int, batch: int, lr: float, seed: int
                ) -> tuple[LiTHeads, list[dict]]:
    """Train the projection heads. Each batch takes one random view from each of `batch`
    random objects (views of one object are not negatives of each other)."""
    g = torch.Generator().manual_seed(seed)
    # nn.Linear initialises from the global RNG: seed a private copy of it, so the heads are a
    # function of `seed` alone (they varied between runs of the stage) and the caller's RNG
    # is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = LiTHeads(image_feats.shape[1], text_feats.shape[1], dim)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    img_all = torch.from_numpy(image_feats).float()
    txt_all = torch.from_numpy(text_feats).float()
    caption_ids = torch.from_numpy(np.asarray(caption_ids))
    uniq, obj_index = np.unique(objects, return_inverse=True)
    views_of = [np.flatnonzero(obj_index == k) for k in range(len(uniq))]
    curve = []
    for step in range(steps):
        pick = torch.randperm(len(uniq), generator=g)[:batch].numpy()
        rows = np.array([views_of[k][int(torch.randint(len(views_of[k]), (1,), generator=g))] for k in pick])
        cap = caption_ids[rows]
        img, txt = heads(img_all[rows], txt_all[cap])
        loss = contrastive_loss(img, txt, cap[:, None] == cap[None, :], heads.log_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append({"step": step + 1, "loss": round(float(loss.detach()), 5),
                      "temperature": round(float(heads.log_scale.detach().exp()), 3)})
    return heads.eval(), curve


@EVALUATORS.register("lit")
class LiTEvaluator:
    def __init__(self, heads: LiTHeads, image_size: int, name: str, towers=None):
        """`towers`: (EfficientNetLite0, MiniLMSentences) already loaded, else loaded here."""
        from dreamline.evaluation.towers import EfficientNetLite0, MiniLMSentences

        self.heads = heads.eval()
        self.images, self.texts = towers or (EfficientNetLite0(image_size), MiniLMSentences())
        self.name = name

    @torch.no_grad()
    def embed_image_features(self, feats: np.ndarray) -> np.ndarray:
        return F.normalize(self.heads.image(torch.from_numpy(feats).float()), dim=-1).numpy()

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        return self.embed_image_features(self.images(images)[0])

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return F.normalize(self.heads.text(torch.from_numpy(self.texts(texts)).float()), dim=-1).numpy()

    def save(self, folder: Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.heads.state_dict(), str(folder / "heads.safetensors"))
        write_json_atomic(folder / CONFIG, {
            "type": "lit", "name": self.name, "image_size": self.images.image_size,
            "image_dim": self.heads.image.in_features, "text_dim": self.heads.text.in_features,
            "dim": self.heads.image.out_features, **(extra or {})})

    @classmethod
    def load(cls, folder: Path, config: dict) -> "LiTEvaluator":
        from safetensors.torch import load_file

        heads = LiTHeads(config["image_dim"], config["text_dim"], config["dim"])
        heads.load_state_dict(load_file(str(folder / "heads.safetensors")))
        return cls(heads, config["image_size"], config["name"])


@EVALUATORS.register("clip")
class CLIPEvaluator:
    """A transformers CLIPModel folder (convert OpenCLIP / OpenAI checkpoints to it once)."""

    def __init__(self, folder: Path, name: str | None = None):
        from transformers import CLIPModel, CLIPTokenizer

        from dreamline.models.weights import load_pretrained

        self.model = load_pretrained(CLIPModel, folder, "evaluate.evaluator").eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        cfg = self.model.config.vision_config
        self.image_size = cfg.image_size
        self.name = name or f"clip:{Path(folder).name}"
        # CLIP's own preprocessing constants (OpenAI).
        self.mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
        self.std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        out = self.model.get_image_features(pixel_values=(x - self.mean) / self.std)
        out = getattr(out, "pooler_output", out)
        return F.normalize(out, dim=-1).numpy()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(**tok)
        out = getattr(out, "pooler_output", out)
        return F.normalize(out, dim=-1).numpy()

    @classmethod
    def load(cls, folder: Path, config: dict) -> "CLIPEvaluator":
        return cls(folder, config.get("name"))


def load_evaluator(folder: str | Path):
    """An evaluator folder: `evaluator.json` names its type; a bare transformers CLIP folder
    (config.json of model_type clip) is accepted as type `clip`."""
    folder = Path(folder)
    cfg_path = folder / CONFIG
    if cfg_path.is_file():
        config = json.loads(cfg_path.read_text())
    elif (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()).get("model_type") == "clip":
        config = {"type": "clip"}
    else:
        raise FileNotFoundError(f"{folder}: neither {CONFIG} nor a CLIP config.json (train the evaluator "
                                f"with the train_evaluator stage, or point at a CLIP folder)")
    return EVALUATORS.get(config["type"]).load(folder, config)
