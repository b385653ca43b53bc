"""The guidance terms (threestudio-style registry): SDS, multi-view SDS, ISM and AGP.

A term sees one optimisation step (`StepInput`: the renders, their cameras, the prompt and
the run's progress) and returns its loss; the distillation loop sums the terms' losses times
their weights. Terms draw all randomness from the step's generator (same seed, same run): a
CPU generator, whose draws dreamline.device moves to the renders' device, so every device
draws the same numbers in the same order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamline.device import randint, randn
from dreamline.guidance import scores
from dreamline.guidance.configs import GUIDANCES, AGPGuidanceParams, ISMParams, MVSDSParams, SDSParams
from dreamline.guidance.prior import DiffusionPrior
from dreamline.representations.base import Cameras, RenderOutput


@dataclass
class StepInput:
    out: RenderOutput
    cams: Cameras
    azimuth_deg: torch.Tensor     # (N,) per view, for view-dependent prompts
    elevation_deg: torch.Tensor
    prompt: str
    step: int
    total_steps: int
    generator: torch.Generator

    @property
    def progress(self) -> float:
        return self.step / max(self.total_steps, 1)


class Guidance:
    """A loss on renders. `orthogonal_views` > 0 asks the loop for that many orthogonal
    cameras per step (MVDream)."""
    orthogonal_views: int = 0

    def __init__(self, config, prior: DiffusionPrior):
        self.c = config
        self.prior = prior

    def weight_at(self, progress: float) -> float:
        return float(self.c.weight)

    def __call__(self, s: StepInput) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _timesteps(self, lo: float, hi: float, n: int, g: torch.Generator,
                   device: torch.device | None = None) -> torch.Tensor:
        T = self.prior.num_train_timesteps
        a, b = int(lo * T), max(int(lo * T) + 1, int(hi * T) + 1)
        return randint(a, min(b, T), (n,), g, device)

    def _cameras(self, s: StepInput) -> torch.Tensor | None:
        return s.cams.flat16() if self.prior.uses_cameras else None


def _view_texts(c, s: StepInput) -> list[str]:
    if not getattr(c, "view_prompts", False):
        return [s.prompt] * len(s.cams)
    return [f"{s.prompt}, {scores.view_suffix(float(a), float(e))}"
            for a, e in zip(s.azimuth_deg, s.elevation_deg)]


def text_guided_eps(prior: DiffusionPrior, c, s: StepInput, z_t: torch.Tensor, t: torch.Tensor,
                    cameras: torch.Tensor | None) -> torch.Tensor:
    """Guided epsilon with view prompts, and Perp-Neg when the config turns it on (the other
    view directions as negatives)."""
    n = z_t.shape[0]
    texts = _view_texts(c, s)
    negatives = [c.negative_prompt] * n
    if not (c.perp_neg and c.view_prompts):
        return prior.guided(z_t, t, texts, negatives, c.guidance_scale, cameras).eps
    others = []
    for a, e in zip(s.azimuth_deg, s.elevation_deg):
        own = scores.view_suffix(float(a), float(e))
        others.append([v for v in ("front view", "side view", "back view") if v != own][:2])
    neg_texts = [[f"{s.prompt}, {o[k]}" for o in others] for k in range(2)]
    all_texts = negatives + texts + neg_texts[0] + neg_texts[1]
    reps = 4
    cams = None if cameras is None else cameras.repeat(reps, 1)
    raw = prior.raw(z_t.repeat(reps, 1, 1, 1), t.repeat(reps), all_texts, cams, 1)
    eps = [prior.eps_and_x0(z_t, t, chunk)[0] for chunk in raw.chunk(reps)]
    return scores.perp_neg(eps[0], eps[1], eps[2:], c.guidance_scale, c.perp_neg_weight)


@GUIDANCES.implements(SDSParams)
class SDS(Guidance):
    """DreamFusion: w(t) (eps_phi(x_t; y, t) - eps), t ~ U(t_min, t_max) per view."""

    def __call__(self, s: StepInput) -> dict[str, torch.Tensor]:
        z = self.prior.encode(s.out.rgb)
        t = self._timesteps(*self.c.t_range, z.shape[0], s.generator, z.device)
        noise = randn(z.shape, s.generator, z.device)
        z_t = self.prior.add_noise(z.detach(), noise, t)
        eps = text_guided_eps(self.prior, self.c, s, z_t, t, self._cameras(s))
        grad = scores.sds_grad(eps, noise, scores.weight(self.prior.alpha_bar(t), self.c.weighting))
        return {"loss": scores.surrogate_loss(z, grad), "t": t.float().mean()}


@GUIDANCES.implements(MVSDSParams)
class MultiViewSDS(Guidance):
    """MVDream: 4 orthogonal views denoised jointly with their cameras; loss
    ||z - stopgrad(x0_hat)||^2 with CFG rescale on x0_hat; t bounds annealed linearly."""

    @property
    def orthogonal_views(self) -> int:
        return self.c.num_views

    def __call__(self, s: StepInput) -> dict[str, torch.Tensor]:
        c, f = self.c, self.c.num_views
        z = self.prior.encode(s.out.rgb)
        if z.shape[0] % f:
            raise ValueError(f"mv-sds needs a multiple of {f} views, got {z.shape[0]}")
        frac = s.progress / c.anneal_fraction
        lo, hi = sorted((scores.linear(*c.min_step, frac), scores.linear(*c.max_step, frac)))
        t = self._timesteps(lo, hi, z.shape[0] // f, s.generator, z.device).repeat_interleave(f)
        noise = randn(z.shape, s.generator, z.device)
        z_t = self.prior.add_noise(z.detach(), noise, t)
        n = z.shape[0]
        pred = self.prior.guided(z_t, t, [s.prompt] * n, [c.negative_prompt] * n, c.guidance_scale,
                                 self._cameras(s), num_views=f, rescale=c.guidance_rescale)
        return {"loss": scores.x0_reconstruction_loss(z, pred.x0), "t": t.float().mean()}


@GUIDANCES.implements(ISMParams)
class ISM(Guidance):
    """LucidDreamer: x_s by deterministic DDIM inversion of the render (unconditional model,
    `inversion_steps` steps), one more step to x_t, and the interval score
    w(t) (eps_phi(x_t, t, y) - eps_phi(x_s, s, empty))."""

    def invert(self, z: torch.Tensor, s_t: int, cameras: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_s, eps_phi(x_s, s, empty)): deterministic, the same z always gives the same x_s."""
        prior, n = self.prior, z.shape[0]
        empty = [self.c.negative_prompt] * n
        x = z.detach()
        taus = scores.inversion_timesteps(s_t, self.c.inversion_steps)
        for a, b in zip(taus[:-1], taus[1:]):
            ta = torch.full((n,), a, dtype=torch.long, device=z.device)
            eps = prior.eps(x, ta, empty, cameras)
            x = scores.ddim_step(x, eps, prior.alpha_bar(ta), prior.alpha_bar(torch.full((n,), b, device=z.device)))
        ts = torch.full((n,), s_t, dtype=torch.long, device=z.device)
        return x, prior.eps(x, ts, empty, cameras)

    def __call__(self, s: StepInput) -> dict[str, torch.Tensor]:
        c, prior = self.c, self.prior
        T = prior.num_train_timesteps
        z = prior.encode(s.out.rgb)
        n = z.shape[0]
        dt = int(round(scores.linear(c.delta_t_start, c.delta_t, s.progress)))
        lo = max(int(c.t_range[0] * T), dt)
        hi = max(lo, int(c.t_range[1] * T))
        t_val = int(randint(lo, hi + 1, (1,), s.generator))
        s_val = max(t_val - dt, 0)
        cameras = self._cameras(s)
        x_s, eps_s = self.invert(z, s_val, cameras)
        t = torch.full((n,), t_val, dtype=torch.long, device=z.device)
        x_t = scores.ddim_step(x_s, eps_s, prior.alpha_bar(torch.full((n,), s_val, device=z.device)), prior.alpha_bar(t))
        eps_t = text_guided_eps(prior, c, s, x_t, t, cameras)
        grad = scores.ism_grad(eps_t, eps_s, scores.weight(prior.alpha_bar(t), c.weighting))
        return {"loss": scores.surrogate_loss(z, grad), "t": t.float().mean()}


@GUIDANCES.implements(AGPGuidanceParams)
class AGP(Guidance):
    """SweetDreamer: SDS of the CCM model on the rendered canonical coordinate map. The CCM
    render depends on geometry only (weights x canonical position), so only density learns."""

    def weight_at(self, progress: float) -> float:
        return scores.linear(*self.c.weight, progress)

    def __call__(self, s: StepInput) -> dict[str, torch.Tensor]:
        c = self.c
        z = self.prior.encode(s.out.ccm)
        t = self._timesteps(*c.t_range, z.shape[0], s.generator, z.device)
        noise = randn(z.shape, s.generator, z.device)
        z_t = self.prior.add_noise(z.detach(), noise, t)
        n = z.shape[0]
        pred = self.prior.guided(z_t, t, [s.prompt] * n, [""] * n, c.guidance_scale, self._cameras(s))
        grad = scores.sds_grad(pred.eps, noise, scores.weight(self.prior.alpha_bar(t), c.weighting))
        return {"loss": scores.surrogate_loss(z, grad), "t": t.float().mean()}


def build_guidance(term: str, config, prior: DiffusionPrior) -> Guidance:
    return GUIDANCES.get(term)(config, prior)
