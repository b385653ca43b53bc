"""Score distillation by hand: each guidance term's gradient on the rendered latents equals
its formula, computed here independently on a prior whose UNet is a known function."""
from __future__ import annotations

import math

import pytest
import torch

from dreamline.guidance.configs import AGPGuidanceParams, ISMParams, MVSDSParams, SDSParams
from dreamline.representations.configs import VoxelParams
from dreamline.guidance import DiffusionPrior, StepInput, build_guidance
from dreamline.guidance import scores
from dreamline.representations.base import RenderOutput
from dreamline.representations.voxel import VoxelField
from dreamline.distill.sampling import fixed_views
from tiny_models import tiny_pipeline


class LinearUNetPrior(DiffusionPrior):
    """A real prior (schedule, codec, text cache) whose UNet output is a known function:
    raw = a * z_t + b * (text is conditional), so every expected update is computable."""
    a, b = 0.5, 0.25

    def raw(self, z_t, t, texts, cameras, num_views):
        cond = torch.tensor([0.0 if text in ("", "ugly") else 1.0 for text in texts]).reshape(-1, 1, 1, 1)
        self.calls.append((z_t.clone(), t.clone(), list(texts)))
        return self.a * z_t + self.b * cond

    def __init__(self, pipe):
        super().__init__(pipe)
        self.calls = []


@pytest.fixture(scope="module")
def prior():
    return LinearUNetPrior(tiny_pipeline(camera=False, multiview=False))


def step_input(rgb: torch.Tensor, seed: int = 0, progress: float = 0.5, ccm=None) -> StepInput:
    n = rgb.shape[0]
    views = fixed_views([360.0 * k / n for k in range(n)], 15.0, 40.0, 0.6, rgb.shape[-1])
    out = RenderOutput(rgb=rgb, opacity=torch.ones_like(rgb[:, :1]), depth=torch.zeros_like(rgb[:, :1]),
                       normal=torch.zeros_like(rgb), ccm=rgb if ccm is None else ccm,
                       orientation=torch.zeros(()))
    return StepInput(out, views.cams, views.azimuth_deg, views.elevation_deg, "a red chair",
                     step=int(progress * 100), total_steps=100, generator=torch.Generator().manual_seed(seed))


def eps_of(prior, z_t, t, raw):
    """v-prediction -> epsilon, written out: eps = sqrt(ab) v + sqrt(1 - ab) z_t."""
    ab = prior.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt() * raw + (1 - ab).sqrt() * z_t


def rendered(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g).requires_grad_(True)


def test_surrogate_losses_have_the_method_gradients():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 12, 4, 4, generator=g, requires_grad=True)
    eps_pred, noise = torch.randn(2, 3, 12, 4, 4, generator=g)
    w = torch.rand(3, 1, 1, 1, generator=g)
    scores.surrogate_loss(z, scores.sds_grad(eps_pred, noise, w)).backward()
    torch.testing.assert_close(z.grad, w * (eps_pred - noise) / 3)
    z.grad = None
    x0 = torch.randn(3, 12, 4, 4, generator=g)
    scores.x0_reconstruction_loss(z, x0).backward()
    torch.testing.assert_close(z.grad, (z - x0).detach() / 3)


def test_sds_update_matches_formula(prior):
    c = SDSParams(guidance_scale=7.5, t_range=(0.02, 0.98), view_prompts=True)
    term = build_guidance("sds", c, prior)
    rgb = rendered()
    s = step_input(rgb, seed=5)
    prior.calls.clear()
    term(s)["loss"].backward()

    g = torch.Generator().manual_seed(5)          # the same draws, in the term's order
    z = torch.nn.functional.pixel_unshuffle(rgb.detach() * 2 - 1, 2)
    T = prior.num_train_timesteps
    t = torch.randint(int(0.02 * T), int(0.98 * T) + 1, (2,), generator=g)
    noise = torch.randn(z.shape, generator=g)
    ab = prior.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    z_t = ab.sqrt() * z + (1 - ab).sqrt() * noise
    eps_u = eps_of(prior, z_t, t, prior.a * z_t)
    eps_c = eps_of(prior, z_t, t, prior.a * z_t + prior.b)
    eps = eps_u + 7.5 * (eps_c - eps_u)
    grad_z = (1 - ab) * (eps - noise) / 2
    # Back through the codec (a permutation) and the [0, 1] -> [-1, 1] map.
    expected = 2 * torch.nn.functional.pixel_shuffle(grad_z, 2)
    torch.testing.assert_close(rgb.grad, expected, rtol=1e-4, atol=1e-6)
    texts = prior.calls[0][2]
    assert texts[2:] == ["a red chair, front view", "a red chair, back view"]   # azimuths 0 and 180


def test_ism_update_matches_formula_and_inversion_is_deterministic(prior):
    c = ISMParams(guidance_scale=7.5, t_range=(0.3, 0.5), delta_t=50, delta_t_start=50,
                  inversion_steps=3, view_prompts=False)
    term = build_guidance("ism", c, prior)
    rgb = rendered()
    prior.calls.clear()
    term(step_input(rgb, seed=9))["loss"].backward()

    g = torch.Generator().manual_seed(9)
    T = prior.num_train_timesteps
    t_val = int(torch.randint(int(0.3 * T), int(0.5 * T) + 1, (1,), generator=g))
    s_val = t_val - 50
    z = torch.nn.functional.pixel_unshuffle(rgb.detach() * 2 - 1, 2)
    ab = lambda k: prior.alphas_cumprod[k]  # noqa: E731
    # DDIM inversion by hand: 3 steps 0 -> s with the unconditional (empty) model.
    taus = [0, round(s_val / 3), round(2 * s_val / 3), s_val]
    x = z
    for a, b in zip(taus[:-1], taus[1:]):
        eps = ab(a).sqrt() * (prior.a * x) + (1 - ab(a)).sqrt() * x
        x0 = (x - (1 - ab(a)).sqrt() * eps) / ab(a).sqrt()
        x = ab(b).sqrt() * x0 + (1 - ab(b)).sqrt() * eps
    eps_s = ab(s_val).sqrt() * (prior.a * x) + (1 - ab(s_val)).sqrt() * x
    x0 = (x - (1 - ab(s_val)).sqrt() * eps_s) / ab(s_val).sqrt()
    x_t = ab(t_val).sqrt() * x0 + (1 - ab(t_val)).sqrt() * eps_s
    eps_u = ab(t_val).sqrt() * (prior.a * x_t) + (1 - ab(t_val)).sqrt() * x_t
    eps_c = ab(t_val).sqrt() * (prior.a * x_t + prior.b) + (1 - ab(t_val)).sqrt() * x_t
    eps_t = eps_u + 7.5 * (eps_c - eps_u)
    grad_z = (1 - ab(t_val)) * (eps_t - eps_s) / 2
    torch.testing.assert_close(rgb.grad, 2 * torch.nn.functional.pixel_shuffle(grad_z, 2), rtol=1e-4, atol=1e-6)
    # Inversion steps saw the empty prompt only; the interval score used the prompt.
    assert all(call[2] == ["", ""] for call in prior.calls[:4])
    assert prior.calls[-1][2] == ["", "", "a red chair", "a red chair"]

    z = prior.encode(rgb.detach())
    first, eps1 = term.invert(z, 300, None)
    second, eps2 = term.invert(z.clone(), 300, None)
    assert torch.equal(first, second) and torch.equal(eps1, eps2)


def test_ddim_inversion_with_a_constant_noise_estimate_is_closed_form():
    ab = torch.tensor([0.9999, 0.9, 0.7, 0.4])
    z, e0 = torch.randn(2, 1, 4, 4)
    x = z
    for k in range(3):
        x = scores.ddim_step(x, e0, ab[k], ab[k + 1])
    x0 = (z - (1 - ab[0]).sqrt() * e0) / ab[0].sqrt()
    torch.testing.assert_close(x, ab[3].sqrt() * x0 + (1 - ab[3]).sqrt() * e0)
    assert scores.inversion_timesteps(300, 3) == [0, 100, 200, 300]
    assert scores.inversion_timesteps(2, 5) == [0, 1, 2]


def test_mv_sds_is_x0_reconstruction_with_annealed_timesteps(prior):
    c = MVSDSParams(guidance_scale=5.0, guidance_rescale=0.0, num_views=2)
    term = build_guidance("mv-sds", c, prior)
    assert term.orthogonal_views == 2
    rgb = rendered(4)
    prior.calls.clear()
    term(step_input(rgb, seed=3, progress=0.0))["loss"].backward()
    z_t, t, _ = prior.calls[0]
    n = 4
    t = t[:n]
    assert t[0] == t[1] and t[2] == t[3]            # one timestep per orthogonal set
    assert (t >= 970).all()                          # start of the anneal: t_min = t_max = 0.98
    z_t = z_t[:n]
    ab = prior.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0_u = ab.sqrt() * z_t - (1 - ab).sqrt() * (prior.a * z_t)
    x0_c = ab.sqrt() * z_t - (1 - ab).sqrt() * (prior.a * z_t + prior.b)
    x0 = x0_u + 5.0 * (x0_c - x0_u)
    z = torch.nn.functional.pixel_unshuffle(rgb.detach() * 2 - 1, 2)
    torch.testing.assert_close(rgb.grad, 2 * torch.nn.functional.pixel_shuffle((z - x0) / n, 2),
                               rtol=1e-4, atol=1e-6)
    late = [term(step_input(rendered(4), seed=k, progress=1.0)) for k in range(6)]
    assert all(20 <= float(r["t"]) <= 501 for r in late)


def test_perp_neg_removes_only_the_perpendicular_part():
    u = torch.zeros(1, 2, 1, 1)
    pos = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    parallel = torch.tensor([3.0, 0.0]).reshape(1, 2, 1, 1)
    torch.testing.assert_close(scores.perp_neg(u, pos, [parallel], 2.0, 1.0), 2.0 * pos)
    perpendicular = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    out = scores.perp_neg(u, pos, [perpendicular], 2.0, 0.5)
    torch.testing.assert_close(out, torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1))


def test_view_suffixes_follow_dreamfusion():
    assert scores.view_suffix(0, 10) == "front view" and scores.view_suffix(350, 10) == "front view"
    assert scores.view_suffix(90, 10) == "side view" and scores.view_suffix(270, 10) == "side view"
    assert scores.view_suffix(180, 10) == "back view" and scores.view_suffix(0, 70) == "overhead view"


def test_agp_term_moves_geometry_only():
    pipe = tiny_pipeline(camera=True, multiview=False, seed=3)
    prior = DiffusionPrior(pipe)
    term = build_guidance("agp", AGPGuidanceParams(weight=(1.0, 0.0)), prior)
    assert term.weight_at(0.0) == 1.0 and term.weight_at(0.5) == pytest.approx(0.5)
    field = VoxelField(VoxelParams(resolution=8), torch.Generator().manual_seed(0))
    views = fixed_views([0.0, 90.0], 15.0, 40.0, 0.6, 8)
    out = field.render(views.cams, "albedo", None, torch.ones(2, 3, 8, 8), need_normals=False)
    s = StepInput(out, views.cams, views.azimuth_deg, views.elevation_deg, "a red chair", 0, 10,
                  torch.Generator().manual_seed(0))
    term(s)["loss"].backward()
    assert field.density.grad.abs().sum() > 0
    assert field.albedo.grad is None or field.albedo.grad.abs().sum() == 0


def test_weights():
    ab = torch.tensor([0.25])
    assert float(scores.weight(ab, "sds")) == 0.75
    assert math.isclose(float(scores.weight(ab, "snr")), 1 / 3, rel_tol=1e-6)
    with pytest.raises(ValueError):
        scores.weight(ab, "nope")


def test_v_prediction_conversion_matches_diffusers(prior):
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 2, 12, 4, 4, generator=g)
    t = torch.tensor([100, 700])
    z_t = prior.pipe.scheduler.add_noise(z0, noise, t)
    v = prior.pipe.scheduler.get_velocity(z0, noise, t)
    eps, x0 = prior.eps_and_x0(z_t, t, v)
    torch.testing.assert_close(eps, noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x0, z0, rtol=1e-4, atol=1e-4)


# --- the sampler core's CFG, shared with the sampling pipelines ------------------------------

def test_classifier_free_guidance_matches_the_formula():
    from dreamline.models.sampling import classifier_free_guidance, guide

    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 3, 4, 5, 5, generator=g)
    guided = uncond + 7.5 * (cond - uncond)
    assert torch.equal(classifier_free_guidance(uncond, cond, 7.5), guided)
    assert torch.equal(classifier_free_guidance(uncond, cond, 7.5, 0.0), guided)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 1.0), cond)
    # Lin et al.'s rescale: the guided prediction's per-sample std pulled to the conditional one's.
    std = lambda x: x.flatten(1).std(dim=1).reshape(-1, 1, 1, 1)  # noqa: E731
    expected = 0.7 * guided * std(cond) / std(guided) + 0.3 * guided
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 7.5, 0.7), expected)
    torch.testing.assert_close(std(classifier_free_guidance(uncond, cond, 7.5, 1.0)), std(cond))
    # The doubled-batch form: unconditional half first.
    assert torch.equal(guide(torch.cat([uncond, cond]), 7.5, 0.7),
                       classifier_free_guidance(uncond, cond, 7.5, 0.7))


def test_prior_guidance_is_the_core_cfg_with_rescale_on_x0_only(prior):
    from dreamline.models import sampling

    g = torch.Generator().manual_seed(4)
    z_t, t = torch.randn(2, 12, 4, 4, generator=g), torch.tensor([200, 700])
    pred = prior.guided(z_t, t, ["a red chair"] * 2, [""] * 2, 5.0, rescale=0.5)
    eps_u, x0_u = prior.eps_and_x0(z_t, t, prior.a * z_t)
    eps_c, x0_c = prior.eps_and_x0(z_t, t, prior.a * z_t + prior.b)
    assert torch.equal(pred.eps, sampling.classifier_free_guidance(eps_u, eps_c, 5.0))
    assert torch.equal(pred.x0, sampling.classifier_free_guidance(x0_u, x0_c, 5.0, 0.5))
    plain = prior.guided(z_t, t, ["a red chair"] * 2, [""] * 2, 5.0)
    assert torch.equal(plain.x0, x0_u + 5.0 * (x0_c - x0_u)) and torch.equal(plain.eps, pred.eps)
    assert torch.equal(pred.eps_cond, eps_c) and torch.equal(pred.eps_uncond, eps_u)
    # ISM's DDIM inversion steps with the core's closed-form DDIM move.
    assert scores.ddim_step is sampling.ddim_step
