"""The `train_evaluator` stage's work: LiT projection heads on train-split renders and
captions (each view in colour and, with `textureless_views`, shaded textureless as well),
with held-out (val) retrieval against every val caption as the check, for both kinds."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dreamline.config import EvaluatorParams
from dreamline.evaluation.evaluator import LiTEvaluator, train_heads
from dreamline.evaluation.metrics import r_precision
from dreamline.evaluation.textureless import textureless_views
from dreamline.evaluation.towers import FEATURE_NET, EfficientNetLite0, MiniLMSentences
from dreamline.training.common import (LIVE_DIR, fresh_folder, renders_digest, replace_folder, write_dvclive,
                                       write_summary)
from dreamline.training.data import load_views

WHITE = torch.ones(3)


def real_views(renders: Path, captions: Path, resolution: int, split: str, kinds=("mv", "agp")):
    """(rows, images in [0, 1] over white) of one split's views; the rows keep the render
    index's columns (camera, file paths) for textureless_views."""
    table = load_views(renders, captions, resolution, kinds=kinds, splits=(split,))
    images = (table.rgb(np.arange(len(table)), WHITE) + 1.0) / 2.0
    return table.rows.reset_index(drop=True), images


def _retrieval(img_emb: np.ndarray, rows, texts: list[str], text_emb: np.ndarray) -> dict:
    index = {t: i for i, t in enumerate(texts)}
    return r_precision(img_emb, text_emb, np.array([index[c] for c in rows["caption"]]))


def train_evaluator(p: EvaluatorParams, renders: Path, captions: Path, out_dir: Path, log=print,
                    device: torch.device | str | None = None, precision: str = "fp32") -> dict:
    """Frozen towers on `device` in frozen_dtype(precision), float32 heads trained under
    autocast; the device goes to the untracked run.json only."""
    from dreamline.device import describe

    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    towers_img = EfficientNetLite0(p.image_size, device, precision)
    towers_txt = MiniLMSentences(device=device, precision=precision)
    splits, geo = {}, {}
    for split in ("train", "val"):
        rows, images = real_views(renders, captions, p.render_resolution, split)
        feats, _ = towers_img(images)
        texts = sorted(set(rows["caption"]))
        splits[split] = (rows, feats, texts, towers_txt(texts))
        if p.textureless_views:
            geo[split] = towers_img(textureless_views(renders, rows, p.render_resolution))[0]
        log(f"evaluator: {split}: {len(rows)} views{' (+ textureless)' * p.textureless_views}, "
            f"{len(texts)} captions")
    rows, feats, texts, text_feats = splits["train"]
    caption_id = np.array([texts.index(c) for c in rows["caption"]])
    uids = rows["uid"].to_numpy()
    if p.textureless_views:
        # The textureless views join their object's views: a batch draws one view of an object,
        # colour or textureless, so the two kinds of one object are never each other's negatives.
        feats, caption_id, uids = (np.concatenate([feats, geo["train"]]), np.concatenate([caption_id, caption_id]),
                                   np.concatenate([uids, uids]))
    heads, curve = train_heads(feats, text_feats, caption_id, uids, p.dim, p.steps,
                               p.batch_size, p.lr, p.seed, device=device, precision=precision)
    name = f"lit-minilm-effnetlite0:{renders_digest(renders)[:8]}"
    evaluator = LiTEvaluator(heads, p.image_size, name, towers=(towers_img, towers_txt), device=device,
                             precision=precision)

    heldout = {}
    for split, (rows_s, feats_s, texts_s, tfeats_s) in splits.items():
        img_emb = evaluator.embed_image_features(feats_s)
        txt_emb = evaluator.embed_text_features(tfeats_s)
        scores = _retrieval(img_emb, rows_s, texts_s, txt_emb)
        scores["chance_R@1"] = round(1.0 / len(texts_s), 5)
        if split in geo:
            scores["textureless"] = _retrieval(evaluator.embed_image_features(geo[split]), rows_s, texts_s, txt_emb)
        heldout[split] = scores
    tmp = fresh_folder(out_dir)
    trained_on = "train split renders" + (" (colour and textureless)" if p.textureless_views else "") + " + captions"
    evaluator.save(tmp, {"feature_net": FEATURE_NET, "trained_on": trained_on})
    write_dvclive(curve, tmp / LIVE_DIR)   # train/loss, train/temperature per step
    summary = {"evaluator": name, "feature_net": FEATURE_NET, "retrieval": heldout, "steps": p.steps}
    write_summary(tmp, summary)
    from dreamline.runinfo import record_run

    record_run(tmp, "train_evaluator", {"seconds": round(time.perf_counter() - t0, 2),
                                        **describe(device, precision)})
    replace_folder(tmp, out_dir)
    log(f"evaluator {name}: val R@1 {heldout['val']['R@1']:.3f} (chance {heldout['val']['chance_R@1']:.3f})")
    return summary
