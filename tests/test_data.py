import numpy as np
import pytest
import torch
from PIL import Image

from raytune_ft import data
from raytune_ft.config import TrialConfig


def test_digits_split_is_stratified_disjoint_and_reproducible():
    cfg = TrialConfig(image_size=16, val_fraction=0.25)
    a, b = data.load_splits(cfg), data.load_splits(cfg)
    assert a.x_train.shape[1:] == (3, 16, 16) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_val) == 1797
    assert abs(len(a.x_val) - 0.25 * 1797) <= 10
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    counts = torch.bincount(a.y_val, minlength=10)
    assert counts.min() >= 40  # every class in validation
    other = data.load_splits(TrialConfig(image_size=16, val_fraction=0.25, data_seed=1))
    assert not torch.equal(other.y_val, a.y_val)


def test_max_samples_takes_a_stratified_subset():
    s = data.load_splits(TrialConfig(max_samples=200))
    assert 190 <= len(s.x_train) + len(s.x_val) <= 210
    assert set(s.y_train.tolist()) == set(range(10))


def _write_folder(root, classes, n=4, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_reads_classes_in_sorted_order(tmp_path):
    _write_folder(tmp_path, ["zebra", "ant", "café au lait"])
    s = data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=16, val_fraction=0.25))
    assert s.class_names == ("ant", "café au lait", "zebra")
    assert len(s.x_train) + len(s.x_val) == 12 and s.x_train.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "one sub-folder per class, found 0"),
    ],
)
def test_imagefolder_bad_root_is_named(tmp_path, setup, message):
    root = tmp_path / "images"
    setup(root)
    cfg = TrialConfig(dataset="imagefolder", data_root=str(root))
    with pytest.raises(data.DataError, match=message):
        data.check_dataset(cfg)


def test_imagefolder_corrupt_file_and_empty_class_are_named(tmp_path):
    _write_folder(tmp_path, ["a", "b"])
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(data.DataError, match="broken.png"):
        data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(tmp_path)))
    (tmp_path / "b" / "broken.png").unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(data.DataError, match="class folder .*c' is empty"):
        data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(tmp_path)))
