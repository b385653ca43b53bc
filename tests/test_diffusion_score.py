"""The diffusion-classifier score on a prior whose answers are known."""
from __future__ import annotations

import pytest
import torch

from dreamline.evaluation.diffusion_score import prompt_fit


class OraclePrior:
    """Recovers the noise exactly for the right prompt, predicts zero noise otherwise."""
    alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

    def __init__(self, right: str):
        self.right = right
        self.z = None

    def encode(self, images):
        self.z = images * 2 - 1
        return self.z

    def add_noise(self, z, noise, t):
        ab = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return ab.sqrt() * z + (1 - ab).sqrt() * noise

    def eps(self, z_t, t, texts, cameras=None):
        ab = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        exact = (z_t - ab.sqrt() * self.z) / (1 - ab).sqrt()
        keep = torch.tensor([text == self.right for text in texts], dtype=torch.float32).reshape(-1, 1, 1, 1)
        return exact * keep


def test_the_right_prompt_ranks_first_with_unit_margin():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fit = prompt_fit(OraclePrior("a red chair"), images, "a red chair", ["a blue mug", "a tree"])
    assert fit["rank"] == 1 and fit["loss"] == pytest.approx(0.0, abs=1e-6)
    assert fit["margin"] == pytest.approx(1.0, abs=0.1)           # E[noise^2] = 1
    wrong = prompt_fit(OraclePrior("a tree"), images, "a red chair", ["a blue mug", "a tree"])
    assert wrong["rank"] == 2 and wrong["margin"] < 0
