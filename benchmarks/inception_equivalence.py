"""Is dreamline's FID Inception-v3 (dreamline/evaluation/inception.py) the network of the
common PyTorch port of FID (pytorch-fid), tensor for tensor and output for output?

Not a dependency of dreamline: run it where pytorch-fid and torchvision can be installed,
e.g. `pip install --target /tmp/fidpkgs --no-deps pytorch-fid torchvision` and
`PYTHONPATH=/tmp/fidpkgs:. python benchmarks/inception_equivalence.py`. No weights are
downloaded: one random state dict (random BatchNorm statistics too) is loaded into both
networks, strictly, and both run on the same images. Prints the largest differences of the
pool3 features and the 1008 logits; `--keys FILE` writes the port's tensor names and shapes
(tests/data/fid_inception_keys.json, which tests/test_inception.py checks the network against).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", help="write the port's {tensor name: shape} here")
    a = parser.parse_args()
    # A torchvision wheel built for another torch fails on registering its C++ operators'
    # fake kernels; the Inception module definitions need none of them.
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    from pytorch_fid import inception as port

    from dreamline.evaluation.inception import IMAGE_SIZE, FIDInceptionV3

    torch.manual_seed(0)
    ours = FIDInceptionV3()
    state = ours.state_dict()
    g = torch.Generator().manual_seed(1)
    for k, v in state.items():
        if k.endswith(("running_var", "bn.weight")):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bn.bias")):
            state[k] = torch.randn(v.shape, generator=g) * 0.1
    ours.load_state_dict(state)
    ours.eval()
    port.load_state_dict_from_url = lambda *args, **kwargs: {k: v.clone() for k, v in state.items()}
    theirs = port.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    classifier = port.fid_inception_v3().eval()      # loads `state` strictly: the same tensor names

    x = torch.rand(4, 3, 64, 64, generator=g)
    with torch.no_grad():
        their_feats = theirs(x)[0][:, :, 0, 0]
        scaled = 2 * F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False) - 1
        their_logits = classifier(scaled)
        feats, logits = ours(scaled)
    print(f"tensors: {len(state)} (ours) vs {len(classifier.state_dict())} (pytorch-fid), names equal: "
          f"{sorted(state) == sorted(classifier.state_dict())}")
    print(f"pool3 features: max |difference| {(feats - their_feats).abs().max().item():.3g} "
          f"(largest value {their_feats.abs().max().item():.3g})")
    print(f"logits:         max |difference| {(logits - their_logits).abs().max().item():.3g} "
          f"(largest value {their_logits.abs().max().item():.3g})")
    if a.keys:
        tensors = {k: list(v.shape) for k, v in classifier.state_dict().items()
                   if not k.endswith("num_batches_tracked")}
        with open(a.keys, "w") as f:
            json.dump({"source": "state_dict() of pytorch-fid 0.3.0's fid_inception_v3() (the port whose "
                                 "pt_inception-2015-12-05 weights users convert), tensor name -> shape; "
                                 "num_batches_tracked left out. Written by benchmarks/inception_equivalence.py "
                                 "--keys", "tensors": tensors}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
