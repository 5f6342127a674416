"""In-memory datasets a trial trains on (`load_splits`); images.py holds the image decoding and
augmentation they share with the streamed Parquet path (parquet.py).

Three splits: train (fit), val (selection, early stopping, the sampler) and test (evaluated once,
after the search, by holdout.py; `Splits.without_test()` is what trials get). Normalized with the
model's own mean/std: `digits` (scikit-learn, embedded), `imagefolder` (one sub-folder per class,
optionally under `train/` + `val/` + `test/`), `cifar10` / `cifar100` (a local torchvision root,
read by torchvision.datasets.CIFAR10/100, with its official test batch), `fashion_mnist` (the four
IDX files, e.g. Debian's dataset-fashion-mnist). Stored inputs are deterministic;
`images.augment_batch` adds random resized crops and flips per batch.
"""

from __future__ import annotations

import gzip
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from raytune_ft import models
from raytune_ft.config import TrialConfig
from raytune_ft.data.images import (
    IMAGE_EXTENSIONS,
    MAX_LISTED,
    DataError,
    Splits,
    decode_image,
    stratified_take,
    to_model_input,
)

IMAGENET_MEAN = models.IMAGENET_MEAN
IMAGENET_STD = models.IMAGENET_STD
VAL_DIR_NAMES = ("val", "valid", "validation")
TEST_DIR_NAME = "test"
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts the files
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


@dataclass
class _Pool:
    """Images before the train/val split: (n, 3, h, w) uint8 or float in [0, 1]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    val_images: np.ndarray | None = None  # given by the dataset (imagefolder train/ + val/)
    val_labels: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)
    test_images: np.ndarray | None = None  # given by the dataset (test/ folder, CIFAR test batch, t10k)
    test_labels: np.ndarray | None = None


def load_splits(cfg: TrialConfig) -> Splits:
    """The train/val/test tensors for `cfg` (dataset, data_root, image_size, val_fraction,
    test_fraction, max_samples, data_seed, on_bad_image), normalized with the mean/std of
    `cfg.model`'s pretrained weights.

    Split rule (one rng seeded with data_seed, so the split is the same in every process): a
    stratified max_samples subset of the training pool; then validation, a stratified val_fraction
    of it (or the dataset's own val split); then test, a stratified test_fraction of the pool taken
    from what is left (or the dataset's own test split, which max_samples does not cap); the rest
    trains. Validation is drawn first, so it is the same split as before test existed."""
    inp = models.input_config(cfg.model)
    if cfg.dataset == "digits":
        pool = _Pool(*_digits())
    elif cfg.dataset == "imagefolder":
        pool = _load_imagefolder(cfg, inp)
    elif cfg.dataset in CIFAR:
        pool = _load_cifar(cfg)
    elif cfg.dataset == "fashion_mnist":
        pool = _load_fashion_mnist(cfg)
    else:  # config.py validates the name; this guards a new entry without a loader
        raise AssertionError(cfg.dataset)
    rng = np.random.default_rng(cfg.data_seed)
    images, labels = pool.images, pool.labels
    if pool.val_images is None:
        keep = stratified_take(labels, cfg.max_samples, rng) if cfg.max_samples else np.arange(len(labels))
        images, labels = images[keep], labels[keep]
        val = stratified_take(labels, max(1, round(cfg.val_fraction * len(labels))), rng)
        rest = np.setdiff1d(np.arange(len(labels)), val)
        x_train, y_train, x_val, y_val = images[rest], labels[rest], images[val], labels[val]
        test_share = cfg.test_fraction * len(labels) / max(1, len(rest))  # test_fraction is of the whole pool
    else:  # the folder's own split; max_samples keeps the train:val proportion
        x_train, y_train, x_val, y_val = images, labels, pool.val_images, pool.val_labels
        if cfg.max_samples and cfg.max_samples < len(y_train) + len(y_val):
            share = cfg.max_samples / (len(y_train) + len(y_val))
            t = stratified_take(y_train, max(1, round(share * len(y_train))), rng)
            v = stratified_take(y_val, max(1, round(share * len(y_val))), rng)
            x_train, y_train, x_val, y_val = x_train[t], y_train[t], x_val[v], y_val[v]
        test_share = cfg.test_fraction
    if pool.test_images is not None:
        x_test, y_test = pool.test_images, pool.test_labels
        if cfg.max_test_samples and cfg.max_test_samples < len(y_test):
            keep = stratified_take(y_test, cfg.max_test_samples, np.random.default_rng(cfg.data_seed + 1))
            x_test, y_test = x_test[keep], y_test[keep]
    elif cfg.test_fraction > 0:
        test = stratified_take(y_train, max(1, round(test_share * len(y_train))), rng)
        rest = np.setdiff1d(np.arange(len(y_train)), test)
        x_test, y_test, x_train, y_train = x_train[test], y_train[test], x_train[rest], y_train[rest]
    else:
        x_test, y_test = x_train[:0], y_train[:0]
    _check_memory(len(y_train) + len(y_val) + len(y_test), cfg)
    return Splits(
        to_model_input(x_train, cfg.image_size, inp), torch.as_tensor(y_train, dtype=torch.int64),
        to_model_input(x_val, cfg.image_size, inp), torch.as_tensor(y_val, dtype=torch.int64),
        pool.class_names, tuple(pool.skipped), tuple(inp.mean), tuple(inp.std),
        to_model_input(x_test, cfg.image_size, inp), torch.as_tensor(y_test, dtype=torch.int64),
        (inp.crop_pct, inp.interpolation) if cfg.dataset == "imagefolder" else (),
    )


def check_dataset(cfg: TrialConfig) -> None:
    """Checks that can fail before any Ray work starts: the folder layout, class lists, empty class
    folders, files that are not images (headers only), CIFAR files, Parquet schema and labels.
    With on_bad_image: error, the first problem raises DataError naming every bad file."""
    if cfg.dataset == "imagefolder":
        scan_imagefolder(cfg.data_root, cfg.on_bad_image, verify=True)
    elif cfg.dataset in CIFAR:
        _cifar_files(cfg)
    elif cfg.dataset == "fashion_mnist":
        _fashion_mnist_files(cfg)


def class_names(cfg: TrialConfig) -> tuple[str, ...] | None:
    """The dataset's class names, read cheaply (no images decoded); None for a dataset without a
    cheap way (the loaded data is then compared after loading)."""
    if cfg.dataset == "digits":
        return tuple(str(c) for c in range(10))
    if cfg.dataset == "imagefolder":
        return scan_imagefolder(cfg.data_root, cfg.on_bad_image, verify=False).class_names
    if cfg.dataset in CIFAR:
        return _read_cifar(cfg, train=False)[2]  # the test split: the smaller one
    return None


# --- imagefolder --------------------------------------------------------------------------------


@dataclass
class FolderLayout:
    """The files of an image folder: (path, label) per split, after bad files were dealt with."""

    root: Path
    class_names: tuple[str, ...]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]] | None  # None: split by val_fraction
    skipped: list[str]
    test: list[tuple[Path, int]] | None = None  # None: split by test_fraction


def scan_imagefolder(root: str | None, on_bad_image: str, *, verify: bool) -> FolderLayout:
    """Read the layout of `root`: one sub-folder per class, or `train/` (+ `val/`, + `test/`) each
    holding them.

    verify: open every file's header (cheap) to find files that are not images. Empty class
    folders and unreadable files raise DataError (all named) unless on_bad_image == "skip".
    """
    if not root:
        raise DataError("dataset imagefolder needs data_root (a folder with one sub-folder per class)")
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"data_root {root!r} does not exist or is not a folder")
    problems: list[str] = []
    train_root = path / "train"
    if train_root.is_dir() and _subdirs(train_root):
        val_root = next((path / n for n in VAL_DIR_NAMES if (path / n).is_dir()), None)
        test_root = path / TEST_DIR_NAME if (path / TEST_DIR_NAME).is_dir() else None
    else:
        train_root, val_root, test_root = path, None, None
    train_classes = _class_folders(train_root)
    names = tuple(train_classes)
    split_files = {"train": _class_files(train_classes, problems, verify)}
    for split, other_root in (("val", val_root), ("test", test_root)):
        if other_root is None:
            continue
        other = _class_folders(other_root)
        if set(other) != set(train_classes):
            only_train = sorted(set(train_classes) - set(other))
            only_other = sorted(set(other) - set(train_classes))
            raise DataError(f"the class folders of {str(train_root)!r} and {str(other_root)!r} differ: only in "
                            f"train: {only_train}, only in {split}: {only_other}")
        split_files[split] = _class_files(other, problems, verify)
    if problems and on_bad_image != "skip":
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {len(problems) - MAX_LISTED} more"
                                                      if len(problems) > MAX_LISTED else "")
        raise DataError(f"{len(problems)} bad file(s)/folder(s) in data_root {root!r}: {listed}. Fix or remove "
                        "them, or set on_bad_image: skip to leave them out")
    # a class without any training image is dropped (on_bad_image: skip; else it raised above)
    kept = [c for c in names if split_files["train"][c]]
    if len(kept) < 2:
        raise DataError(f"data_root {root!r} must hold at least 2 class folders with images, found {len(kept)}")
    problems += [f"{f}: class {c!r} has no training images" for c in names if c not in kept
                 for split in ("val", "test") for f in split_files.get(split, {}).get(c, [])]
    label = {c: i for i, c in enumerate(kept)}
    lists = {s: [(f, label[c]) for c in kept for f in files[c]] for s, files in split_files.items()}
    return FolderLayout(path, tuple(kept), lists["train"], lists.get("val"), problems, lists.get("test"))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path) -> dict[str, Path]:
    """Class name (Unicode NFC, so macOS and Linux spellings agree) -> folder, sorted by name."""
    classes = {unicodedata.normalize("NFC", p.name): p for p in _subdirs(folder)}
    if len(classes) < 2:
        raise DataError(f"{str(folder)!r} must hold one sub-folder per class, found {len(classes)}")
    return dict(sorted(classes.items()))


def _class_files(classes: dict[str, Path], problems: list[str], verify: bool) -> dict[str, list[Path]]:
    from PIL import Image

    out = {}
    for name, folder in classes.items():
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            problems.append(f"class folder {str(folder)!r} is empty (no image files)")
        good = []
        for file in files:
            if verify:
                try:
                    with Image.open(file):
                        pass
                except Exception as err:
                    problems.append(f"{file}: not an image ({type(err).__name__})")
                    continue
            good.append(file)
        out[name] = good
    return out


def _load_imagefolder(cfg: TrialConfig, inp: models.InputConfig) -> _Pool:
    layout = scan_imagefolder(cfg.data_root, cfg.on_bad_image, verify=False)
    skipped = list(layout.skipped)

    def read(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        images, labels, bad = [], [], []
        for file, label in files:
            try:
                images.append(decode_image(file, cfg.image_size, inp).transpose(2, 0, 1))
            except Exception as err:
                bad.append(f"{file}: cannot be decoded ({type(err).__name__}: {err})")
                continue
            labels.append(label)
        if bad and cfg.on_bad_image != "skip":
            raise DataError(f"{len(bad)} unreadable image(s) in data_root {cfg.data_root!r}: "
                            + "; ".join(bad[:MAX_LISTED]) + ". Fix or remove them, or set on_bad_image: skip")
        skipped.extend(bad)
        if not labels:
            raise DataError(f"no readable images in data_root {cfg.data_root!r}")
        return np.stack(images), np.asarray(labels, dtype=np.int64)

    if cfg.max_samples:  # decode only the files that load_splits would keep (same stratified take)
        total = len(layout.train) + len(layout.val or [])
        for name in ("train", "val"):
            files = getattr(layout, name)
            if files and cfg.max_samples < total:
                n = cfg.max_samples if layout.val is None else max(1, round(cfg.max_samples * len(files) / total))
                keep = stratified_take(np.asarray([label for _, label in files]), n,
                                        np.random.default_rng(cfg.data_seed))
                setattr(layout, name, [files[i] for i in keep])
    images, labels = read(layout.train)
    pool = _Pool(images, labels, layout.class_names, skipped=skipped)
    if layout.val is not None:
        pool.val_images, pool.val_labels = read(layout.val)
    if layout.test is not None:  # the folder's own test split, never capped by max_samples
        pool.test_images, pool.test_labels = read(layout.test)
    return pool


# --- digits and CIFAR (torchvision.datasets) --------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)  # (n, 8, 8) in [0, 1]
    return images[:, None].repeat(3, axis=1), d.target.astype(np.int64), tuple(str(c) for c in range(10))


# dataset -> (the torchvision.datasets class that reads it, size of the python version archive)
CIFAR = {"cifar10": ("CIFAR10", "163 MB"), "cifar100": ("CIFAR100", "161 MB")}


def _cifar_class(dataset: str) -> type:
    import torchvision.datasets as tvd

    return getattr(tvd, CIFAR[dataset][0])


def _cifar_files(cfg: TrialConfig) -> list[Path]:
    """The CIFAR files torchvision reads under data_root (training batches, meta, test batch), downloaded
    first when cfg.download, or a DataError saying how to get them."""
    size = CIFAR[cfg.dataset][1]
    cls = _cifar_class(cfg.dataset)
    folder = cls.base_folder
    if not cfg.data_root:
        raise DataError(f"dataset {cfg.dataset} needs data_root: the torchvision root folder that holds {folder}/")
    names = [name for name, _ in cls.train_list] + [cls.meta["filename"]] + [name for name, _ in cls.test_list]
    files = [Path(cfg.data_root) / folder / name for name in names]
    missing = [f for f in files if not f.is_file()]
    if missing and cfg.download:
        print(f"downloading {cfg.dataset} ({size}) into {cfg.data_root}", flush=True)
        try:
            cls(cfg.data_root, train=True, download=True)
        except Exception as err:
            raise DataError(f"downloading {cfg.dataset} into {cfg.data_root!r} failed: {err}") from err
        missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{cfg.dataset} not found: {str(missing[0])!r} is missing (data_root must be a torchvision root "
            f"holding {folder}/). Get it once with --set download=true (or download: true under fixed: in the "
            f"space file; {size} from https://www.cs.toronto.edu/~kriz/), or extract the python version "
            f"archive into {cfg.data_root!r}")
    return files


def _read_cifar(cfg: TrialConfig, *, train: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One split of CIFAR as torchvision.datasets.CIFAR10/100 reads it (files checked against their
    published MD5 sums): (n, 3, 32, 32) uint8 images, int64 labels, the class names."""
    _cifar_files(cfg)
    try:
        split = _cifar_class(cfg.dataset)(cfg.data_root, train=train)
    except Exception as err:  # a file changed (MD5) or not in the CIFAR python format
        raise DataError(f"cannot read {cfg.dataset} under {cfg.data_root!r} ({'training' if train else 'test'} "
                        f"split): {type(err).__name__}: {err}") from err
    names = tuple(split.classes)
    images = np.ascontiguousarray(np.asarray(split.data, dtype=np.uint8).transpose(0, 3, 1, 2))  # HWC -> CHW
    labels = np.asarray(split.targets, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        raise DataError(f"CIFAR labels out of range [0, {len(names)}) in {cfg.dataset} under {cfg.data_root!r} at "
                        f"rows {bad[:MAX_LISTED].tolist()}")
    return images, labels, names


def _load_cifar(cfg: TrialConfig) -> _Pool:
    """The CIFAR training set, validation a stratified val_fraction of it; test is the official test batch."""
    x_train, y_train, names = _read_cifar(cfg, train=True)
    x_test, y_test, _ = _read_cifar(cfg, train=False)
    return _Pool(x_train, y_train, names, test_images=x_test, test_labels=y_test)


def _fashion_mnist_files(cfg: TrialConfig) -> dict[str, tuple[Path, Path]]:
    """split -> (images, labels) IDX .gz files under data_root (default: Debian's install folder)."""
    root = Path(cfg.data_root or FASHION_MNIST_ROOT)
    files = {split: (root / images, root / labels) for split, (images, labels) in FASHION_MNIST_FILES.items()}
    missing = [str(f) for pair in files.values() for f in pair if not f.is_file()]
    if missing:
        raise DataError(f"fashion_mnist not found: {missing[0]!r} is missing. Install it with "
                        f"`apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_ROOT}), or set data_root to "
                        f"a folder holding {', '.join(f for pair in FASHION_MNIST_FILES.values() for f in pair)}")
    return files


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzip-compressed): big-endian magic 0x0000 08 D (unsigned
    bytes, D dimensions), D big-endian int32 sizes, then the uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes())
        zero, dtype, ndim = raw[0:2], raw[2], raw[3]
        if zero != b"\0\0" or dtype != 0x08:
            raise ValueError(f"magic {raw[:4].hex()} is not an unsigned-byte IDX file")
        shape = tuple(int(v) for v in np.frombuffer(raw, ">i4", count=ndim, offset=4))
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()  # writable
    except (OSError, ValueError, IndexError) as err:
        raise DataError(f"cannot read IDX file {str(path)!r}: {err}") from err


def _load_fashion_mnist(cfg: TrialConfig) -> _Pool:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 official test images (t10k),
    28x28 grayscale, as (n, 1, 28, 28) uint8 (to_model_input repeats the channel 3 times)."""
    splits = {}
    for split, (images_path, labels_path) in _fashion_mnist_files(cfg).items():
        images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{str(images_path)!r} / {str(labels_path)!r}: expected n x 28 x 28 images and n labels "
                            f"in [0, 10), got {images.shape} and {labels.shape}")
        splits[split] = (images[:, None], labels)
    return _Pool(*splits["train"], FASHION_MNIST_CLASSES, test_images=splits["test"][0],
                 test_labels=splits["test"][1])


# --- shared helpers ------------------------------------------------------------------------------


def _check_memory(n: int, cfg: TrialConfig) -> None:
    """Refuse an in-memory dataset that would not fit, before allocating it."""
    need = n * 3 * cfg.image_size**2 * 4
    have = _available_memory()
    if have is not None and need > 0.6 * have:
        raise DataError(f"{n} images at image_size {cfg.image_size} need {need / 2**30:.1f} GiB as float32 tensors, "
                        f"{have / 2**30:.1f} GiB are free: lower image_size or max_samples, or convert the "
                        "images to Parquet (python -m raytune_ft.to_parquet) and use dataset: parquet (streamed)")


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


