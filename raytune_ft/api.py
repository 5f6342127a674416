"""The Python API, for notebooks and analysis scripts: `run_search` runs a search and
`open_experiment` reads any experiment folder (finished, running or killed; local or s3://);
both return an `Experiment` — the trials, the front, the teacher and its baselines as pandas
DataFrames, the front's deployed models as ONNX Runtime sessions or PyTorch modules with their
`Preprocessing`, the sampler's Optuna study, and `export_best`. These names are re-exported as
`raytune_ft.__all__` and are the stable surface; everything below them may change. The search is
`search.experiment.run_experiment` (what the command line runs); reading is `report.results`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raytune_ft import layout
from raytune_ft.report import results

if TYPE_CHECKING:
    import onnxruntime
    import optuna
    import torch


def run_search(space: str | os.PathLike | Mapping[str, Any] = "quickstart",
               overrides: Mapping[str, Any] | Sequence[str] | None = None, *, storage_path: str | None = None,
               name: str | None = None, seed: int | None = None, num_samples: int | None = None,
               max_concurrent: int | None = None, resume: bool = False, address: str | None = None,
               confirm: int = 1) -> Experiment:
    """Run a search, as `python -m raytune_ft.search` does, and return its `Experiment`.

    space: a built-in space's name (`quickstart`, `joint`, ...), a YAML file, or a dict shaped like
    one (kept in the experiment as space.yaml). overrides: `{"epochs": 2, "search.num_samples": 3}`
    or `["epochs=2", ...]`, the command line's `--set`. storage_path, name, seed, num_samples,
    max_concurrent, resume, address, confirm: its flags (docs/usage.md). Starts a local Ray cluster
    unless one is running (or `address` names one) and shuts down the cluster it started. Prints the
    search's progress. Raises ValueError on bad input (the one line the command line would print),
    before Ray starts for everything that can be checked then.
    """
    from raytune_ft import search

    ray = sys.modules.get("ray")  # not imported here before the search sets Ray's logging up
    started_ray = ray is None or not ray.is_initialized()
    try:
        where = search.run_experiment(space, overrides=override_strings(overrides), storage_path=storage_path,
                                   name=name, seed=seed, num_samples=num_samples, max_concurrent=max_concurrent,
                                   resume=resume, address=address, confirm=confirm)
    except search.UserError as err:
        raise ValueError(str(err)) from None
    finally:
        ray = sys.modules.get("ray")
        if started_ray and ray is not None and ray.is_initialized():
            ray.shutdown()
    return open_experiment(where.uri)


def open_experiment(location: str | os.PathLike) -> Experiment:
    """Read the experiment folder `location` (`<storage-path>/<name>`, or a URI such as
    s3://bucket/prefix/name, copied to a temporary folder without model weights until a model is
    asked for), finished, still running or killed. Raises FileNotFoundError naming what is missing
    when `location` is not an experiment folder."""
    return Experiment(results.load_experiment(location))


def override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """`--set` strings from a dict (values written as JSON, which the space's YAML reader reads
    back as the same value) or a list of "KEY=VALUE" strings."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={value if isinstance(value, str) and _plain(value) else json.dumps(value, default=str)}"
                for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError(f"overrides: give a dict or a list of 'KEY=VALUE' strings, got the string {overrides!r}")
    return [str(item) for item in overrides]


@dataclass(frozen=True)
class Preprocessing:
    """What a deployed model expects, from its manifest: RGB images resized to `input_size` (C, H, W)
    and normalized with `mean` / `std` (the pretrained weights' own); its outputs are logits over
    `class_names`. Models trained on image files (imagefolder, parquet) also record how the files
    were decoded: a centre crop of `crop_pct` of the shorter side, resized with `interpolation`
    (the whole image, bilinear, for the in-memory datasets). `read(files)` decodes image files
    exactly as the search did; calling it converts image arrays."""

    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Preprocessing:
        decode = manifest.get("decode") or {}
        return cls(tuple(manifest["input_size"]), tuple(manifest["normalization"]["mean"]),
                   tuple(manifest["normalization"]["std"]), tuple(manifest["class_names"]),
                   float(decode.get("crop_pct", 1.0)), str(decode.get("interpolation", "bilinear")))

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n, 3 or 1, h, w) or one (3 or 1, h, w) image, uint8 or floats in [0, 1] -> (n, 3, H, W)
        float32: the centre crop of `crop_pct` (models trained on image files), bilinear resize to
        the input size, then (x − mean) / std — how the in-memory datasets (digits, CIFAR,
        Fashion-MNIST) were made (data.images.to_model_input). For image files, `read` reproduces
        the search's decode exactly (PIL, with the recorded interpolation)."""
        from raytune_ft import models
        from raytune_ft.data.images import to_model_input

        x = np.asarray(images)
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images: expected channels-first (n, 3, h, w) or (n, 1, h, w), got shape {x.shape}")
        if self.crop_pct < 1.0:
            side = round(min(x.shape[-2:]) * self.crop_pct)
            top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
            x = x[..., top : top + side, left : left + side]
        inputs = to_model_input(x, self.input_size[-1], models.InputConfig(self.mean, self.std))
        return inputs.numpy()

    def read(self, files: Sequence[str | os.PathLike] | str | os.PathLike) -> np.ndarray:
        """Image files (any format PIL reads) -> (n, 3, H, W) float32, decoded as the search decoded
        its image folders and Parquet shards (data.images.decode_image: EXIF orientation, RGB, the
        centre crop, `interpolation`), then normalized."""
        from raytune_ft import models
        from raytune_ft.data.images import decode_image, to_model_input

        files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        inp = models.InputConfig(self.mean, self.std, self.interpolation, self.crop_pct)
        size = self.input_size[-1]
        images = np.stack([decode_image(Path(f), size, inp).transpose(2, 0, 1) for f in files])
        return to_model_input(images, size, inp).numpy()

    def labels(self, logits: np.ndarray) -> list[str]:
        """The class name of each row's largest logit."""
        return [self.class_names[int(i)] for i in np.asarray(logits).argmax(axis=-1)]


class Experiment:
    """One experiment, as read when it was opened (`refresh()` reads it again).

    trials: one row per trial (status, searched and fixed settings, final metrics, checkpoint and
    export folders; trials.csv's columns, docs/results.md). front: the non-dominated completed
    trials, sorted by size, with test_acc and its interval once the search has measured them.
    teacher: one row, the dense teacher (empty before it exists). baselines: the teacher shipped as
    fp32 and int8 files, measured like trials. objectives: metric -> "max" | "min". path: the folder
    read (for a URI its temporary copy); location: as given; state: "finished" or "unfinished"
    (running, or interrupted); start_time: when the search started (unix seconds).
    """

    def __init__(self, record: results.Experiment) -> None:
        from raytune_ft.deploy import holdout

        self.record = record  # report.results' reading of the folder
        self.name, self.location, self.path, self.state = record.name, record.location, record.local_dir, record.state
        self.objectives = dict(record.objectives)
        self.start_time = record.start_time  # unix time the search started (None before Tune wrote it)
        self.trials = record.trials
        front = results.front(self.trials, self.objectives)
        self.front = holdout.with_test_columns(front, self.path)
        teacher = dict(record.teacher or {})
        baselines = list((teacher.pop("baselines", None) or {}).values())
        self.teacher = pd.DataFrame([teacher]) if teacher else pd.DataFrame()
        if not baselines and (self.path / layout.BASELINES_CSV).is_file():
            self.baselines = pd.read_csv(self.path / layout.BASELINES_CSV)
        else:
            self.baselines = pd.DataFrame(baselines)
        self._models_fetched = "://" not in self.location

    def __repr__(self) -> str:
        counts = self.trials["status"].value_counts().to_dict() if len(self.trials) else {}
        statuses = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none started"
        return (f"Experiment({self.location!r}, {self.state}: {len(self.trials)} trials ({statuses}), "
                f"{len(self.front)} on the front)")

    def refresh(self) -> Experiment:
        """The same folder read again (a running search has moved on)."""
        return open_experiment(self.location)

    def study(self) -> optuna.Study:
        """The sampler's Optuna study (optuna_journal.log): every trial as the sampler saw it,
        early-stopped ones PRUNED, with the objectives' names; `optuna.visualization` takes it."""
        from raytune_ft.search import journal

        path = self.path / layout.OPTUNA_JOURNAL
        if not path.is_file():
            raise FileNotFoundError(f"{self.location!r} has no {layout.OPTUNA_JOURNAL} (a search older than the "
                                    f"journal, or one that has not asked for a trial yet); {layout.OPTUNA_TRIALS_CSV} "
                                    "holds the study as a table")
        return journal.load_study(path)

    def export_dir(self, trial_id: str) -> Path:
        """The folder of a trial's exported model (manifest.json, model.onnx, model.int8.onnx, model.pt2)."""
        row = self._row(trial_id)
        if not isinstance(row.get("export_path"), str):
            raise ValueError(f"trial {trial_id} ({row['status']}) has no exported model "
                             "(it failed, did not finish, or the search ran with export: false)")
        self._fetch_models()
        folder = results.local_path(self.record, row["export_path"])
        if folder is None or not (folder / layout.MANIFEST).is_file():
            raise FileNotFoundError(f"trial {trial_id}: no {layout.MANIFEST} in {row['export_path']!r}")
        return folder

    def session(self, trial_id: str, *, threads: int = 1) -> tuple[onnxruntime.InferenceSession, Preprocessing]:
        """An ONNX Runtime session (CPU, `threads` intra-op threads) of the trial's deployed file —
        model.onnx or model.int8.onnx, the file its numbers were measured on — and its preprocessing."""
        from raytune_ft.deploy import export

        folder = self.export_dir(trial_id)
        return export.ort_session(export.deployed_file(folder), threads), self._preprocessing(folder)

    def torch_model(self, trial_id: str) -> tuple[torch.nn.Module, Preprocessing]:
        """The trial's trained network as a PyTorch module (eval mode, fp32: for an int8 trial the
        network before ONNX Runtime quantized it, `val_acc_fp32`) and its preprocessing."""
        from raytune_ft import checkpoints, models

        row = self._row(trial_id)
        if not isinstance(row.get("checkpoint"), str):
            raise ValueError(f"trial {trial_id} ({row['status']}) has no checkpoint")
        self._fetch_models()
        folder = results.local_path(self.record, row["checkpoint"])
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(f"trial {trial_id}: checkpoint folder {row['checkpoint']!r} not found")
        model, meta = checkpoints.load_checkpoint(folder)
        export = folder / layout.EXPORT_DIR
        if (export / layout.MANIFEST).is_file():
            return model, self._preprocessing(export)
        inp, size = models.input_config(meta["config"]["model"]), int(meta["config"]["image_size"])
        return model, Preprocessing((3, size, size), tuple(inp.mean), tuple(inp.std), tuple(meta["class_names"]))

    def export_best(self, n: int, dest: str | os.PathLike) -> pd.DataFrame:
        """Copy `n` front models spread along the front (always the smallest and the most accurate)
        into `dest/<k>_<trial_id>/` with their manifests, plus dest/index.csv; returns the index."""
        from raytune_ft.report import analysis

        if not len(self.front):
            raise ValueError(f"{self.location!r}: no completed trial on the front yet")
        self._fetch_models()
        return analysis.export_best(self.record, self.front, n, Path(dest))

    def _row(self, trial_id: str) -> pd.Series:
        rows = self.trials[self.trials["trial_id"].astype(str) == str(trial_id)] if len(self.trials) else self.trials
        if not len(rows):
            known = ", ".join(map(str, self.trials["trial_id"])) if len(self.trials) else "none"
            raise KeyError(f"no trial {trial_id!r} in {self.location!r}; its trials: {known}")
        return rows.iloc[0]

    def _preprocessing(self, export_dir: Path) -> Preprocessing:
        return Preprocessing.from_manifest(json.loads((export_dir / layout.MANIFEST).read_text()))

    def _fetch_models(self) -> None:
        """A URI was copied without model weights: copy it again with them (once)."""
        if self._models_fetched:
            return
        copy = results.fetch(self.location, with_checkpoints=True)
        shutil.rmtree(self.path.parent, ignore_errors=True)  # the copy without weights (results.fetch's folder)
        self.record.local_dir = self.path = copy
        self._models_fetched = True


def _plain(text: str) -> bool:
    """A string that YAML reads back as itself (not a number, bool, null, list or quoted text)."""
    from raytune_ft.space.spaces import parse_value

    try:
        return parse_value("override", text) == text
    except ValueError:
        return False
