import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from raytune_ft import data
from raytune_ft.config import TrialConfig
from raytune_ft.data import parquet


def test_digits_split_is_stratified_disjoint_and_reproducible():
    cfg = TrialConfig(image_size=16, val_fraction=0.25, test_fraction=0.0)
    a, b = data.load_splits(cfg), data.load_splits(cfg)
    assert a.x_train.shape[1:] == (3, 16, 16) and a.num_classes == 10
    assert len(a.x_train) + len(a.x_val) == 1797
    assert abs(len(a.x_val) - 0.25 * 1797) <= 10
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    counts = torch.bincount(a.y_val, minlength=10)
    assert counts.min() >= 40  # every class in validation
    other = data.load_splits(TrialConfig(image_size=16, val_fraction=0.25, test_fraction=0.0, data_seed=1))
    assert not torch.equal(other.y_val, a.y_val)


def test_max_samples_takes_a_stratified_subset():
    s = data.load_splits(TrialConfig(max_samples=200, test_fraction=0.0))
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
    s = data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=16, val_fraction=0.25,
                                     test_fraction=0.0))
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


# --- imagefolder splits, class names, bad data ---------------------------------------------------


def test_imagefolder_train_val_folders_with_unicode_class_names(tmp_path):
    classes = ["chat noir", "Ähre", "東京"]
    _write_folder(tmp_path / "train", classes, n=5)
    _write_folder(tmp_path / "val", classes, n=2)
    cfg = TrialConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=16, weights="none", test_fraction=0.0)
    data.check_dataset(cfg)
    s = data.load_splits(cfg)
    assert s.class_names == tuple(sorted(classes))
    assert len(s.x_train) == 15 and len(s.x_val) == 6  # the folder's own split, not val_fraction
    assert torch.bincount(s.y_val).tolist() == [2, 2, 2] and s.skipped == ()


def test_imagefolder_class_lists_must_match_between_splits(tmp_path):
    _write_folder(tmp_path / "train", ["cat", "dog", "owl"], n=1)
    _write_folder(tmp_path / "val", ["cat", "dog", "fox"], n=1)
    cfg = TrialConfig(dataset="imagefolder", data_root=str(tmp_path))
    with pytest.raises(data.DataError, match=r"only in train: \['owl'\], only in val: \['fox'\]"):
        data.check_dataset(cfg)


def _bad_folder(root):
    _write_folder(root, ["a", "b", "c"], n=4)
    (root / "a" / "not_an_image.png").write_bytes(b"plain text")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])  # header fine, pixels missing
    (root / "empty").mkdir()
    return root


def test_bad_images_stop_before_training_naming_every_file(tmp_path):
    root = _bad_folder(tmp_path)
    cfg = TrialConfig(dataset="imagefolder", data_root=str(root), image_size=16)
    with pytest.raises(data.DataError, match="2 bad file") as err:  # header check, before Ray
        data.check_dataset(cfg)
    assert "not_an_image.png" in str(err.value) and "empty" in str(err.value) and "on_bad_image: skip" in str(err.value)
    (root / "a" / "not_an_image.png").unlink()
    (root / "empty").rmdir()
    data.check_dataset(cfg)  # the truncated file has a valid header: caught when decoding
    with pytest.raises(data.DataError, match="truncated.png"):
        data.load_splits(cfg)


def test_on_bad_image_skip_goes_on_and_lists_what_it_skipped(tmp_path):
    root = _bad_folder(tmp_path)
    cfg = TrialConfig(dataset="imagefolder", data_root=str(root), image_size=16, on_bad_image="skip", test_fraction=0.0)
    data.check_dataset(cfg)
    s = data.load_splits(cfg)
    assert s.class_names == ("a", "b", "c")  # the empty class is left out
    assert len(s.x_train) + len(s.x_val) == 12
    assert len(s.skipped) == 3
    for name in ("not_an_image.png", "truncated.png", str(root / "empty")):
        assert sum(name in entry for entry in s.skipped) == 1, (name, s.skipped)


# --- CIFAR from a local torchvision root ---------------------------------------------------------


def _write_cifar(root, name, monkeypatch):
    """The CIFAR python format as torchvision.datasets reads it: pickled dicts with uint8 rows of 3*32*32
    and a list of labels, and a meta file with the class names; torchvision's published MD5 sums are
    replaced by the written files' (monkeypatch). Returns the training rows written."""
    import hashlib
    import pickle

    import torchvision.datasets as tvd

    cls = getattr(tvd, data.CIFAR[name][0])
    label_key, name_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    rng = np.random.default_rng(0)
    (root / cls.base_folder).mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100

    def write(file, content):
        (root / cls.base_folder / file).write_bytes(pickle.dumps(content))
        return [file, hashlib.md5((root / cls.base_folder / file).read_bytes()).hexdigest()]

    rows, sums = [], {"train_list": [], "test_list": []}
    for part in ("train_list", "test_list"):
        for file, _ in getattr(cls, part):
            labels = [i % classes for i in range(200 if name == "cifar100" else 40)]
            batch = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), label_key: labels}
            sums[part].append(write(file, batch))
            if part == "train_list":
                rows.append(batch["data"])
    meta = write(cls.meta["filename"], {name_key: [f"class {i}" for i in range(classes)]})
    for part, listed in sums.items():
        monkeypatch.setattr(cls, part, listed)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta[1]})
    return np.concatenate(rows)


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_a_local_torchvision_root(tmp_path, monkeypatch, name, classes):
    cfg = TrialConfig(dataset=name, data_root=str(tmp_path), image_size=32, val_fraction=0.5, test_fraction=0.0)
    with pytest.raises(data.DataError, match="download=true"):
        data.check_dataset(cfg)
    written = _write_cifar(tmp_path, name, monkeypatch)
    data.check_dataset(cfg)
    assert data.class_names(cfg)[1] == "class 1"
    s = data.load_splits(cfg)
    assert s.num_classes == classes and s.class_names[1] == "class 1"
    assert len(s.x_train) + len(s.x_val) == 200 and len(s.x_test) == (200 if name == "cifar100" else 40)
    assert set(s.y_val.tolist()) == set(range(classes))
    # pixels survive in CHW order: every un-normalized training image is one of the rows written
    pixels = (s.x_train * torch.tensor(s.std).view(1, 3, 1, 1) + torch.tensor(s.mean).view(1, 3, 1, 1)) * 255
    rows = {r.tobytes() for r in written}
    assert all(np.rint(p.numpy()).astype(np.uint8).tobytes() in rows for p in pixels)


def test_a_changed_cifar_file_is_refused_naming_the_dataset(tmp_path, monkeypatch):
    cfg = TrialConfig(dataset="cifar10", data_root=str(tmp_path), image_size=32, test_fraction=0.0)
    _write_cifar(tmp_path, "cifar10", monkeypatch)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"x")  # its MD5 no longer matches
    with pytest.raises(data.DataError, match="cannot read cifar10 under .*training split.*corrupted"):
        data.load_splits(cfg)


# --- normalization from the model, augmentation --------------------------------------------------


def test_normalization_comes_from_the_models_pretrained_config():
    lite = data.load_splits(TrialConfig(max_samples=50, image_size=8))
    vit = data.load_splits(TrialConfig(max_samples=50, image_size=8, model="vit_tiny_patch16_224"))
    assert lite.mean == (0.485, 0.456, 0.406) and vit.mean == (0.5, 0.5, 0.5) and vit.std == (0.5, 0.5, 0.5)
    assert vit.x_train.min() == -1.0  # a black pixel: (0 - 0.5) / 0.5
    assert torch.isclose(lite.x_train.min(), torch.tensor(-0.485 / 0.229))


def test_augment_batch_crops_and_flips_reproducibly():
    x = torch.randn(16, 3, 12, 12)
    a = data.augment_batch(x, torch.Generator().manual_seed(0))
    b = data.augment_batch(x, torch.Generator().manual_seed(0))
    c = data.augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # whole-image crops: every sample is itself or its mirror image, and both occur
    whole = data.augment_batch(x, torch.Generator().manual_seed(0), min_scale=1.0, ratio=(1.0, 1.0))
    same = [torch.allclose(w, s, atol=1e-5) for w, s in zip(whole, x, strict=True)]
    mirrored = [torch.allclose(w, s.flip(-1), atol=1e-5) for w, s in zip(whole, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)
    assert not torch.allclose(data.augment_batch(x, torch.Generator(), flip=False), x)  # crops zoom in


# --- Parquet shards: the converter and the Ray Data path -----------------------------------------


def _colour_folder(root, n=6, size=20):
    """Three classes told apart by which colour channel is bright, in non-square images."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["red", "grün", "blue sky"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            im = rng.integers(0, 40, (size, size + 6, 3), dtype=np.uint8)
            im[..., label] = 230
            Image.fromarray(im).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")


def test_to_parquet_writes_shards_with_labels_index_and_class_names(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytune_ft import to_parquet

    _colour_folder(tmp_path / "images")
    out = tmp_path / "shards"
    assert to_parquet.main([str(tmp_path / "images"), str(out), "--rows-per-shard", "4", "--val-fraction", "0.34",
                            "--test-fraction", "0"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["class_names"] == ["blue sky", "grün", "red"] and meta["num_rows"] == {"train": 12, "val": 6}
    assert len(list((out / "train").glob("*.parquet"))) == 3
    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*/*.parquet"))])
    assert sorted(table.column("index").to_pylist()) == list(range(18))  # stable and unique
    for path, label in zip(table.column("path").to_pylist(), table.column("label").to_pylist(), strict=True):
        assert path.split("/")[0] == meta["class_names"][label]
    # validated arguments; nothing is written over an existing folder
    assert to_parquet.main([str(tmp_path / "images"), str(out)]) == 2
    assert to_parquet.main([str(tmp_path / "images"), str(tmp_path / "new"), "--rows-per-shard", "0"]) == 2
    assert to_parquet.main([str(tmp_path / "nope"), str(tmp_path / "new")]) == 2


def test_to_parquet_names_a_truncated_image_or_skips_it(tmp_path):
    from raytune_ft import to_parquet

    _colour_folder(tmp_path / "images", n=3)
    good = (tmp_path / "images" / "red" / "0.png").read_bytes()
    (tmp_path / "images" / "red" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(data.DataError, match="cut.png"):
        to_parquet.convert(str(tmp_path / "images"), str(tmp_path / "a"))
    meta = to_parquet.convert(str(tmp_path / "images"), str(tmp_path / "b"), on_bad_image="skip")
    assert sum(meta["num_rows"].values()) == 9 and "cut.png" in meta["skipped"][0]


def test_parquet_streams_through_ray_data_as_torch_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from raytune_ft import to_parquet

    _colour_folder(tmp_path / "images")
    root = tmp_path / "shards"
    to_parquet.convert(str(tmp_path / "images"), str(root), rows_per_shard=5, test_fraction=0.0)
    cfg = TrialConfig(dataset="parquet", data_root=str(root), image_size=16, augment=True)
    info = parquet.parquet_info(cfg)
    assert info.class_names == ("blue sky", "grün", "red") and info.num_rows == {"train": 15, "val": 3}
    # a shard with a label out of range: named before training, or dropped under skip
    bad = pa.table({"image": [(tmp_path / "images" / "red" / "0.png").read_bytes()], "label": [7], "index": [99]})
    pq.write_table(bad, root / "train" / "zz-bad.parquet")
    with pytest.raises(data.DataError, match=r"zz-bad.parquet: index 99 label 7"):
        data.check_dataset(cfg)
    cfg = TrialConfig(dataset="parquet", data_root=str(root), image_size=16, augment=True, on_bad_image="skip")
    assert parquet.parquet_info(cfg).bad_rows == (f"{root / 'train' / 'zz-bad.parquet'}: index 99 label 7",)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        datasets = parquet.ray_datasets(cfg)
        seen = {}
        for split, ds in datasets.items():
            for batch in ds.iter_torch_batches(batch_size=8):
                assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (3, 16, 16)
                assert batch["label"].dtype == torch.int64
                for x, label, index in zip(batch["image"], batch["label"], batch["index"], strict=True):
                    seen[int(index)] = (split, int(label), x)

        def val_rows(c: TrialConfig, **kwargs) -> dict[int, torch.Tensor]:
            stream = parquet.ray_datasets(c, ("val",), **kwargs)["val"].iter_torch_batches(batch_size=8)
            return {int(i): x for batch in stream for x, i in zip(batch["image"], batch["index"], strict=True)}

        # a trial streams its rows in the view its validation split was decoded in (a searched
        # architecture's own crop can differ from it): Lite0 (0.875 crop, bicubic) in the whole-image view
        lite = dataclasses.replace(cfg, model="efficientnet_lite0", augment=False)
        whole = val_rows(dataclasses.replace(lite, model="compact_cnn_16"))
        assert any(not torch.equal(x, whole[i]) for i, x in val_rows(lite).items())
        assert all(torch.equal(x, whole[i]) for i, x in val_rows(lite, decode_view=(1.0, "bilinear")).items())
    finally:
        ray.shutdown()
    assert len(seen) == 18 and 99 not in seen  # every image once, the bad row dropped
    assert {s for s, *_ in seen.values()} == {"train", "val"}
    channel = {0: 2, 1: 1, 2: 0}  # class index -> its bright channel (blue sky, grün, red)
    for _, label, x in seen.values():  # normalized, and the right label for the pixels
        assert x.mean(dim=(1, 2)).argmax().item() == channel[label]
        assert x.max() > 1.5 and x.min() < -1.0


def test_imagefolder_max_samples_decodes_only_the_subset(tmp_path, monkeypatch):
    _write_folder(tmp_path, ["a", "b"], n=30)
    decoded = []
    real = data.decode_image
    monkeypatch.setattr(data.memory, "decode_image", lambda f, *a, **k: decoded.append(f) or real(f, *a, **k))
    s = data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(tmp_path), image_size=8, max_samples=20,
                                     test_fraction=0.0))
    assert len(s.x_train) + len(s.x_val) == 20 and len(decoded) == 20  # not all 60
    assert torch.bincount(torch.cat([s.y_train, s.y_val])).tolist() == [10, 10]


def test_search_refuses_a_missing_cifar_root_before_ray_starts(tmp_path):
    from raytune_ft import search

    args = search.parse_args(["--set", "dataset=cifar10", "--set", f"data_root={tmp_path}",
                              "--storage-path", str(tmp_path)])
    with pytest.raises(search.UserError, match=r"cifar10 not found: .*data_batch_1.*--set download=true"):
        search.prepare(args)


def test_pad_crop_shifts_by_whole_pixels_and_random_erasing_fills_rectangles():
    """The ResNet augmentation (He et al. 2016 pad-and-crop, Zhong et al. 2017 random erasing)."""
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).view(2, 3, 12, 12)
    shifted = data.augment_batch(x, torch.Generator().manual_seed(3), crop="pad", padding=2, flip=False)
    for i in range(2):  # each sample is its own image moved by (dy, dx) in [-2, 2], exactly (no resampling)
        inner = shifted[i, :, 2:-2, 2:-2]
        assert any(torch.allclose(inner, x[i, :, 2 + dy:10 + dy, 2 + dx:10 + dx], atol=1e-3)
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert torch.allclose(data.augment_batch(x, torch.Generator().manual_seed(0), crop="pad", padding=0, flip=False), x,
                          atol=1e-3)
    many = torch.zeros(400, 3, 16, 16)
    erased = data.augment_batch(many, torch.Generator().manual_seed(0), crop="pad", padding=0, flip=False,
                                erasing=0.5)
    touched = (erased.abs() > 1e-6).flatten(1).any(1)
    assert 0.4 < touched.float().mean() < 0.6  # about half the samples lose a rectangle
    area = (erased[touched].abs() > 1e-6)[:, 0].flatten(1).float().mean(1)
    assert area.min() >= 0.015 and area.max() <= 0.36  # 2-33 % of the image, sides rounded to whole pixels
    again = data.augment_batch(many, torch.Generator().manual_seed(0), crop="pad", padding=0, flip=False, erasing=0.5)
    assert torch.equal(erased, again)
    with pytest.raises(ValueError, match="crop must be one of"):
        data.augment_batch(x, torch.Generator(), crop="zoom")


def test_augmentation_settings_are_checked_with_the_key_named():
    with pytest.raises(ValueError, match="augment_crop"):
        TrialConfig(augment_crop="zoom")
    with pytest.raises(ValueError, match="random_erasing"):
        TrialConfig(random_erasing=1.5)
    with pytest.raises(ValueError, match="random_erasing work on in-memory datasets"):
        TrialConfig(dataset="parquet", data_root="/x", augment=True, random_erasing=0.5)


def test_a_streamed_dataset_is_calibrated_on_its_own_training_rows_and_ships_an_int8_file(tmp_path):
    """dataset: parquet holds no training split in memory; int8 calibration reads the first training
    rows from storage (never val or test) and the trial ships model.int8.onnx (it failed at export
    after the whole training before, for the teacher's int8 baseline and every int8 trial)."""
    import pyarrow.parquet as pq

    from raytune_ft import models, to_parquet
    from raytune_ft.deploy import measure
    from raytune_ft.errors import ExportError
    from raytune_ft.families.quantization import Quantization

    _colour_folder(tmp_path / "images")
    root = tmp_path / "shards"
    to_parquet.convert(str(tmp_path / "images"), str(root), rows_per_shard=5, test_fraction=0.0)
    cfg = TrialConfig(dataset="parquet", data_root=str(root), model="compact_cnn_16", weights="none", image_size=16,
                      augment=True, batch_size=4, quant_calibration_batches=2, use_quantization=True, export=True)
    images = parquet.parquet_calibration_images(cfg, 8)
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    # the first 8 rows of the train shards in storage order, decoded without augmentation
    first = pq.read_table(sorted((root / "train").glob("*.parquet"))[0]).to_pydict()
    inp = models.input_config(cfg.model)
    decoded = np.stack([data.decode_image(b, 16, inp) for b in first["image"][:5]]).transpose(0, 3, 1, 2)
    expected = data.to_model_input(decoded, 16, inp)
    assert torch.allclose(images[:5], torch.as_tensor(expected), atol=1e-5)
    assert len(parquet.parquet_calibration_images(cfg, 1000)) == 15  # all 15 training rows, no val rows
    with pytest.raises(ExportError, match="training split is not in memory"):
        Quantization.from_config(cfg).reader(torch.empty(0, 3, 16, 16))  # what the export met before

    val = data.Splits(torch.empty(0, 3, 16, 16), torch.empty(0, dtype=torch.int64), images[:6],
                      torch.tensor([0, 1, 2, 0, 1, 2]), ("blue sky", "grün", "red"))
    assert torch.equal(data.calibration_images(cfg, val, 8), images)
    torch.manual_seed(0)
    model = models.build_model("compact_cnn_16", 3, weights="none").eval()
    measured = measure.export_and_measure(model, cfg, val, {"val_acc": 0.5}, tmp_path / "export")
    assert (tmp_path / "export" / "model.int8.onnx").is_file()
    assert measured["model_bytes"] == (tmp_path / "export" / "model.int8.onnx").stat().st_size
