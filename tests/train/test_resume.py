"""Resuming fit() from a trial checkpoint gives exactly the run that was never interrupted (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raytune_ft import checkpoints, layout, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.families import quantization
from raytune_ft.search import trial

BASE = dict(model="test_efficientnet", weights="none", epochs=3, batch_size=16, channels_last=False,
            bn_recalibration_batches=2, export=False)
RECIPES = {
    "magnitude+l2sp+kd+sgd": dict(use_pruning=True, final_sparsity=0.7, pruning_start=0.1, pruning_end=0.8,
                                  pruning_frequency=3, use_l2sp=True, l2sp_alpha=0.01, use_kd=True,
                                  use_label_smoothing=True, optimizer="sgd", lr=0.05, use_weight_decay=True,
                                  weight_decay=0.01, dropout=0.2),
    "channel+magnitude+l2sp": dict(use_channel_pruning=True, channel_pruning_ratio=0.5, channel_pruning_steps=3,
                                   pruning_start=0.0, pruning_end=0.9, use_pruning=True, final_sparsity=0.5,
                                   channel_round_to=1, use_l2sp=True, l2sp_alpha=0.01, lr=0.01),
    "channel-global-taylor": dict(use_channel_pruning=True, channel_pruning_ratio=0.4, channel_pruning_steps=4,
                                  channel_pruning_scope="global", channel_importance="taylor", pruning_end=1.0,
                                  channel_round_to=1, lr=0.01),
    # channels_last on: the pruned network's new weights must come back in that layout, as a resumed
    # run's loaded network does (they drifted 0.03 apart in 2 epochs before the loop restored it)
    "channel+channels_last": dict(use_channel_pruning=True, channel_pruning_ratio=0.5, channel_pruning_steps=3,
                                  pruning_end=0.9, channel_round_to=1, lr=0.01, channels_last=True),
    # quantization-aware from 20 % of training: the epoch-1 checkpoint is taken mid fake quantization
    "qat+magnitude": dict(use_quantization=True, export=True, quant_aware_fraction=0.8, use_pruning=True,
                          final_sparsity=0.5, pruning_end=0.5, pruning_frequency=2, lr=0.01),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(cfg: TrialConfig, splits, teacher, *, model=None, resume=None, save_after=None, folder=None):
    """fit() as a trial runs it; with `save_after`, write the trial checkpoint of that epoch to `folder`."""
    model = model or models.build_model(cfg.model, splits.num_classes, weights="none")
    reports = []

    def report(metrics, model, state):
        reports.append(dict(metrics))
        if metrics["epoch"] == save_after:
            checkpoints.save_checkpoint(folder, model, config=cfg.to_dict(), class_names=splits.class_names,
                                        metrics=metrics)
            torch.save(state(), folder / layout.TRAINING_STATE)

    train.fit(cfg, model, splits, head_names=models.head_parameter_names(model), report=report,
              teacher_logits=teacher if cfg.use_kd else None, resume=resume)
    return model, reports


@pytest.mark.parametrize("recipe", RECIPES)
def test_resumed_fit_matches_the_uninterrupted_run_exactly(tiny_splits, tmp_path: Path, recipe):
    cfg = TrialConfig.from_dict({**BASE, **RECIPES[recipe]})
    teacher = torch.randn(len(tiny_splits.x_train), 3, generator=torch.Generator().manual_seed(1))
    whole, whole_reports = _run(cfg, tiny_splits, teacher, save_after=1, folder=tmp_path)

    # a new process would build the model afresh and find the epoch-1 checkpoint
    fresh = models.build_model(cfg.model, tiny_splits.num_classes, weights="none")
    torch.manual_seed(12345)  # whatever the RNG did before must not matter
    resume = trial.load_training_checkpoint(fresh, tmp_path)
    assert resume is not None and resume["epoch"] == 1
    resumed, resumed_reports = _run(cfg, tiny_splits, teacher, model=fresh, resume=resume)

    assert [r["epoch"] for r in resumed_reports] == [2, 3]  # not from epoch 1
    for a, b in zip(whole_reports[1:], resumed_reports, strict=True):
        a.pop("epoch_time_s"), b.pop("epoch_time_s")
        assert a == b
    expected, got = whole.state_dict(), resumed.state_dict()
    assert list(expected) == list(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    if cfg.use_channel_pruning:
        assert resumed_reports[-1]["params"] < whole_reports[0]["params"]  # the schedule went on pruning
    if cfg.quant_aware_fraction:  # fake quantization was on at the checkpoint and is off at the end
        assert [r["quant_aware"] for r in whole_reports] == [1.0, 1.0, 1.0]
        assert not quantization.FakeQuantization.installed(resumed)
    if cfg.use_pruning:
        assert whole_reports[-1]["sparsity"] == pytest.approx(cfg.final_sparsity, abs=1e-3)


def test_final_checkpoint_has_no_training_state_and_the_state_is_plain_tensors(tiny_splits, tmp_path: Path):
    cfg = TrialConfig.from_dict({**BASE, "epochs": 2, **RECIPES["channel+magnitude+l2sp"]})
    _run(cfg, tiny_splits, None, save_after=1, folder=tmp_path)
    # weights_only=True refuses anything but tensors, numbers, strings and containers of them
    state = torch.load(tmp_path / layout.TRAINING_STATE, weights_only=True)
    assert {"epoch", "step", "optimizer", "batch_rng", "torch_rng", "masked", "l2sp_anchors",
            "channel_pruner"} <= set(state)
    (tmp_path / layout.TRAINING_STATE).unlink()  # what a trial's last checkpoint looks like
    assert trial.load_training_checkpoint(models.build_model(cfg.model, 3, weights="none"), tmp_path) is None


@pytest.mark.parametrize("key", ["checkpoint_every", "keep_checkpoints"])
def test_checkpoint_settings_are_validated(key):
    from raytune_ft.space import spaces

    space = spaces.load_space(spaces.resolve_space("quickstart"))
    assert getattr(space.with_overrides([f"search.{key}=3"]).search, key) == 3
    with pytest.raises(spaces.SpaceError, match=f"search.{key}.*must be an int >= 1, got 0"):
        space.with_overrides([f"search.{key}=0"])
