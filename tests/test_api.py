"""The Python API (raytune_ft/api.py, re-exported lazily by raytune_ft): importing it is light, bad
input fails in one line before Ray starts, and on the shared small search (`readme_run`) an opened
experiment's tables, sessions, PyTorch modules and export_best agree with what the search measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import raytune_ft
from raytune_ft import layout, search
from raytune_ft.api import Preprocessing, override_strings
from raytune_ft.space.spaces import builtin_space_path, load_space

ROOT = Path(__file__).resolve().parents[1]


def test_importing_raytune_ft_is_light_and_the_public_names_load_on_first_use():
    code = ("import sys, raytune_ft; heavy = {'ray', 'torch', 'optuna', 'pandas'}; "
            "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules)); "
            "assert raytune_ft.open_experiment.__module__ == 'raytune_ft.api'; "
            "assert not {'ray', 'torch', 'optuna'} & set(sys.modules), sorted(sys.modules); "
            "from raytune_ft import search; assert search.__name__ == 'raytune_ft.search'; "
            "assert set(raytune_ft.__all__) <= set(dir(raytune_ft))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert raytune_ft.__all__ == ["Experiment", "Preprocessing", "open_experiment", "pareto", "run_search"]
    with pytest.raises(AttributeError, match="no attribute 'serch'"):
        raytune_ft.serch  # noqa: B018


def test_overrides_given_as_a_dict_reach_the_space_as_the_same_values():
    given = {"epochs": 2, "latency_budget_s": 0.05, "data_root": "/data/my images", "search.sampler": "gp",
             "search.initial": [], "search.callbacks": ["tensorboard"], "teacher.checkpoint": None}
    space = load_space(builtin_space_path("quickstart")).with_overrides(override_strings(given))
    assert (space.fixed["epochs"], space.fixed["latency_budget_s"], space.fixed["data_root"]) == (2, 0.05,
                                                                                                "/data/my images")
    assert (space.search.sampler, space.search.initial, space.search.callbacks) == ("gp", (), ("tensorboard",))
    assert space.teacher_checkpoint is None
    assert override_strings(["epochs=2"]) == ["epochs=2"] and override_strings(None) == []
    with pytest.raises(TypeError, match="a dict or a list"):
        override_strings("epochs=2")


@pytest.mark.parametrize(("space", "overrides", "message"), [
    ("quickstart", {"epochz": 2}, "unknown key 'epochz'; did you mean 'epochs'"),
    ("quickstart", {"search.callbacks": ["mlfow"]},
     "search.callbacks: unknown callback 'mlfow'; choose from mlflow, tensorboard, wandb"),
    ({"name": "mine", "fixed": {"epochz": 1}, "params": {}, "objectives": {"val_acc": "max"}}, None,
     "<space dict>: fixed.epochz: unknown key 'epochz'"),
    ("no_such_space", None, "space file 'no_such_space' not found; give a path or one of:"),
])
def test_bad_input_raises_one_line_before_ray_starts(tmp_path, space, overrides, message):
    import ray

    with pytest.raises(ValueError) as info:
        raytune_ft.run_search(space, overrides, storage_path=str(tmp_path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


def test_a_space_given_as_a_dict_is_kept_in_the_experiment_as_the_file_it_names(tmp_path):
    import yaml

    given = yaml.safe_load(builtin_space_path("quickstart").read_text())
    space, where = search.prepare(search.SearchOptions(space=given, overrides=("epochs=1",), storage_path=str(tmp_path),
                                                 name="d"))
    assert space.path == str(tmp_path / "d" / layout.SPACE_YAML) and where.local == tmp_path / "d"
    assert load_space(space.path).with_overrides(["epochs=1"]) == space  # the file is the dict, as given
    shipped = load_space(builtin_space_path("quickstart")).with_overrides(["epochs=1"])
    assert (space.fixed, space.params, space.search) == (shipped.fixed, shipped.params, shipped.search)


def test_opening_a_folder_that_is_not_an_experiment_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        raytune_ft.open_experiment(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither space.json nor trial_\\* folders"):
        raytune_ft.open_experiment(tmp_path)


# --- on the shared small search ------------------------------------------------------------------


@pytest.mark.e2e
def test_an_opened_experiment_holds_the_tables_the_search_wrote(readme_run):
    import pandas as pd

    exp = raytune_ft.open_experiment(readme_run.path)
    # trial ids are 8 hex digits: some are all digits, which pandas would read as numbers
    written = pd.read_csv(readme_run.path / layout.TRIALS_CSV, dtype={"trial_id": str})
    assert sorted(exp.trials["trial_id"]) == sorted(written["trial_id"]) and exp.state == "finished"
    pareto_csv = pd.read_csv(readme_run.path / layout.PARETO_CSV, dtype={"trial_id": str})
    assert list(exp.front["trial_id"]) == list(pareto_csv["trial_id"])
    assert exp.front["test_acc"].tolist() == pytest.approx(pareto_csv["test_acc"].tolist())
    teacher = json.loads((readme_run.path / layout.TEACHER_JSON).read_text())
    assert len(exp.teacher) == 1 and exp.teacher["val_acc"].iloc[0] == teacher["val_acc"]
    assert sorted(exp.baselines["baseline"]) == ["teacher_fp32", "teacher_int8"]
    assert exp.objectives == {"val_acc": "max", "model_bytes_compressed": "min"}
    assert exp.start_time is not None and "3 trials (3 completed)" in repr(exp)
    with pytest.raises(KeyError, match="no trial 'nope'.*its trials:"):
        exp.session("nope")


@pytest.mark.e2e
def test_sessions_and_torch_modules_reproduce_the_measured_accuracy(readme_run):
    import torch

    from raytune_ft import data
    from raytune_ft.config import TrialConfig

    exp = readme_run.variables["exp"]
    for _, row in exp.trials.iterrows():
        session, preprocess = exp.session(row["trial_id"])
        manifest = json.loads((exp.export_dir(row["trial_id"]) / layout.MANIFEST).read_text())
        cfg = TrialConfig.from_dict(manifest["config"])
        splits = data.load_splits(cfg)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (splits.mean, splits.std))
        images = (splits.x_val * std + mean).numpy()  # the validation images as a user has them: RGB in [0, 1]
        y = splits.y_val.numpy()
        assert preprocess.input_size == (3, cfg.image_size, cfg.image_size)
        assert preprocess.class_names == tuple(splits.class_names)
        logits = session.run(None, {session.get_inputs()[0].name: preprocess(images)})[0]
        # the deployed file's accuracy (int8: what val_acc is); one image of float noise allowed
        assert abs((logits.argmax(1) == y).mean() - row["val_acc"]) <= 1 / len(y) + 1e-9, row["trial_id"]
        model, preprocess = exp.torch_model(row["trial_id"])
        with torch.no_grad():
            torch_acc = (model(torch.from_numpy(preprocess(images))).argmax(1).numpy() == y).mean()
        expected = row["val_acc_fp32"] if row["use_quantization"] else row["val_acc"]
        assert abs(torch_acc - expected) <= 1 / len(y) + 1e-9, row["trial_id"]


@pytest.mark.e2e
def test_export_best_copies_the_front_models_with_their_manifests(readme_run, tmp_path):
    exp = readme_run.variables["exp"]
    index = exp.export_best(5, tmp_path)
    assert list(index["trial_id"]) == list(exp.front["trial_id"])
    for folder in index["folder"]:
        manifest = json.loads((tmp_path / folder / layout.MANIFEST).read_text())
        assert (tmp_path / folder / manifest["deployed"]).is_file()
    assert np.isfinite(index["val_acc"]).all()


def test_preprocessing_crops_like_the_recorded_decode():
    """A model trained on image files with a centre crop (manifest "decode") gets the same crop
    from arrays; without one, the whole image is resized."""
    image = np.zeros((3, 8, 8), dtype=np.float32)
    image[:, 2:6, 2:6] = 1.0
    manifest = {"input_size": [3, 4, 4], "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
                "class_names": ["a"], "decode": {"crop_pct": 0.5, "interpolation": "bicubic"}}
    cropped = Preprocessing.from_manifest(manifest)
    assert (cropped.crop_pct, cropped.interpolation) == (0.5, "bicubic")
    np.testing.assert_allclose(cropped(image), 1.0)
    whole = Preprocessing.from_manifest({k: v for k, v in manifest.items() if k != "decode"})
    assert whole.crop_pct == 1.0 and whole(image).min() < 0.1  # the dark border, resized in
