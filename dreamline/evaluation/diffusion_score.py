"""How well a set of images fits a prompt under a diffusion model: its conditional denoising
loss at fixed timesteps and fixed noise (an ELBO proxy), and the margin over distractor
prompts (Li et al. 2023's diffusion classifier). Fixed draws make two image sets directly
comparable; a lower loss and a larger margin mean the images fit the prompt better. The
work runs on the prior's device; the fixed noise is drawn on the CPU (dreamline.device)."""
from __future__ import annotations

import torch

from dreamline.device import randn


@torch.no_grad()
def denoising_losses(prior, images: torch.Tensor, prompts: list[str], timesteps: list[int],
                     seed: int = 0, cameras: torch.Tensor | None = None) -> torch.Tensor:
    """(len(prompts),) mean epsilon-MSE of `images` (N, 3, H, W) in [0, 1] under each prompt,
    averaged over the same timesteps and noise for every prompt."""
    device = getattr(prior, "device", None)
    z = prior.encode(images if device is None else images.to(device))
    g = torch.Generator().manual_seed(seed)
    noises = [randn(z.shape, g, z.device) for _ in timesteps]
    out = []
    for prompt in prompts:
        total = 0.0
        for t_val, noise in zip(timesteps, noises):
            t = torch.full((z.shape[0],), t_val, dtype=torch.long, device=z.device)
            z_t = prior.add_noise(z, noise, t)
            eps = prior.eps(z_t, t, [prompt] * z.shape[0], cameras)
            total += float(((eps - noise) ** 2).mean())
        out.append(total / len(timesteps))
    return torch.tensor(out)


def prompt_fit(prior, images: torch.Tensor, prompt: str, distractors: list[str],
               timesteps=(100, 300, 500, 700), seed: int = 0) -> dict:
    """{'loss': true-prompt loss, 'margin': mean distractor loss - true loss, 'rank': 1 = the
    true prompt has the lowest loss among the distractors}."""
    losses = denoising_losses(prior, images, [prompt] + list(distractors), list(timesteps), seed)
    return {"loss": float(losses[0]), "margin": float(losses[1:].mean() - losses[0]) if distractors else 0.0,
            "rank": int((losses < losses[0]).sum()) + 1}
