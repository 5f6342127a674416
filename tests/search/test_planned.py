"""Planned final sizes (planned.py): exact against the trained model's measured sizes, kept over a
resume, and what MO-ASHA ranks at a rung."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raytune_ft import checkpoints, layout, models, train
from raytune_ft.config import TrialConfig
from raytune_ft.data import Splits
from raytune_ft.deploy import export
from raytune_ft.families import pruning
from raytune_ft.search import planned
from raytune_ft.search.mo_asha import MOASHAScheduler
from tests.conftest import class_splits

BASE = dict(model="test_efficientnet", weights="none", epochs=3, batch_size=16, channels_last=False,
            image_size=16, bn_recalibration_batches=2)
# the pruning window starts after epoch 1 (6 steps of 18) or reaches into it: epoch 1 is transient
RECIPES = {
    "magnitude-global": dict(use_pruning=True, final_sparsity=0.7, pruning_start=0.5, pruning_end=0.9,
                             pruning_frequency=2, pruning_scope="global"),
    "magnitude-layer": dict(use_pruning=True, final_sparsity=0.65, pruning_start=0.5, pruning_end=0.9,
                            pruning_frequency=2, pruning_scope="layer"),
    "channel": dict(use_channel_pruning=True, channel_pruning_ratio=0.5, channel_pruning_steps=2,
                    pruning_start=0.4, pruning_end=0.9, channel_round_to=4),
    "channel-taylor+magnitude": dict(use_channel_pruning=True, channel_pruning_ratio=0.4, channel_pruning_steps=2,
                                     channel_importance="taylor", pruning_start=0.2, pruning_end=0.9,
                                     channel_round_to=1, use_pruning=True, final_sparsity=0.6),
}
METRICS = ("params", "nonzero_params", "model_bytes", "macs", "flops")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits() -> Splits:
    return class_splits(16)


def _fit(cfg: TrialConfig, splits: Splits, metrics=METRICS, model=None, resume=None, keep_state=None):
    model = model or models.build_model(cfg.model, splits.num_classes, weights="none")
    reports = []

    def report(m, _model, state):
        reports.append(dict(m))
        if keep_state is not None and m["epoch"] == 1:
            keep_state.update(state())

    train.fit(cfg, model, splits, head_names=models.head_parameter_names(model), report=report, resume=resume,
              observers=planned.observers(cfg, metrics))
    return model, reports


def _measured(model: torch.nn.Module, cfg: TrialConfig, last: dict, tmp_path) -> dict[str, int]:
    """The final model's sizes as the trial's last row reports them: the ONNX file's with export
    (export.measure_deployed), else the PyTorch model's and the per-epoch stand-in bytes."""
    model.eval()
    flops = export.count_flops(model, cfg.image_size)
    if cfg.export:
        path = export.export_onnx(model, tmp_path / "model.onnx", image_size=cfg.image_size)
        params, nonzero = export.onnx_weight_counts(path)
        size = path.stat().st_size
    else:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        params, nonzero, size = last["params"], last["nonzero_params"], len(buffer.getvalue())
    return {"params": params, "nonzero_params": nonzero, "model_bytes": size, "macs": flops // 2, "flops": flops}


@pytest.mark.parametrize("export_on", [False, True], ids=["torch", "onnx"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_planned_sizes_at_epoch_1_equal_the_trained_models_measured_sizes(splits, tmp_path, recipe, export_on):
    cfg = TrialConfig.from_dict({**BASE, **RECIPES[recipe], "export": export_on})
    model, reports = _fit(cfg, splits)
    final = _measured(model, cfg, reports[-1], tmp_path)
    first = reports[0]
    # epoch 1 is transient: the schedule has not reached its target yet
    assert first["nonzero_params"] > reports[-1]["nonzero_params"]
    for m in METRICS:
        assert first[f"planned_{m}"] == final[m], m
        assert {r[f"planned_{m}"] for r in reports} == {final[m]}, m  # the same plan at every epoch
    if cfg.use_pruning:  # what the plan counts: the final mask keeps N - round(s N) (global) or per layer
        sizes = [w.numel() for w in pruning.prunable_parameters(model, models.head_parameter_names(model)).values()]
        kept = planned.kept_weights(sizes, cfg.final_sparsity, cfg.pruning_scope)
        other = sum(p.numel() for p in model.parameters()) - sum(sizes)
        assert reports[-1]["nonzero_params"] == kept + other


def test_layer_and_global_scope_plan_different_counts():
    sizes = [10, 3, 3]
    assert planned.kept_weights(sizes, 0.5, "global") == 16 - 8
    assert planned.kept_weights(sizes, 0.5, "layer") == 5 + 1 + 1  # round(1.5) = 2 pruned per small layer


def test_a_resumed_trial_reports_the_plan_of_its_start(splits, tmp_path):
    from raytune_ft.search import trial

    cfg = TrialConfig.from_dict({**BASE, **RECIPES["channel"], "export": False})
    model = models.build_model(cfg.model, splits.num_classes, weights="none")
    reports = []

    def report(m, model, state):  # the trial checkpoint of epoch 2, after the first channel-pruning step
        reports.append(dict(m))
        if m["epoch"] == 2:
            checkpoints.save_checkpoint(tmp_path, model, config=cfg.to_dict(), class_names=splits.class_names,
                                        metrics=m)
            torch.save(state(), tmp_path / layout.TRAINING_STATE)

    train.fit(cfg, model, splits, head_names=models.head_parameter_names(model), report=report,
              observers=planned.observers(cfg, METRICS))
    fresh = models.build_model(cfg.model, splits.num_classes, weights="none")
    resume = trial.load_training_checkpoint(fresh, tmp_path)  # a new process: the pruned weights
    assert resume["planned_sizes"] and sum(p.numel() for p in fresh.parameters()) < reports[0]["params"]
    _, resumed = _fit(cfg, splits, model=fresh, resume=resume)
    assert [r["epoch"] for r in resumed] == [3]
    for m in METRICS:  # not re-planned from the half-pruned network (that plan would be smaller)
        assert resumed[0][f"planned_{m}"] == reports[0][f"planned_{m}"], m
    assert resumed[0]["planned_params"] == resumed[0]["params"] == reports[-1]["params"]
    replanned = planned.plan(cfg, fresh, models.head_parameter_names(fresh))
    assert replanned["params"] < reports[0]["planned_params"]


def test_mo_asha_ranks_a_late_pruning_window_on_its_planned_size(splits):
    """Two real trials at rung 1: `early` has pruned to 50 % in epoch 1, `late` prunes to 90 % in
    epoch 3 and is still dense at epoch 1. On the transient size `late` would be stopped; on the
    planned one it is the smaller trial and continues."""
    early = TrialConfig.from_dict({**BASE, "use_pruning": True, "final_sparsity": 0.5, "pruning_start": 0.0,
                                   "pruning_end": 0.25, "pruning_frequency": 2, "export": False})
    late = TrialConfig.from_dict({**BASE, "use_pruning": True, "final_sparsity": 0.9, "pruning_start": 0.7,
                                  "pruning_end": 0.9, "pruning_frequency": 2, "export": False})
    _, early_reports = _fit(early, splits, metrics=("nonzero_params",))
    _, late_reports = _fit(late, splits, metrics=("nonzero_params",))
    first_early, first_late = early_reports[0], late_reports[0]
    assert first_late["nonzero_params"] > first_early["nonzero_params"]  # transient: late looks bigger
    assert first_late["planned_nonzero_params"] < first_early["planned_nonzero_params"]  # planned: smaller
    assert first_late["planned_nonzero_params"] == late_reports[-1]["nonzero_params"]

    def decide(result: dict, planned_too: bool) -> str:
        scheduler = MOASHAScheduler(["nonzero_params"], ["min"], max_t=3, grace_period=1, reduction_factor=2)
        for trial_id, r in (("early", first_early), ("late", result)):
            r = r if planned_too else {k: v for k, v in r.items() if not k.startswith("planned_")}
            action = scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), r)
        return action

    assert decide(first_late, planned_too=False) == MOASHAScheduler.STOP
    assert decide(first_late, planned_too=True) == MOASHAScheduler.CONTINUE
    # with accuracy as a second objective the rung point holds the measured val_acc and the planned size
    scheduler = MOASHAScheduler(["val_acc", "nonzero_params"], ["max", "min"], max_t=3)
    scheduler.on_trial_result(None, SimpleNamespace(trial_id="late"), first_late)
    np.testing.assert_array_equal(scheduler.rungs[1]["late"],
                                  [-first_late["val_acc"], first_late["planned_nonzero_params"]])


def test_only_plannable_metrics_get_an_observer():
    cfg = TrialConfig.from_dict(BASE)
    assert planned.observers(cfg, ("model_bytes_compressed",)) == []
    (family,) = planned.observers(cfg, ("model_bytes_compressed", "nonzero_params", "macs"))
    assert family.metrics == ("nonzero_params", "macs")
    with pytest.raises(ValueError, match="cannot plan.*val_acc"):
        planned.PlannedSizes(cfg, ("val_acc",))
