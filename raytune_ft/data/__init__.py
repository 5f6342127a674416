"""The datasets a trial trains on, behind one dispatch.

Every `dataset` name (config.DATASETS) has one source: the in-memory ones (`memory.py`: digits,
imagefolder, cifar10/100, fashion_mnist) load train/val/test tensors once; `parquet` (`parquet.py`)
streams its training rows through Ray Data and holds only val/test in memory. Callers ask here —
`load_splits`, `check_dataset`, `class_names`, `streams`, `calibration_images` — and never branch
on the name.
What the sources share (`Splits`, `DataError`, decoding, augmentation) is in `images.py`.
"""

from __future__ import annotations

import torch

from raytune_ft.config import TrialConfig
from raytune_ft.data import memory, parquet
from raytune_ft.data.images import (
    MAX_LISTED,
    DataError,
    Splits,
    augment_batch,
    decode_image,
    stratified_take,
    to_model_input,
)
from raytune_ft.data.memory import CIFAR, FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, read_idx, scan_imagefolder

STREAMED = ("parquet",)  # datasets whose training rows stream through Ray Data (not held in memory)

__all__ = ["CIFAR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_ROOT", "MAX_LISTED", "STREAMED", "DataError", "Splits",
           "augment_batch", "calibration_images", "check_dataset", "class_names", "decode_image", "load_splits",
           "read_idx", "scan_imagefolder", "stratified_take", "streams", "to_model_input"]


def streams(cfg: TrialConfig) -> bool:
    """Whether `cfg.dataset`'s training rows stream through Ray Data (then `load_splits` holds an
    empty training split, and trials read `parquet.ray_datasets(cfg)["train"]`)."""
    return cfg.dataset in STREAMED


def load_splits(cfg: TrialConfig) -> Splits:
    """The splits a trial gets for `cfg` (memory.load_splits; for a streamed dataset, its val and
    test in memory and an empty train split: parquet.parquet_splits)."""
    return parquet.parquet_splits(cfg) if streams(cfg) else memory.load_splits(cfg)


def check_dataset(cfg: TrialConfig) -> None:
    """Checks that can fail before any Ray work starts (layout, class lists, unreadable files,
    Parquet schema and labels); raises DataError naming the file or key."""
    if streams(cfg):
        parquet.parquet_info(cfg)
    else:
        memory.check_dataset(cfg)


def class_names(cfg: TrialConfig) -> tuple[str, ...] | None:
    """The dataset's class names read cheaply (no images decoded), or None where that needs loading."""
    return parquet.parquet_info(cfg).class_names if streams(cfg) else memory.class_names(cfg)


def calibration_images(cfg: TrialConfig, splits: Splits, count: int) -> torch.Tensor:
    """Training images for int8 calibration: `splits.x_train` when it is in memory, else (a streamed
    dataset) the first `count` training rows read from storage in the validation split's view
    (`parquet.parquet_calibration_images`). Never validation or test images."""
    if len(splits.x_train) or not streams(cfg):
        return splits.x_train
    return parquet.parquet_calibration_images(cfg, count, decode_view=splits.decode_view)
