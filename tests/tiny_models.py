"""Seeded tiny diffusion components (diffusers' get_dummy_components style), shared by tests."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler
from transformers import BertConfig, BertModel, BertTokenizer

from dreamline.config import UNetParams
from dreamline.models.codec import PixelUnshuffleCodec
from dreamline.models.pipelines import CCMPipeline, MultiViewDiffusionPipeline
from dreamline.models.unet import build_unet, set_multiview

TINY = UNetParams(block_out_channels=(16, 32), attention=(False, True), attention_head_dim=8,
                  norm_num_groups=8)
WORDS = ("a an red blue green chair table mug lamp car small big 3d asset front side back "
         "overhead view , sks object").split()


def tiny_text():
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return BertModel(config).eval(), BertTokenizer(vocab=vocab)


def tiny_pipeline(cls=MultiViewDiffusionPipeline, camera=True, multiview=True, seed=0):
    """8 px images (4x4 unshuffled latents), v-prediction, cosine schedule."""
    text_encoder, tokenizer = tiny_text()
    torch.manual_seed(seed)
    unet = build_unet(TINY, in_channels=12, sample_size=4, cross_attention_dim=16,
                      camera_dim=16 if camera else None)
    if multiview:
        set_multiview(unet)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    pipe = cls(unet=unet.eval(), vae=PixelUnshuffleCodec(factor=2), text_encoder=text_encoder,
               tokenizer=tokenizer, scheduler=scheduler, max_tokens=8, num_views=4)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_priors(models: Path) -> dict[str, Path]:
    """base (2D, no camera), mv (cameras + multi-view attention), agp (CCM, camera) folders."""
    folders = {"base": models / "base", "mv": models / "mv", "agp": models / "agp"}
    tiny_pipeline(camera=False, multiview=False, seed=1).save_pretrained(folders["base"])
    tiny_pipeline(seed=2).save_pretrained(folders["mv"])
    tiny_pipeline(CCMPipeline, multiview=False, seed=3).save_pretrained(folders["agp"])
    return folders


def tiny_distill_project(project) -> dict:
    """Tiny priors under the project's data/models and a small `distill` block pointing at
    them (everything but the prompts); returns the block."""
    save_tiny_priors(project.root / "data" / "models")
    guidance = {name: {"model": f"data/models/{m}"} for name, m in
                (("sds", "base"), ("ism", "base"), ("mv-sds", "mv"), ("agp", "agp"))}
    return {"representation": {"resolution": 8, "samples_per_ray": 8}, "guidance": guidance,
            "steps": 3, "resolution": 8, "threads": 1,
            "export": {"mesh_resolution": 12, "view_resolution": 16, "turntable_frames": 3}}
