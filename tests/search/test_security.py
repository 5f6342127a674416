"""Security defaults: files are loaded without unpickling code, foreign folders are not restored
by accident, the dashboard is not exposed by default."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from raytune_ft import checkpoints, layout, models, search
from raytune_ft.search import trial


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("file", [layout.CHECKPOINT_WEIGHTS, layout.TRAINING_STATE])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path, file: str):
    folder, marker = tmp_path / "ckpt", tmp_path / "pwned"
    model = models.build_model("test_efficientnet", 3, weights="none")
    checkpoints.save_checkpoint(folder, model, config={"model": "test_efficientnet"}, class_names=("a", "b", "c"),
                                metrics={})
    if file == layout.TRAINING_STATE:
        torch.save({"epoch": 1, "step": _RunsCode(marker)}, folder / file)
    else:
        torch.save({**model.state_dict(), "evil": _RunsCode(marker)}, folder / file)
    with pytest.raises(pickle.UnpicklingError):
        if file == layout.TRAINING_STATE:
            trial.load_training_checkpoint(models.build_model("test_efficientnet", 3, weights="none"), folder)
        else:
            checkpoints.load_checkpoint(folder)
    assert not marker.exists()


def test_resume_restores_only_a_raytune_ft_experiment(tmp_path: Path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "tuner.pkl").write_bytes(pickle.dumps(_RunsCode(tmp_path / "pwned")))
    args = search.parse_args(["--storage-path", str(tmp_path), "--name", "foreign", "--resume"])
    with pytest.raises(search.UserError, match="not a raytune_ft experiment"):
        search.prepare(args)
    args = search.parse_args(["--storage-path", str(tmp_path), "--name", "foreign"])
    with pytest.raises(search.UserError, match="pass --resume"):
        search.prepare(args)
    (foreign / "space.json").write_text(json.dumps({}))
    space, where = search.prepare(search.parse_args(["--storage-path", str(tmp_path), "--name", "foreign",
                                                     "--resume"]))
    assert where.local == foreign and not where.remote
    assert not (tmp_path / "pwned").exists()


def test_defaults_no_dashboard_and_storage_from_the_environment(monkeypatch):
    args = search.parse_args([])
    assert args.dashboard_host is None and args.storage_path == search.DEFAULT_STORAGE
    monkeypatch.setenv(search.STORAGE_ENV, "s3://bucket/prefix")
    assert search.parse_args([]).storage_path == "s3://bucket/prefix"


def test_a_uri_storage_path_stages_locally_and_uploads(tmp_path: Path):
    storage = tmp_path / "store"
    storage.mkdir()
    where = search.locate(f"file://{storage}", "exp")  # any pyarrow.fs URI takes the s3:// code path
    assert where.remote and where.uri == f"file://{storage}/exp" and where.storage_path == f"file://{storage}"
    assert where.local.is_dir() and where.local.name == "exp" and not where.exists()
    (where.local / "teacher").mkdir()
    (where.local / "teacher" / "model.pt").write_bytes(b"w")
    (where.local / "trials.csv").write_text("trial_id\n")
    where.upload("teacher", "trials.csv", "not-there.csv")
    assert (storage / "exp" / "teacher" / "model.pt").read_bytes() == b"w"
    assert (storage / "exp" / "trials.csv").read_text() == "trial_id\n"
    assert where.exists() and where.has("trials.csv") and not where.has("space.json")
