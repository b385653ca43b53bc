"""Metrics on planted cases whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest

from dreamline.evaluation.metrics import (bootstrap_ci, clip_score, frechet_distance, inception_score,
                                          kernel_distance, r_precision, retrieval_ranks)


def test_r_precision_perfect_and_random_models():
    rng = np.random.default_rng(0)
    n_captions, dim = 50, 64
    text = rng.normal(size=(n_captions, dim))
    truth = np.repeat(np.arange(n_captions), 20)                  # 20 renders per prompt
    perfect = text[truth] + 0.01 * rng.normal(size=(len(truth), dim))
    assert r_precision(perfect, text, truth)["R@1"] == 1.0
    random = rng.normal(size=(len(truth), dim))                    # knows nothing
    scores = r_precision(random, text, truth)
    assert abs(scores["R@1"] - 1 / n_captions) < 0.015 and abs(scores["R@5"] - 5 / n_captions) < 0.03
    assert scores["n_captions"] == n_captions


def test_ties_do_not_count_as_hits_and_distractors_are_required():
    text = np.eye(4)
    constant = np.ones((4, 4))                                     # equally similar to all
    assert (retrieval_ranks(constant, text, np.arange(4)) == 4).all()
    with pytest.raises(ValueError, match="distractor"):
        r_precision(np.ones((2, 3)), np.ones((1, 3)), np.zeros(2, dtype=int))


def test_fid_self_is_zero_and_shift_is_large():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 16))
    assert abs(frechet_distance(a, a)) < 1e-6
    b = rng.normal(size=(500, 16))
    shifted = b + 2.0
    same = frechet_distance(a, b)
    assert same < 1.0 and frechet_distance(a, shifted) > 16 * 4 * 0.9   # |mu diff|^2 = 64


def test_kid_is_unbiased_at_small_n_where_fid_is_not():
    """32 samples of 256-d features from the SAME distribution as 144 references: KID is
    about 0 (unbiased), FID is large (its covariance term is singular and biased at this n);
    a mean shift moves KID well away from its same-distribution spread."""
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(144, 256))
    same = [kernel_distance(rng.normal(size=(32, 256)), ref) for _ in range(20)]
    shifted = kernel_distance(rng.normal(size=(32, 256)) + 0.5, ref)
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert shifted > np.mean(same) + 10 * np.std(same)
    assert frechet_distance(rng.normal(size=(32, 256)), ref) > 100
    with pytest.raises(ValueError, match="2 samples"):
        kernel_distance(ref[:1], ref)


def test_inception_score_extremes():
    one_class = np.tile(np.eye(10)[3], (100, 1))
    assert inception_score(one_class)[0] == pytest.approx(1.0)
    confident_spread = np.eye(10)[np.arange(100) % 10]
    assert inception_score(confident_spread)[0] == pytest.approx(10.0, rel=1e-6)
    uniform = np.full((100, 10), 0.1)
    assert inception_score(uniform)[0] == pytest.approx(1.0)


def test_clip_score_and_bootstrap():
    text = np.eye(3)
    assert clip_score(text, text).tolist() == [100.0, 100.0, 100.0]
    assert clip_score(text, -text).tolist() == [0.0, 0.0, 0.0]
    lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.3
