"""Metrics as pure functions of embeddings, features and class posteriors (SPEC.md §7).

Every aggregate can come with its sample count and a bootstrap interval (`bootstrap_ci`).
"""
from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def retrieval_ranks(image_emb: np.ndarray, text_emb: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each image's true caption among ALL captions (the distractors
    included) by cosine similarity. image_emb (N, D), text_emb (M, D), true_index (N,)."""
    sims = _unit(image_emb) @ _unit(text_emb).T
    true_index = np.asarray(true_index)
    if len(true_index) != len(sims):
        raise ValueError(f"{len(true_index)} true indices for {len(sims)} images")
    if text_emb.shape[0] < 2:
        raise ValueError("R-precision needs distractor captions: got one caption")
    true = sims[np.arange(len(sims)), true_index][:, None]
    # Ties count against the true caption: a constant model must not score R@1 = 1.
    return (sims >= true).sum(axis=1)


def r_precision(image_emb, text_emb, true_index, ks=(1, 5)) -> dict:
    """R@k: share of images whose true caption is among the top k of all captions."""
    ranks = retrieval_ranks(image_emb, text_emb, true_index)
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out["n_images"] = int(len(ranks))
    out["n_captions"] = int(np.asarray(text_emb).shape[0])
    return out


def clip_score(image_emb, text_emb_paired) -> np.ndarray:
    """Per pair 100 * max(cos, 0) (Hessel et al.'s CLIPScore with w = 1, as MVDream reports)."""
    cos = (_unit(image_emb) * _unit(text_emb_paired)).sum(axis=1)
    return 100.0 * np.clip(cos, 0.0, None)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    from scipy import linalg

    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("FID needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():
        # Singular products (fewer samples than dimensions): regularise as pytorch-fid does.
        eps = np.eye(s_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def kernel_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """KID: the unbiased MMD^2 between two feature sets under the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3. Unlike FID it has no bias in the sample count, so it stays
    meaningful when a set has fewer samples than feature dimensions."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
                 - 2.0 * k_ab.mean())


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) from class posteriors (N, C); mean and std over splits."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part.clip(1e-12)) - np.log(marginal.clip(1e-12)))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def bootstrap_ci(values, statistic=np.mean, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over independent units `values`."""
    v = np.asarray(values)
    if len(v) == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(v[rng.integers(0, len(v), len(v))]) for _ in range(n_resamples)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
