"""Training augmentation on decoded images (uint8 CHW tensors), drawn from an explicit generator.

The same recipe as the PIL transform timm builds for the stages (random resized crop with scale
``(0.35, 1)`` and ratio ``(3/4, 4/3)``, horizontal flip, colour jitter 0.4 in a random order), applied to
the cached evaluation view (resized and centre-cropped once) instead of the original file, so a trial
never decodes an image. The parameters come from the generator passed in, never from global random
state another component may have touched: the same seed gives the same views.
"""
from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

SCALE = (0.35, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = 0.4


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def crop_box(height: int, width: int, g: torch.Generator, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, as torchvision samples it: ten tries at an area in
    ``scale`` and a log-uniform aspect ratio in ``ratio``, else the central crop of the closest ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment(x: torch.Tensor, g: torch.Generator, jitter: float = JITTER) -> torch.Tensor:
    """One training view of the uint8 image ``x`` (C, H, W), same size and dtype."""
    _, height, width = x.shape
    top, left, h, w = crop_box(height, width, g)
    x = TF.resized_crop(x, top, left, h, w, [height, width], interpolation=InterpolationMode.BILINEAR,
                        antialias=True)
    if float(torch.rand((), generator=g)) < 0.5:
        x = TF.horizontal_flip(x)
    if jitter > 0:
        factors = [_uniform(g, max(0.0, 1 - jitter), 1 + jitter) for _ in range(3)]
        for i in torch.randperm(3, generator=g).tolist():
            if i == 0:
                x = TF.adjust_brightness(x, factors[0])
            elif i == 1:
                x = TF.adjust_contrast(x, factors[1])
            elif x.shape[0] == 3:
                x = TF.adjust_saturation(x, factors[2])
    return x
