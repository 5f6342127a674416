"""BatchNorm recalibration on class-sorted ImageFolders (issue 11): val_acc with the default
`bn_recalibration_batches` (8) against recalibration off (0), same config and data otherwise.

Datasets, both written as class-sorted ImageFolders (train/ + val/ folders):
  - Fashion-MNIST (Debian's dataset-fashion-mnist): a stratified 4,000 train / 1,000 val subset
    of the official training set;
  - scikit-learn's digits: the split `load_splits` makes for data_seed 0 (1,437 / 360).
EfficientNet-Lite0 (ImageNet weights), 32 px, lr 5e-3, batch 64, 2 epochs, `train.fit` directly.

    python benchmarks/bn_recalibration.py [--out docs/bn_recalibration.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raytune_ft import data, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import holdout

FASHION = Path("/usr/share/datasets/fashion-mnist")



def _write(root: Path, images: np.ndarray, labels: np.ndarray, val: set[int]) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / ("val" if i in val else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(folder / f"{i:05d}.png")


def fashion_folder(root: Path) -> None:
    images = data.read_idx(FASHION / "train-images-idx3-ubyte.gz")
    labels = data.read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(0)
    keep = data.stratified_take(labels, 5000, rng)
    images, labels = images[keep], labels[keep]
    val = set(data.stratified_take(labels, 1000, rng).tolist())
    _write(root, images, labels, val)


def digits_folder(root: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    labels = d.target
    val = set(data.stratified_take(labels, round(0.2 * len(labels)), np.random.default_rng(0)).tolist())
    _write(root, np.round(d.images / 16.0 * 255).astype(np.uint8), labels, val)


def val_acc(root: Path, recalibration: int) -> tuple[float, int, float]:
    cfg = TrialConfig(dataset="imagefolder", data_root=str(root), image_size=32, lr=5e-3, batch_size=64, epochs=2,
                      bn_recalibration_batches=recalibration)
    splits = data.load_splits(cfg)
    torch.manual_seed(0)
    model = models.build_model(cfg.model, splits.num_classes, weights="pretrained")
    started = time.perf_counter()
    metrics = train.fit(cfg, model, splits, head_names=models.head_parameter_names(model), report=lambda *a: None)
    return metrics["val_acc"], len(splits.y_val), time.perf_counter() - started



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.add_argument("--datasets", nargs="+", default=["fashion", "digits"], choices=["fashion", "digits"])
    p.add_argument("--settings", nargs="+", type=int, default=[8, 0], help="bn_recalibration_batches values")
    args = p.parse_args()
    torch.set_num_threads(2)
    header = " | ".join(f"bn_recalibration_batches {r}" for r in args.settings)
    rows = [f"| dataset (class-sorted ImageFolder) | {header} |", "|---" * (1 + len(args.settings)) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for key, name, make in (("fashion", "Fashion-MNIST, 4,000 train / 1,000 val", fashion_folder),
                                ("digits", "scikit-learn digits, 1,437 train / 360 val", digits_folder)):
            if key not in args.datasets:
                continue
            root = Path(tmp) / name.split(",")[0].replace(" ", "_")
            make(root)
            cells = []
            for recal in args.settings:
                acc, n, seconds = val_acc(root, recal)
                low, high = holdout.wilson_interval(round(acc * n), n)
                cells.append(f"{acc:.3f} [{low:.3f}, {high:.3f}]")
                print(f"{name}: bn_recalibration_batches={recal}: val_acc {acc:.4f} ({seconds:.0f} s)", flush=True)
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(rows) + "\n\nval_acc [Wilson 95 % interval]; EfficientNet-Lite0, 32 px, lr 5e-3, 2 epochs.\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
