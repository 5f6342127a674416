"""A teacher is fitted once per dataset: another search in the same storage folder with the same
data and teacher config copies it in and says so; any change of recipe or data fits anew."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raytune_ft import checkpoints, layout, models
from raytune_ft.config import TrialConfig
from raytune_ft.search import teacher_reuse


def _fitted(root, name: str, cfg: TrialConfig) -> None:
    teacher_dir = root / name / layout.TEACHER_DIR
    checkpoints.save_checkpoint(teacher_dir, models.build_model("compact_cnn_16", 3, weights="none"),
                                config=cfg.to_dict(), class_names=("a", "b", "c"), metrics={"val_acc": 0.9})
    teacher_reuse.write_key(teacher_dir, cfg.to_dict())


def test_the_key_ignores_where_it_runs_and_sees_every_recipe_and_data_setting():
    cfg = TrialConfig(model="cifar_resnet20", weights="none", dataset="fashion_mnist", epochs=30)
    key = teacher_reuse.teacher_key(cfg.to_dict())
    assert key == teacher_reuse.teacher_key(dataclasses.replace(cfg, cpus_per_trial=2, latency_budget_s=1).to_dict())
    for change in ({"epochs": 31}, {"data_seed": 1}, {"val_fraction": 0.1}, {"random_erasing": 0.5},
                   {"data_root": "/elsewhere"}):
        assert teacher_reuse.teacher_key(dataclasses.replace(cfg, **change).to_dict()) != key, change


def test_a_fitted_teacher_is_found_in_another_experiment_of_the_same_storage(tmp_path):
    cfg = TrialConfig(model="compact_cnn_16", weights="none", epochs=3)
    _fitted(tmp_path, "first", cfg)
    (tmp_path / "broken" / layout.TEACHER_DIR).mkdir(parents=True)  # a key without a checkpoint is skipped
    teacher_reuse.write_key(tmp_path / "broken" / layout.TEACHER_DIR, cfg.to_dict())
    found = teacher_reuse.find_fitted(tmp_path, cfg.to_dict(), exclude=tmp_path / "second")
    assert found == tmp_path / "first" / layout.TEACHER_DIR
    assert teacher_reuse.find_fitted(tmp_path, cfg.to_dict(), exclude=tmp_path / "first") is None  # not itself
    assert teacher_reuse.find_fitted(tmp_path, dataclasses.replace(cfg, lr=0.1).to_dict(),
                                     exclude=tmp_path / "second") is None
    teacher_reuse.copy_in(found, tmp_path / "second" / layout.TEACHER_DIR)
    model, meta = checkpoints.load_checkpoint(tmp_path / "second" / layout.TEACHER_DIR)
    assert meta["metrics"]["val_acc"] == 0.9 and isinstance(model, torch.nn.Module)


def test_a_search_reuses_the_teacher_and_records_where_it_came_from(tmp_path, capsys):
    from raytune_ft import data as data_mod
    from raytune_ft import search
    from raytune_ft.space import builtin_space_path, load_space

    space = load_space(builtin_space_path("quickstart")).with_overrides(
        ["max_samples=120", "image_size=16", "latency_budget_s=0.05", "teacher.epochs=1"])
    splits = data_mod.load_splits(search.students_data_config(space)).without_test()
    cfg = space.teacher_config()
    teacher_dir = tmp_path / "first" / layout.TEACHER_DIR
    checkpoints.save_checkpoint(teacher_dir, models.build_model(cfg.model, splits.num_classes, weights="none"),
                                config=cfg.to_dict(), class_names=splits.class_names,
                                metrics={"val_acc": 0.5, "epoch": 1})
    teacher_reuse.write_key(teacher_dir, cfg.to_dict())
    second = tmp_path / "second"
    second.mkdir()
    info, logits, _ = search.obtain_teacher(space, splits, second, reuse_root=tmp_path)
    assert "teacher: reusing the teacher fitted by experiment 'first'" in capsys.readouterr().out
    assert info["reused_from"] == str(teacher_dir) and logits.shape == (len(splits.y_train), splits.num_classes)
    assert (second / layout.TEACHER_DIR / layout.TEACHER_KEY_JSON).is_file()  # reusable in turn



def test_a_teacher_that_cannot_be_fitted_stops_the_search_before_any_trial_naming_why(tmp_path, monkeypatch):
    """The teacher's Ray task fails (Ray raises its own error with the teacher's exception as .cause):
    the search stops with one line naming the model and the cause, before any trial, writing nothing
    a later search could mistake for a fitted teacher."""
    from raytune_ft import data as data_mod
    from raytune_ft import search
    from raytune_ft.search import trial
    from raytune_ft.space import builtin_space_path, load_space

    class TaskError(Exception):  # the shape of ray.exceptions.RayTaskError: the remote exception as .cause
        cause = FloatingPointError("the loss is nan at step 3 (lr 1e+30)")

    def fails(cfg, data, after=None):
        raise TaskError("ray::fit_teacher() (pid=1) ... a long remote traceback")

    monkeypatch.setattr(trial, "fit_teacher_remote", fails)
    space = load_space(builtin_space_path("quickstart")).with_overrides(
        ["max_samples=120", "image_size=16", "teacher.model=compact_cnn_16", "teacher.weights=none"])
    splits = data_mod.load_splits(search.students_data_config(space)).without_test()
    with pytest.raises(search.UserError, match=r"teacher: compact_cnn_16 could not be fitted on this data "
                                                r"\(FloatingPointError: the loss is nan at step 3 \(lr 1e\+30\)\); "
                                                r"no trial has started"):
        search.obtain_teacher(space, splits, tmp_path, reuse_root=tmp_path.parent)
    assert not (tmp_path / layout.TEACHER_DIR / layout.TEACHER_KEY_JSON).exists()
