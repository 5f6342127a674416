"""Full Fashion-MNIST written as a class-sorted ImageFolder, and checked against the IDX files.

Writes `OUT/train/<class>/<n>.png` (the 60,000 training images) and `OUT/test/<class>/<n>.png`
(the official 10,000 t10k images) from Debian's dataset-fashion-mnist, class folders named after
the classes ('/' in "T-shirt/top" becomes '-'), files numbered class by class: the layout a user's
own dataset comes in, so a loader that forgot to shuffle would train on one class at a time. Then
it loads the folder through `dataset: imagefolder` and the IDX files through `dataset:
fashion_mnist` (`data.load_splits`, the path every trial takes) and checks that the two give the
same images with the same class names in every split's pool: the same multiset of (class, pixels)
over train + val, and the same test split.

    PYTHONPATH=. python benchmarks/fashion_mnist_imagefolder.py /work/fmnist_folder
    python -m raytune_ft.search --space fashion_mnist --set dataset=imagefolder \
        --set data_root=/work/fmnist_folder ...   # the space on the folder
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from raytune_ft import data
from raytune_ft.config import TrialConfig
from raytune_ft.data.memory import FASHION_MNIST_FILES


def folder_name(cls: str) -> str:
    return cls.replace("/", "-")


def write(out: Path, root: Path) -> None:
    for split, (images_file, labels_file) in FASHION_MNIST_FILES.items():
        images, labels = data.read_idx(root / images_file), data.read_idx(root / labels_file)
        for label, cls in enumerate(data.FASHION_MNIST_CLASSES):
            folder = out / split / folder_name(cls)
            folder.mkdir(parents=True, exist_ok=True)
            for n, i in enumerate(np.flatnonzero(labels == label)):
                Image.fromarray(images[i]).save(folder / f"{n:05d}.png")


def fingerprint(splits, *names: str) -> Counter:
    """The multiset of (class name, pixel hash) over the named splits of `splits`."""
    return Counter((folder_name(splits.class_names[int(label)]), hashlib.sha1(row.tobytes()).hexdigest())
                   for name in names
                   for row, label in zip(getattr(splits, f"x_{name}").numpy(), getattr(splits, f"y_{name}").tolist(),
                                         strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to write (created)")
    p.add_argument("--data-root", type=Path, default=Path(data.FASHION_MNIST_ROOT))
    args = p.parse_args()
    started = time.perf_counter()
    if not (args.out / "test").is_dir():
        write(args.out, args.data_root)
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    folder = data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(args.out), image_size=28,
                                          model="compact_cnn_16"))
    loaded = time.perf_counter() - started
    idx = data.load_splits(TrialConfig(dataset="fashion_mnist", data_root=str(args.data_root), image_size=28,
                                       model="compact_cnn_16"))
    sizes = {name: (len(getattr(folder, f"y_{name}")), len(getattr(idx, f"y_{name}")))
             for name in ("train", "val", "test")}
    print(f"imagefolder loaded in {loaded:.0f} s; sizes (folder, idx): {sizes}")
    same_pool = fingerprint(folder, "train", "val") == fingerprint(idx, "train", "val")
    same_test = fingerprint(folder, "test") == fingerprint(idx, "test")
    val_classes = Counter(folder.class_names[int(c)] for c in folder.y_val.tolist())
    print(f"same train+val pool: {same_pool}; same test split: {same_test}; "
          f"folder val per class: {dict(sorted(val_classes.items()))}")
    if not (same_pool and same_test):
        raise SystemExit("the ImageFolder and the IDX files do not give the same images")


if __name__ == "__main__":
    main()
