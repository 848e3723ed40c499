"""Image ops in torch with every random parameter drawn from an explicit numpy generator (no torchvision).

Images are float32 (3, H, W) tensors in [0, 1] (`to_tensor` of a uint8 HxWx3 frame) until `normalise`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize to (h, w) (antialiased when shrinking), clamped to [0, 1]."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(img[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def random_crop(img: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A size x size crop at a random place."""
    h, w = img.shape[-2:]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[:, top : top + size, left : left + size]


def hflip(img: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror left-right with probability p."""
    return img.flip(-1) if rng.random() < p else img


def random_resized_crop(
    img: torch.Tensor,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """SimCLR's crop: a random area fraction in `scale` and aspect in `ratio`, resized to size x size."""
    h, w = img.shape[-2:]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return resize(img[:, top : top + ch, left : left + cw], (size, size))
    return resize(img, (size, size))


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luma in all three channels."""
    return _gray(img).expand(3, -1, -1).clone()


def colour_jitter(
    img: torch.Tensor, rng: np.random.Generator, brightness: float, contrast: float, saturation: float, hue: float
) -> torch.Tensor:
    """Random brightness, contrast, saturation factors in [1 - x, 1 + x] and a hue rotation in [-hue, hue] turns."""
    b, c, s = (rng.uniform(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation))
    h = rng.uniform(-hue, hue)
    img = (img * b).clamp(0, 1)
    img = ((img - _gray(img).mean()) * c + _gray(img).mean()).clamp(0, 1)
    img = ((img - _gray(img)) * s + _gray(img)).clamp(0, 1)
    if h:  # rotate the chroma plane of YIQ
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        cos, sin = math.cos(2 * math.pi * h), math.sin(2 * math.pi * h)
        rot = torch.tensor([[1.0, 0, 0], [0, cos, -sin], [0, sin, cos]])
        m = torch.linalg.inv(yiq) @ rot @ yiq
        img = torch.einsum("ij,jhw->ihw", m, img).clamp(0, 1)
    return img


def gaussian_blur(
    img: torch.Tensor, rng: np.random.Generator, sigma: tuple[float, float] = (0.1, 2.0), kernel: int | None = None
) -> torch.Tensor:
    """SimCLR's blur: kernel about 10% of the side (or `kernel`), sigma uniform in `sigma` (scaled to the image size
    / 224)."""
    side = img.shape[-1]
    s = rng.uniform(*sigma) * side / 224
    k = kernel or max(3, (side // 10) | 1)
    x = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(x**2) / (2 * s * s))
    g = g / g.sum()
    padded = F.pad(img[None], (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    out = F.conv2d(padded, g.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    return F.conv2d(out, g.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)[0]


def normalise(img: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(img - mean) / std per channel."""
    return (img - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
