"""FID's Inception-v3 (the TF "2015-12-05" graph FID was defined with), from a local weights file.

The papers' FID / IS come from this network: pool3 features (2048-d) for FID, its 1008-way
softmax for IS. Its weights are not on PyPI and no machine here reaches where they are
published, so the network is built here and its weights come from a file the user gives
(`evaluate.image_quality.inception_weights`): a safetensors file whose keys are the
torchvision-style names the common PyTorch port uses (`Conv2d_1a_3x3.conv.weight`, ...,
`Mixed_7c.branch_pool.bn.running_var`, `fc.weight`). That port ships them as a pickle
(`pt_inception-2015-12-05-*.pth`); convert it once where the file is trusted, e.g.
`safetensors.torch.save_file(torch.load(pth), "inception-2015-12-05.safetensors")`.

Where the FID graph differs from the Inception-v3 of the paper, this follows the graph:
average pools that leave padding out of the mean, a max pool in the last block's pool branch,
BatchNorm eps 1e-3, 1008 classes; input resized to 299 px (bilinear) and scaled to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamline.device import autocast, frozen_dtype

FEATURE_NET = "inception-v3 (FID, 2015-12-05 graph)"
CLASSES = 1008
IMAGE_SIZE = 299


class Conv(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU: the graph's unit."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1 = Conv(cin, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class BlockB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """Factorised 7 x 7 convolutions."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, **row)
        self.branch7x7_3 = Conv(c7, 192, **col)
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, **col)
        self.branch7x7dbl_3 = Conv(c7, c7, **row)
        self.branch7x7dbl_4 = Conv(c7, c7, **col)
        self.branch7x7dbl_5 = Conv(c7, 192, **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for k in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{k}")(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for k in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{k}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """Expanded filter bank; `max_pool`: the graph's last block pools by max, not mean."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(N, 3, 299, 299) in [-1, 1] -> (pool3 features (N, 2048), logits (N, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        pooled = x.mean(dim=(2, 3))
        return pooled, self.fc(pooled)


class InceptionFeatures:
    """The FID feature net: pooled 2048-d features and 1008-class posteriors of images in
    [0, 1], called like `towers.EfficientNetLite0`. Weights from a local safetensors file
    only; a file that does not hold exactly this network's tensors is refused by name."""

    def __init__(self, weights: str | Path, device: torch.device | str | None = None, precision: str = "fp32"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(weights)
        if path.suffix != ".safetensors":
            raise ValueError(f"inception_weights: {path} is not a .safetensors file (pickle checkpoints can run "
                             f"code when loaded; convert it once, see dreamline/evaluation/inception.py)")
        if not path.is_file():
            raise FileNotFoundError(f"inception_weights: {path} does not exist")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"inception_weights: {path} is not a readable safetensors file: {err}") from err
        net = FIDInceptionV3()
        # BatchNorm's step counters do nothing in eval mode; files with or without them load.
        expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        missing = sorted(set(expected) - {k for k in state})
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            raise ValueError(f"inception_weights: {path} is not FID's Inception-v3: "
                             f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                             f"(e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})")
        net.load_state_dict(state, strict=False)
        # Which weights made the numbers: a figure is traced to the file, not only its path
        # (md5, as DVC names files).
        import hashlib

        self.name = f"{FEATURE_NET}, weights md5:{hashlib.md5(path.read_bytes()).hexdigest()}"
        self.device, self.precision = torch.device(device or "cpu"), precision
        self.dtype = frozen_dtype(precision)
        self.net = net.to(self.device, self.dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
        feats, probs = [], []
        for i in range(0, len(images), batch):
            x = images[i:i + batch].float().to(self.device)
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            with autocast(self.device, self.precision):
                pooled, logits = self.net((2.0 * x - 1.0).to(self.dtype))
            feats.append(pooled.float().cpu().numpy())
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)
