"""Datasets a trial trains on, as in-memory tensors with a fixed, stratified train/val split.

`digits` is scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside scikit-learn, no
download), upsampled to `image_size` and repeated to 3 channels. `imagefolder` reads a folder
with one sub-folder per class. Inputs are deterministic (no augmentation), so the teacher's
logits can be computed once per experiment and indexed by sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raytune_ft.config import TrialConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A dataset the user named cannot be read."""


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor  # (n, 3, H, W) float32, normalized
    y_train: torch.Tensor  # (n,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_splits(cfg: TrialConfig) -> Splits:
    """The train/val tensors for `cfg` (dataset, image_size, val_fraction, max_samples, data_seed)."""
    if cfg.dataset == "digits":
        images, labels, names = _digits()
    elif cfg.dataset == "imagefolder":
        images, labels, names = _imagefolder(cfg.data_root, cfg.image_size)
    else:  # config.py validates the name; this guards a new entry without a loader
        raise AssertionError(cfg.dataset)
    rng = np.random.default_rng(cfg.data_seed)
    keep = _stratified_take(labels, cfg.max_samples, rng) if cfg.max_samples else np.arange(len(labels))
    images, labels = images[keep], labels[keep]
    val = _stratified_take(labels, max(1, round(cfg.val_fraction * len(labels))), rng)
    train = np.setdiff1d(np.arange(len(labels)), val)
    x = _to_model_input(images, cfg.image_size)
    y = torch.as_tensor(labels, dtype=torch.int64)
    return Splits(x[train], y[train], x[val], y[val], names)


def check_dataset(cfg: TrialConfig) -> None:
    """Cheap checks that can fail before any Ray work starts."""
    if cfg.dataset == "imagefolder":
        _class_dirs(cfg.data_root)


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)  # (n, 8, 8) in [0, 1]
    return images[:, None].repeat(3, axis=1), d.target.astype(np.int64), tuple(str(c) for c in range(10))


def _class_dirs(root: str | None) -> list[Path]:
    if not root:
        raise DataError("dataset imagefolder needs data_root (a folder with one sub-folder per class)")
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"data_root {root!r} does not exist or is not a folder")
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"data_root {root!r} must hold one sub-folder per class, found {len(classes)}")
    return classes


def _imagefolder(root: str | None, size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image

    classes = _class_dirs(root)
    images, labels = [], []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if not files:
            raise DataError(f"class folder {str(folder)!r} is empty")
        for file in files:
            try:
                with Image.open(file) as im:
                    rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
            except Exception as err:
                raise DataError(f"cannot read image {str(file)!r}: {err}") from err
            images.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(p.name for p in classes)


def _stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about `n` samples with the class proportions of `labels`, sorted."""
    n = min(n, len(labels))
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(n * len(idx) / len(labels)))
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def _to_model_input(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
