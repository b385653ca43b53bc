"""What a prior's denoiser does to real views: test-split mv views noised to timestep t, the
model's x0 estimate decoded, its MSE against the clean view (in [-1, 1]) per t, and an image
grid (clean row, then one row per t) to look at.

    python benchmarks/denoiser_x0.py data/models/base [more folders] [--t 50 200 400 600 800] \
        [--grid /tmp/x0.png]

A well-trained denoiser's estimate at mid t is blurred but smooth; per-pixel noise left in it
is what shows as speckle in the samples (benchmarks/RESULTS.md, "Issue 18"). The views are 6
test objects (every 9th test mv view), their own captions, noise from seed 0; workspace data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--t", type=int, nargs="+", default=[50, 200, 400, 600, 800])
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--grid", default=None, help="write the grid of the first model here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from dreamline.evaluation.train_evaluator import real_views
    from dreamline.models.grid import grid_image
    from dreamline.models.text import encode_text
    from dreamline.training.common import load_base_pipeline

    print(f"{'model':<40} " + " ".join(f"t={t:<6}" for t in args.t))
    for k, folder in enumerate(args.models):
        pipe = load_base_pipeline(folder)
        size = pipe.unet.config.sample_size * getattr(pipe.vae, "factor", 1)
        rows, images = real_views(ROOT / "data/renders", ROOT / "data/captions/captions.parquet", size, "test",
                                  kinds=("mv",))
        idx = np.arange(0, len(rows), 9)[:6]
        x = images[idx] * 2 - 1
        states, mask = encode_text(pipe.text_encoder, pipe.tokenizer, list(rows["caption"].iloc[idx]),
                                   args.max_tokens)
        z0 = pipe.vae.encode(x)
        z0 = z0.latent_dist.mode() if hasattr(z0, "latent_dist") else z0
        sch, g, out, errs = pipe.scheduler, torch.Generator().manual_seed(0), [x], []
        for t in args.t:
            noise = torch.randn(z0.shape, generator=g)
            tt = torch.full((len(z0),), t)
            with torch.no_grad():
                zt = sch.add_noise(z0, noise, tt)
                v = pipe.unet(zt, tt, encoder_hidden_states=states, encoder_attention_mask=mask).sample
                a = sch.alphas_cumprod[t]
                x0 = a.sqrt() * zt - (1 - a).sqrt() * v if sch.config.prediction_type == "v_prediction" \
                    else (zt - (1 - a).sqrt() * v) / a.sqrt()
                dec = pipe.vae.decode(x0)
                dec = (dec.sample if hasattr(dec, "sample") else dec).clamp(-1, 1)
            errs.append(float(((dec - x) ** 2).mean()))
            out.append(dec)
        print(f"{folder:<40} " + " ".join(f"{e:<8.4f}" for e in errs))
        if args.grid and k == 0:
            grid_image(((torch.cat(out) + 1) / 2).permute(0, 2, 3, 1).numpy(), nrow=len(idx)).save(args.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
