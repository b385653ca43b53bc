"""Convert MVDream's released checkpoint into a dreamline multi-view pipeline folder.

    python scripts/convert_mvdream.py sd-v2.1-base-4view.pt data/models/mvdream \\
        --config-from path/to/stable-diffusion-2-1-base

CHECKPOINT is the LDM-layout file (``.safetensors``, or the original ``.pt`` / ``.ckpt``,
read only with torch's weights-only unpickler). --config-from is a local SD 2.1 base
diffusers folder: the component configs, scheduler and tokenizer come from it (its weights
are not read; nothing is downloaded). OUT_FOLDER gets safetensors weights only, in the
checkpoint's dtype, and loads with ``dreamline.training.common.load_base_pipeline``; point
``distill.guidance.mv-sds.model`` at it. The mapping and its checks live in
dreamline/models/ldm_checkpoint.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="LDM-layout checkpoint (.safetensors, .pt, .ckpt)")
    parser.add_argument("out_folder", type=Path, help="new folder for the diffusers pipeline")
    parser.add_argument("--config-from", type=Path, required=True, metavar="SD21_FOLDER",
                        help="local SD 2.1 base diffusers folder (configs, scheduler, tokenizer)")
    parser.add_argument("--num-views", type=int, default=4, help="views the model was trained with (4)")
    parser.add_argument("--sample-size", type=int, default=None,
                        help="UNet latent size (default: MVDream's 32, i.e. 256 px)")
    args = parser.parse_args(argv)

    from dreamline.models.ldm_checkpoint import MVDREAM_SAMPLE_SIZE, CheckpointError, convert_checkpoint
    from dreamline.models.weights import UnsafeWeightsError

    try:
        out, converted, extras = convert_checkpoint(
            args.checkpoint, args.out_folder, args.config_from, num_views=args.num_views,
            sample_size=args.sample_size or MVDREAM_SAMPLE_SIZE)
    except (CheckpointError, UnsafeWeightsError, FileNotFoundError, FileExistsError) as exc:
        print(f"convert_mvdream: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: unet {len(converted.unet)}, vae {len(converted.vae)}, text encoder "
          f"{len(converted.text_encoder)} tensors; {len(converted.ignored)} checkpoint keys ignored "
          f"(listed in {out / 'conversion.json'})"
          + (f"; top-level entries ignored: {extras}" if extras else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
