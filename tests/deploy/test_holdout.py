"""The test split (disjoint, stratified, never given to a trial), Wilson intervals, McNemar, Fashion-MNIST,
and an end-to-end search whose front test accuracies a fresh process reproduces from the exported files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raytune_ft import data, layout
from raytune_ft.config import TrialConfig
from raytune_ft.data import parquet
from raytune_ft.deploy import holdout


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 0/10 -> 0 to 0.2775; 1/29 -> 0.0061 to 0.1718; and 81/263 -> 0.2553 to 0.3662
    for (k, n), (low, high) in {(0, 10): (0.0, 0.2775), (1, 29): (0.0061, 0.1718),
                                (81, 263): (0.2553, 0.3662)}.items():
        got = holdout.wilson_interval(k, n)
        assert got == pytest.approx((low, high), abs=5e-5), (k, n, got)
    low, high = holdout.wilson_interval(358, 360)  # near 1 it stays inside [0, 1] and is asymmetric
    assert low < 358 / 360 < high <= 1.0 and (high - 358 / 360) < (358 / 360 - low)


def test_mcnemar_counts_only_the_images_the_two_models_disagree_on():
    a = np.array([True] * 90 + [False] * 10)
    assert holdout.mcnemar_p(a, a) == 1.0
    b = a.copy()
    b[:10] = False  # B wrong on 10 images A gets right, nowhere better
    assert holdout.mcnemar_p(a, b) == pytest.approx(2 * 0.5**10)
    c = a.copy()
    c[0], c[95] = False, True  # one each way: indistinguishable
    assert holdout.mcnemar_p(a, c) == 1.0


def _digit_rows(splits: data.Splits, part: str) -> list[int]:
    """Index into load_digits() of every image of a split (image_size 8: no resampling)."""
    from sklearn.datasets import load_digits

    index = {r.tobytes(): i for i, r in enumerate(np.rint(load_digits().images).astype(np.uint8))}
    x = getattr(splits, f"x_{part}")
    pixels = (x * torch.tensor(splits.std).view(1, 3, 1, 1) + torch.tensor(splits.mean).view(1, 3, 1, 1)) * 16
    return [index[np.rint(p[0].numpy()).astype(np.uint8).tobytes()] for p in pixels]


def test_three_splits_are_disjoint_stratified_and_fixed_by_data_seed():
    cfg = TrialConfig(image_size=8, val_fraction=0.2, test_fraction=0.2)
    s = data.load_splits(cfg)
    rows = {part: _digit_rows(s, part) for part in ("train", "val", "test")}
    assert sum(len(r) for r in rows.values()) == 1797
    assert len(set(rows["train"]) | set(rows["val"]) | set(rows["test"])) == 1797  # disjoint, all used
    assert abs(len(rows["test"]) - 0.2 * 1797) <= 10 and abs(len(rows["val"]) - 0.2 * 1797) <= 10
    counts = torch.bincount(s.y_test, minlength=10)
    assert counts.max() - counts.min() <= 2  # stratified: digits has ~180 per class
    assert torch.equal(data.load_splits(cfg).y_test, s.y_test)
    no_test = data.load_splits(TrialConfig(image_size=8, test_fraction=0.0))
    assert torch.equal(no_test.x_val, s.x_val)  # validation is drawn first: the same split as before
    assert len(no_test.y_test) == 0
    other = data.load_splits(TrialConfig(image_size=8, data_seed=1))
    assert set(_digit_rows(other, "test")) != set(rows["test"])
    stripped = s.without_test()
    assert len(stripped.y_test) == 0 and len(stripped.x_test) == 0 and torch.equal(stripped.x_train, s.x_train)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        TrialConfig(val_fraction=0.5, test_fraction=0.5)


def test_imagefolder_test_folder_and_parquet_test_shards(tmp_path):
    from PIL import Image

    from raytune_ft import to_parquet

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for c in ("a", "b"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / c / f"{i}.png")
    s = data.load_splits(TrialConfig(dataset="imagefolder", data_root=str(tmp_path / "img"), image_size=8))
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (12, 4, 6)  # the folder's own test split
    meta = to_parquet.convert(str(tmp_path / "img"), str(tmp_path / "pq"))
    assert meta["num_rows"] == {"train": 12, "val": 4, "test": 6}
    info = parquet.parquet_info(TrialConfig(dataset="parquet", data_root=str(tmp_path / "pq")))
    assert info.num_rows["test"] == 6
    assert not set(info.indices["test"]) & (set(info.indices["train"]) | set(info.indices["val"]))
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:  # the test shards stream only through holdout.load_test, after a search
        test = holdout.load_test(TrialConfig(dataset="parquet", data_root=str(tmp_path / "pq"), image_size=8))
    finally:
        ray.shutdown()
    assert len(test) == 6 and test.x.shape[1:] == (3, 8, 8) and sorted(test.y.tolist()) == [0, 0, 0, 1, 1, 1]
    # a flat folder: test_fraction of all images, disjoint from train and val
    meta = to_parquet.convert(str(tmp_path / "img" / "train"), str(tmp_path / "pq2"), test_fraction=0.34)
    assert meta["num_rows"]["test"] == 4 and sum(meta["num_rows"].values()) == 12


def test_fashion_mnist_reads_the_debian_idx_files():
    root = Path(data.FASHION_MNIST_ROOT)
    if not (root / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {root} (apt-get install dataset-fashion-mnist)")
    images = data.read_idx(root / "train-images-idx3-ubyte.gz")
    labels = data.read_idx(root / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    s = data.load_splits(TrialConfig(dataset="fashion_mnist", max_samples=200, max_test_samples=100, image_size=28))
    assert len(s.y_train) + len(s.y_val) == 200 and len(s.y_test) == 100
    assert s.class_names[9] == "Ankle boot" and s.x_test.shape[1:] == (3, 28, 28)
    pixels = s.x_test * torch.tensor(s.std).view(1, 3, 1, 1) + torch.tensor(s.mean).view(1, 3, 1, 1)
    assert torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)  # grayscale repeated on 3 channels
    assert labels[0] == 9  # the first t10k image is an ankle boot


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.check_dataset(TrialConfig(dataset="fashion_mnist", data_root=str(tmp_path)))


FRESH = """
import json, sys, numpy as np, torch
from raytune_ft import data
from raytune_ft.config import TrialConfig
export_dir = sys.argv[1]
manifest = json.load(open(export_dir + "/manifest.json"))
splits = data.load_splits(TrialConfig.from_dict(manifest["config"]))  # the same split, rebuilt from the config
file = export_dir + "/" + manifest.get("deployed", "model.pt2")
x = splits.x_test.contiguous()
if file.endswith(".onnx"):
    import onnxruntime as ort
    session = ort.InferenceSession(file, providers=["CPUExecutionProvider"])
    pred = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].argmax(1)
else:
    with torch.no_grad():
        pred = torch.export.load(file).module()(x).argmax(1).numpy()
print(json.dumps({"test_acc": float((pred == splits.y_test.numpy()).mean()), "n": len(pred)}))
"""


@pytest.mark.e2e
def test_search_reports_test_accuracy_no_trial_saw_and_a_fresh_process_reproduces_it(tmp_path, monkeypatch):
    import ray
    from ray import tune

    from raytune_ft import analyze, search
    from raytune_ft.search import trial

    given: list[data.Splits] = []  # every Splits handed to a trial, a confirmation run or the teacher
    real_with_parameters, real_teacher = tune.with_parameters, trial.fit_teacher_remote

    def recording(fn, **kwargs):
        given.append(kwargs.get("data"))
        return real_with_parameters(fn, **kwargs)

    monkeypatch.setattr(tune, "with_parameters", recording)
    monkeypatch.setattr(trial, "fit_teacher_remote",
                        lambda cfg, d, after=None: given.append(d) or real_teacher(cfg, d, after))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert search.main(["--storage-path", str(tmp_path), "--name", "h", "--set", "max_samples=240",
                            "--set", "epochs=1", "--set", "teacher.epochs=1", "--set", "latency_budget_s=0.2",
                            "--set", "cpus_per_trial=1", "--num-samples", "2", "--confirm", "2"]) == 0
    finally:
        ray.shutdown()
    exp = tmp_path / "h"
    cfg = TrialConfig(max_samples=240, image_size=32)
    test = holdout.load_test(cfg)
    assert test is not None and len(test) >= 40
    test_images = {x.numpy().tobytes() for x in test.x}
    assert len(given) >= 3  # the teacher, the search's trainable, the confirmation runs' trainable
    for splits in given:  # no test image reaches a trial
        assert len(splits.y_test) == 0 and len(splits.x_test) == 0
        seen = {x.numpy().tobytes() for x in torch.cat([splits.x_train, splits.x_val])}
        assert len(splits.y_train) + len(splits.y_val) + len(test) in range(236, 245)
        assert not seen & test_images

    front = pd.read_csv(exp / "pareto.csv")
    assert len(front) >= 1
    for _, row in front.iterrows():
        assert row.test_acc_low <= row.test_acc <= row.test_acc_high and row.test_n == len(test)
        proc = subprocess.run([sys.executable, "-c", FRESH, row.export_path], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["n"] == len(test)
        assert abs(got["test_acc"] - row.test_acc) <= 1 / len(test) + 1e-9  # float noise may flip one image
    teacher = json.loads((exp / "teacher.json").read_text())
    assert teacher["test_acc_low"] <= teacher["test_acc"] <= teacher["test_acc_high"]

    confirmed = pd.read_csv(exp / layout.CONFIRMED_CSV)
    assert sorted(confirmed.trial_id.astype(str)) == sorted(front.trial_id.astype(str))
    assert (confirmed.n_runs == 2).all() and confirmed.test_acc_std.notna().all()
    assert confirmed.on_confirmed_front.any()
    assert len(list((exp / layout.CONFIRM_DIR).glob("trial_*"))) == len(front)

    assert analyze.main([str(exp), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "How far to trust this front" in page and "Confirmed front (2 seeds per recipe)" in page
    assert "McNemar" in page
