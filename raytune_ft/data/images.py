"""What every dataset source shares: `Splits` (the tensors a trial gets), `DataError`, decoding
one image (`decode_image`, used by the in-memory loaders, the Parquet converter and the Ray Data
stream), per-batch augmentation (`augment_batch`), the stratified sampling that makes every split,
and the conversion of stored images to the model's normalized input (`to_model_input`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raytune_ft import models
from raytune_ft.config import AUGMENT_CROPS
from raytune_ft.models import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


MAX_LISTED = 10  # bad files named in one error message


class DataError(ValueError):
    """A dataset the user named cannot be read."""


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor  # (n, 3, H, W) float32, normalized with (mean, std)
    y_train: torch.Tensor  # (n,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # files/folders left out under on_bad_image: skip, each "path: why"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # the test split: evaluated once after the search (holdout.py), never given to a trial
    x_test: torch.Tensor = field(default_factory=lambda: torch.empty(0, 3, 1, 1))
    y_test: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    # (crop_pct, interpolation) the images were decoded from files with (imagefolder, parquet);
    # () where decoding does not crop (arrays: digits, CIFAR, Fashion-MNIST)
    decode_view: tuple = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def without_test(self) -> Splits:
        """These splits with the test images removed: what trials, the teacher and the sampler see."""
        return dataclasses.replace(self, x_test=torch.empty(0, *self.x_test.shape[1:]),
                                   y_test=torch.empty(0, dtype=torch.int64))


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, crop: str = "resized", min_scale: float = 0.08,
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), padding: int = 4, flip: bool = True,
                  erasing: float = 0.0) -> torch.Tensor:
    """Random crop, horizontal flip and random erasing of a batch (n, C, H, W), each sample its own.

    crop "resized": random resized crop (Szegedy et al. 2015, as in timm/torchvision), resampled
    bilinearly back to (H, W): an area fraction s ~ U(min_scale, 1) with aspect ratio r,
    log r ~ U(log ratio[0], log ratio[1]), sides clipped to the image (torchvision instead retries).
    crop "pad": the CIFAR/ResNet crop (He et al. 2016): a shift of up to `padding` whole pixels each
    way, the border pixels repeated into the gap (on Fashion-MNIST's black border, as zero padding of
    the raw image). erasing p: with probability p a rectangle of 2-33 % of the area, aspect ratio in
    [0.3, 3.3], is filled with N(0, 1) noise (Zhong et al. 2017; timm's RandomErasing "pixel" mode).
    Works on normalized tensors: cropping, resampling and flipping commute with the per-channel
    affine normalization, and N(0, 1) is noise at the data's own scale. Reproducible given
    `generator` (on the CPU).
    """
    if crop not in AUGMENT_CROPS:
        raise ValueError(f"crop must be one of {AUGMENT_CROPS}, got {crop!r}")
    n, _, height, width = x.shape
    u = torch.rand(n, 5, generator=generator)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    if crop == "resized":
        area = min_scale + (1 - min_scale) * u[:, 0]
        log_r = np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * u[:, 1]
        w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
        h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        cx = (1 - w) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] coordinates, crop inside the image
        cy = (1 - h) * (2 * u[:, 3] - 1)
    else:  # whole-pixel shifts in [-padding, padding]: grid_sample then copies pixels exactly
        w = h = torch.ones(n)
        cx = torch.floor(u[:, 2] * (2 * padding + 1) - padding) * 2 / width
        cy = torch.floor(u[:, 3] * (2 * padding + 1) - padding) * 2 / height
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if erasing > 0:
        out = _erase(out, generator, erasing)
    return out



def _erase(x: torch.Tensor, generator: torch.Generator, p: float, area: tuple[float, float] = (0.02, 1 / 3),
           log_ratio: tuple[float, float] = (float(np.log(0.3)), float(np.log(1 / 0.3)))) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017) of each sample with probability p, vectorised over the batch."""
    n, c, height, width = x.shape
    u = torch.rand(n, 5, generator=generator)
    s = (area[0] + (area[1] - area[0]) * u[:, 0]) * height * width
    r = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[:, 1])
    h = torch.sqrt(s * r).round().clamp(1, height)
    w = torch.sqrt(s / r).round().clamp(1, width)
    top = torch.floor(u[:, 2] * (height - h + 1))
    left = torch.floor(u[:, 3] * (width - w + 1))
    rows, cols = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)) & (u[:, 4] < p).view(-1, 1, 1))
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return torch.where(inside[:, None].to(x.device), noise, x)


def decode_image(source: bytes | str | Path, size: int, inp: models.InputConfig, *,
                 rng: np.random.Generator | None = None, min_scale: float = 0.08) -> np.ndarray:
    """One encoded image -> (size, size, 3) uint8 RGB (EXIF orientation applied).

    rng None: the model's evaluation transform (centre crop of crop_pct of the shorter side,
    resized to `size` with the model's interpolation). rng given: random resized crop + flip.
    """
    import io

    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    # JPEG: decode at a reduced scale when the image is much larger than needed
    im.draft("RGB", (round(size / (np.sqrt(min_scale) if rng is not None else inp.crop_pct)),) * 2)
    im = ImageOps.exif_transpose(im).convert("RGB")
    width, height = im.size
    if rng is None:
        side = min(width, height) * inp.crop_pct
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        flip = False
    else:
        area = width * height * rng.uniform(min_scale, 1.0)
        r = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = min(width, np.sqrt(area * r)), min(height, np.sqrt(area / r))
        left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box, flip = (left, top, left + w, top + h), rng.random() < 0.5
    resample = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}.get(
        inp.interpolation, Image.BILINEAR)
    out = np.asarray(im.resize((size, size), resample, box=box))
    return out[:, ::-1] if flip else out


def stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about `n` samples with the class proportions of `labels`, sorted."""
    n = min(n, len(labels))
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(n * len(idx) / len(labels)))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def to_model_input(images: np.ndarray, size: int, inp: models.InputConfig) -> torch.Tensor:
    """(n, 3, h, w) uint8 or [0, 1] float -> (n, 3, size, size) float32 normalized with the model's mean/std."""
    mean = torch.tensor(inp.mean).view(1, 3, 1, 1)
    std = torch.tensor(inp.std).view(1, 3, 1, 1)
    out = torch.empty(len(images), 3, size, size)
    for i in range(0, len(images), 4096):  # in chunks: one float copy of the whole set at most
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + 4096]))
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grayscale -> 3 channels
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < x.shape[-1])
        out[i : i + 4096] = (x - mean) / std
    return out
