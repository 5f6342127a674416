"""A stratified subset of Fashion-MNIST in its own IDX format, small enough to travel to the GPU
machine beside the wheels (64 MiB per call in all: the four original files are 29 MiB, Ray alone
43 MiB), read there by raytune_ft's own loader (dataset: fashion_mnist, data_root: gpu_data/fashion-mnist).

    python tools/gpu/gpu_data.py                      # 12,000 train + 2,000 t10k images -> gpu_data/
    python tools/gpu/gpu_data.py --train 15000 --test 2000

The rows are drawn per class in equal numbers (seed 0) from the official train and t10k files and
written in the files' order. It then prints what the device tool's run would carry: the working tree
(tracked and untracked files git does not ignore) plus gpu_wheels/ and gpu_data/.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
LIMIT_MIB = 64  # the device tool's carry limit per call


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Unsigned-byte IDX: magic 0x00 0x00 0x08 ndim, big-endian int32 sizes, the bytes; gzip level 9."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes(), compresslevel=9))


def stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(labels)
    per_class = n // len(classes)
    keep = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(keep))


def carry_mib(paths: list[Path]) -> dict[str, float]:
    """MiB per part of what the device tool sends: the working tree git shows, and each carried path."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    tree = sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file())
    sizes = {"working tree": tree / 2**20}
    for path in paths:
        sizes[path.name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return sizes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=12000, help="training images (of 60,000)")
    p.add_argument("--test", type=int, default=2000, help="t10k test images (of 10,000)")
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--dest", type=Path, default=ROOT / "gpu_data" / "fashion-mnist")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    args.dest.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("test", args.test)):
        images_name, labels_name = FILES[split]
        images, labels = read_idx(args.source / images_name), read_idx(args.source / labels_name)
        keep = stratified(labels, n, rng)
        write_idx(args.dest / images_name, images[keep])
        write_idx(args.dest / labels_name, labels[keep])
        print(f"{split}: {len(keep)} of {len(labels)} images, {np.bincount(labels[keep]).tolist()} per class")
    sizes = carry_mib([ROOT / "gpu_wheels", args.dest.parent])
    total = sum(sizes.values())
    print("carried per call: " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()) +
          f" = {total:.1f} MiB of {LIMIT_MIB} ({LIMIT_MIB - total:.1f} MiB to spare)")
    if total > LIMIT_MIB:
        print("gpu_data: over the device tool's limit; lower --train", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
