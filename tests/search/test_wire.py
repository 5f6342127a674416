"""The glue between the data sources and the trials: augmentation and the online KD teacher in
memory (no Ray), and a real search on Parquet shards streamed through Ray Data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_HEAD, TinyClassifier
from PIL import Image

from raytune_ft import checkpoints, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.data import parquet
from raytune_ft.search import trial


def _teacher_model(num_classes: int = 3) -> dict:
    cfg = TrialConfig(weights="none")
    torch.manual_seed(0)
    model = models.build_model(cfg.model, num_classes, weights="none")
    return {"config": cfg.to_dict(), "state_dict": model.state_dict()}


def test_augment_changes_the_training_batches_and_kd_then_runs_the_teacher_on_them(tiny_splits):
    precomputed = torch.randn(len(tiny_splits.y_train), 3)
    teacher_model = _teacher_model()
    kwargs = {"dist": train.Dist(), "teacher_logits": precomputed, "teacher_model": teacher_model}
    plain_cfg = TrialConfig(weights="none", batch_size=32, epochs=1, use_kd=True)
    aug_cfg = TrialConfig(weights="none", batch_size=32, epochs=1, use_kd=True, augment=True, crop_min_scale=0.3)

    # augment off: the stored tensors as they are, KD from the precomputed logits
    source, logits, teacher = trial.training_inputs(plain_cfg, tiny_splits, **kwargs)
    assert logits is precomputed and teacher is None
    for x, _, idx in source.epoch(0):
        assert torch.equal(x, tiny_splits.x_train[idx])

    # augment on: other pixels for the same samples, KD from the teacher model (rebuilt)
    source, logits, teacher = trial.training_inputs(aug_cfg, tiny_splits, **kwargs)
    assert logits is None and isinstance(teacher, torch.nn.Module)
    reference = models.build_model(TrialConfig().model, 3, weights="none")
    reference.load_state_dict(teacher_model["state_dict"])
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), reference.state_dict().values(),
                                                  strict=True))
    augmented = list(source.epoch(0))
    assert len(augmented) == 3
    for x, _, idx in augmented:
        assert x.shape == tiny_splits.x_train[idx].shape and not torch.allclose(x, tiny_splits.x_train[idx])

    # fit() feeds the teacher exactly the augmented batches the student trains on
    source, logits, teacher = trial.training_inputs(aug_cfg, tiny_splits, **kwargs)
    seen = []
    teacher.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().clone()))
    reports = []
    train.fit(aug_cfg, TinyClassifier(), tiny_splits, head_names=TINY_HEAD, teacher_logits=logits, teacher=teacher,
              batches=source, report=lambda metrics, _m, _s: reports.append(metrics))
    assert len(seen) == 3 and all(torch.equal(a, x) for a, (x, _, _) in zip(seen, augmented, strict=True))
    assert reports[-1]["kd_loss"] > 0 and np.isfinite(reports[-1]["train_loss"])

    # without the teacher model an augmented KD trial is refused (precomputed logits would be wrong)
    with pytest.raises(ValueError, match="online teacher"):
        trial.training_inputs(aug_cfg, tiny_splits, dist=train.Dist(), teacher_logits=precomputed)


def test_parquet_on_a_local_cluster_needs_a_cpu_the_trials_do_not_hold():
    # Ray Data's decode tasks would wait forever behind trials holding every CPU: refused up front
    cfg = TrialConfig(dataset="parquet", data_root="x", cpus_per_trial=2)
    assert "at least 1 CPU besides the 2" in trial.missing_data_cpus(cfg, {"CPU": 2.0})
    assert trial.missing_data_cpus(cfg, {"CPU": 3.0}) is None
    assert trial.missing_data_cpus(cfg, {"CPU": 3.0}, concurrent=2) is not None
    ddp = TrialConfig(dataset="parquet", data_root="x", workers_per_trial=2, cpus_per_worker=1)
    assert trial.missing_data_cpus(ddp, {"CPU": 2.0}) is not None and trial.missing_data_cpus(ddp, {"CPU": 3.0}) is None
    assert trial.missing_data_cpus(TrialConfig(cpus_per_trial=2), {"CPU": 2.0}) is None  # in memory: no Ray Data


def _image_folder(root, n=14):
    """Three classes told apart by their bright colour channel, real PNG files."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            im = rng.integers(0, 60, (24, 30, 3), dtype=np.uint8)
            im[..., label] = 220
            Image.fromarray(im).save(root / name / f"{i}.png")


SPACE = """
name: parquet-wire
fixed:
  model: efficientnet_lite0
  weights: none
  dataset: parquet
  data_root: {root}
  on_bad_image: skip
  augment: true
  image_size: 32
  epochs: 2
  batch_size: 8
  max_samples: 36
  cpus_per_trial: 1
  export: false
  use_kd: true
  kd_alpha: 0.5
  use_pruning: true
teacher:
  overrides: {{epochs: 1}}
search: {{sampler: random, num_samples: 2, max_concurrent: 1, seed: 0, max_failures: 0}}
params:
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  final_sparsity: {{type: float, low: 0.3, high: 0.6}}
objectives: {{val_acc: max, nonzero_params: min}}
"""


@pytest.mark.e2e
def test_search_on_parquet_shards_streams_with_an_online_teacher(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from raytune_ft import search, to_parquet

    _image_folder(tmp_path / "images")
    shards = tmp_path / "shards"
    assert to_parquet.main([str(tmp_path / "images"), str(shards), "--rows-per-shard", "10",
                            "--test-fraction", "0"]) == 0
    # a row with a label out of range: skipped, counted and listed
    bad = pa.table({"image": [(tmp_path / "images" / "red" / "0.png").read_bytes()], "label": [9], "index": [999]})
    pq.write_table(bad, shards / "train" / "zz-bad.parquet")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(root=shards))
    cfg = TrialConfig(dataset="parquet", data_root=str(shards), max_samples=36, image_size=32, on_bad_image="skip")
    counts = parquet.parquet_selection(cfg)
    assert counts["train"][0] + counts["val"][0] in (35, 36, 37)  # stratified rounding per class

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert search.main(["--space", str(space), "--storage-path", str(tmp_path / "results"), "--name", "p"]) == 0
    finally:
        ray.shutdown()
    exp = tmp_path / "results" / "p"
    trials = pd.read_csv(exp / "trials.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert (trials["epochs_trained"] == 2).all() and (trials["kd_loss"] > 0).all()  # distilled, online
    assert (trials["skipped"] == 1).all()
    assert "zz-bad.parquet: index 999 label 9" in (exp / "skipped.txt").read_text()
    assert not (exp / "teacher" / "train_logits.pt").exists()  # no precomputed logits for streamed data
    assert json.loads((exp / "teacher.json").read_text())["val_acc"] >= 0
    front = pd.read_csv(exp / "pareto.csv")
    assert len(front) >= 1
    model, meta = checkpoints.load_checkpoint(front["checkpoint"].iloc[0])
    assert meta["class_names"] == ["blue", "green", "red"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
