"""MO-ASHA in a real search: space validation, and early-stopped trials kept honest end to end."""

from __future__ import annotations

import pandas as pd
import pytest

from raytune_ft import search
from raytune_ft.space import spaces
from raytune_ft.space.spaces import SpaceError


@pytest.fixture(scope="module")
def mo_space() -> spaces.Space:
    return spaces.load_space(spaces.builtin_space_path("quickstart_mo_asha"))


def test_quickstart_mo_asha_is_the_quickstart_with_a_scheduler(mo_space):
    plain = spaces.load_space(spaces.builtin_space_path("quickstart"))
    assert mo_space.scheduler == spaces.SchedulerSettings(type="mo_asha", grace_period=1, reduction_factor=3)
    # MO-ASHA ranks sizes at every rung, but int8 changes the shipped file only at export (issue 13):
    # the same space without the quantization family, ranked on nonzero_params
    quantization = {"use_quantization", "quant_calibration_batches", "quant_calibration_method"}
    plain_params = tuple(p for p in plain.params if p.name not in quantization)
    assert (mo_space.fixed, mo_space.params) == (plain.fixed, plain_params)
    assert mo_space.objectives == {"val_acc": "max", "nonzero_params": "min"}
    assert plain.scheduler is None and mo_space.max_epochs() == plain.fixed["epochs"]


@pytest.mark.parametrize("override,fragments", [
    ("scheduler.max_t=3", ["scheduler.max_t", "3 is below the trials' epochs (12)"]),
    ("scheduler.grace_period=12", ["scheduler.grace_period", "no rung before max_t (12"]),
    ("scheduler.grace_period=0", ["scheduler.grace_period", "int >= 1", "0"]),
    ("scheduler.reduction_factor=1", ["scheduler.reduction_factor", "> 1", "1"]),
    ("scheduler.type=asha", ["scheduler.type", "mo_asha", "'asha'"]),
    ("scheduler.eta=2", ["scheduler.eta", "reduction_factor"]),
])
def test_scheduler_errors_name_key_and_value(mo_space, override, fragments):
    with pytest.raises(SpaceError) as err:
        mo_space.with_overrides([override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_objective_not_measured_every_epoch_is_rejected(tmp_path, mo_space):
    text = open(mo_space.path).read().replace("nonzero_params: min", "latency_ms_b1: min")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        spaces.load_space(path)
    message = str(err.value)
    for fragment in (str(path), "objectives.latency_ms_b1", "nonzero_params", "model_bytes", "remove the scheduler"):
        assert fragment in message
    # the same objectives without the scheduler are fine
    ok = tmp_path / "ok.yaml"
    ok.write_text(text.replace("scheduler:\n  type: mo_asha\n  grace_period: 1\n  reduction_factor: 3\n", ""))
    assert spaces.load_space(ok).scheduler is None


@pytest.mark.e2e
def test_early_stopped_trials_are_pruned_and_off_the_front(tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join another cluster
    try:
        # reduction_factor 4 with one trial at a time: after the first, a trial passes rung 1
        # only if no recorded trial ranks ahead of it, so some are surely stopped
        argv = ["--space", "quickstart_mo_asha", "--storage-path", str(tmp_path), "--name", "mo",
                "--num-samples", "6", "--set", "max_samples=200", "--set", "epochs=3", "--set", "weights=none",
                "--set", "export=false", "--set", "teacher.epochs=1", "--set", "scheduler.reduction_factor=4",
                "--set", "search.sampler=nsga2", "--set", "search.initial=[]",  # as written before issue 16
                "--set", "search.population_size=3", "--set", "bn_recalibration_batches=1",
                "--set", "cpus_per_trial=1"]
        assert search.main(argv) == 0
    finally:
        ray.shutdown()
    exp = tmp_path / "mo"
    trials = pd.read_csv(exp / "trials.csv")
    front = pd.read_csv(exp / "pareto.csv")
    study = pd.read_csv(exp / "optuna_trials.csv")
    assert len(trials) == 6 == len(study)
    stopped = trials[trials["status"] == "early-stopped"]
    done = trials[trials["status"] == "completed"]
    assert len(stopped) >= 1 and len(done) >= 1 and len(stopped) + len(done) == 6
    assert (stopped["epochs_trained"] < 3).all() and (done["epochs_trained"] == 3).all()
    assert set(front["trial_id"]) <= set(done["trial_id"]) and len(front) >= 1
    # the study: one row per trial, PRUNED exactly for the early-stopped ones, without values
    states = study["state"].value_counts().to_dict()
    assert states == {"PRUNED": len(stopped), "COMPLETE": len(done)} or \
        states == {"COMPLETE": len(done), "PRUNED": len(stopped)}
    pruned = study[study["state"] == "PRUNED"]
    assert pruned["values_0"].isna().all() and (pruned["user_attrs_early_stopped_at_epoch"] < 3).all()
    complete = study[study["state"] == "COMPLETE"]
    assert sorted(complete["values_0"]) == pytest.approx(sorted(done["val_acc"]))
    assert sorted(complete["values_1"]) == pytest.approx(sorted(done["nonzero_params"]))
    # issue 16: the rungs ranked planned final sizes, reported every epoch and exact at the end
    assert (done["planned_nonzero_params"] == done["nonzero_params"]).all()
    assert (stopped["planned_nonzero_params"] < stopped["params"]).all()
    # the rung history was kept for --resume
    assert (exp / "mo_asha_state.pkl").stat().st_size > 0


def test_honest_optuna_search_tells_pruned_complete_and_fail(tmp_path, mo_space):
    from raytune_ft.search.searcher import HonestOptunaSearch

    metrics, modes = mo_space.metric_and_mode()
    table = tmp_path / "optuna_trials.csv"
    searcher = HonestOptunaSearch(space=mo_space.define_by_run(), metric=metrics, mode=modes,
                                          sampler=mo_space.make_sampler(), epochs=5, table_path=str(table))
    for tid in ("full", "stopped", "own_epochs", "crashed"):
        assert searcher.suggest(tid)
    searcher.on_trial_complete("full", {"epoch": 5, "val_acc": 0.9, "nonzero_params": 100})
    searcher.on_trial_complete("stopped", {"epoch": 1, "val_acc": 0.5, "nonzero_params": 300})
    # a trial's own (searched) epochs win over the fixed default
    searcher.on_trial_complete("own_epochs", {"epoch": 2, "val_acc": 0.7, "nonzero_params": 200,
                                              "config": {"epochs": 2}})
    searcher.on_trial_complete("crashed", {"epoch": 3, "val_acc": 0.6, "nonzero_params": 200}, error=True)
    study = pd.read_csv(table)
    assert list(study["state"]) == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    assert study["values_0"].tolist()[0] == 0.9 and pd.isna(study["values_0"].tolist()[1])
    assert study["user_attrs_early_stopped_at_epoch"].tolist()[1] == 1
    assert study["user_attrs_last_val_acc"].tolist()[1] == 0.5


def test_epoch_size_metrics_match_the_model():
    import io

    import torch

    from raytune_ft.deploy import export
    from raytune_ft.search import trial
    from tests.conftest import TinyClassifier

    model = TinyClassifier()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    out = trial.epoch_size_metrics(model, ("model_bytes", "flops", "macs"), image_size=8)
    assert model.training  # left in training mode for the next epoch
    assert out["model_bytes"] == len(buffer.getvalue())
    assert out["flops"] == export.count_flops(model.eval(), 8) and out["macs"] == out["flops"] // 2
    assert "model_bytes_compressed" not in out
    both = trial.epoch_size_metrics(model, ("model_bytes", "model_bytes_compressed"), image_size=8)
    assert 0 < both["model_bytes_compressed"] < both["model_bytes"]


def test_int8_size_stand_in_is_the_weights_on_the_export_grid():
    import gzip

    import torch

    from raytune_ft.families.quantization import WEIGHT_QMAX, int8_weight_bytes
    from raytune_ft.networks import CompactCNN
    from raytune_ft.search import trial

    torch.manual_seed(0)
    model = CompactCNN(num_classes=10, width=16)
    raw = int8_weight_bytes(model)
    weights = [t for t in model.state_dict().values() if torch.is_floating_point(t) and t.dim() >= 2]
    others = [t for t in model.state_dict().values() if torch.is_floating_point(t) and t.dim() < 2]
    # one byte per weight + an fp32 scale per output channel; every other float tensor in fp32
    assert len(raw) == sum(w.numel() + 4 * w.shape[0] for w in weights) + sum(4 * t.numel() for t in others)
    first = weights[0]
    q = torch.frombuffer(bytearray(raw[:first.numel()]), dtype=torch.int8)
    assert int(q.abs().max()) == WEIGHT_QMAX  # each channel's largest weight sits on the grid's edge

    fp32 = trial.epoch_size_metrics(model, ("model_bytes_compressed",), image_size=28)
    int8 = trial.epoch_size_metrics(model, ("model_bytes_compressed",), image_size=28, int8=True)
    assert int8["model_bytes_compressed"] == len(gzip.compress(raw, compresslevel=6))
    assert 3 * int8["model_bytes_compressed"] < fp32["model_bytes_compressed"]
    with torch.no_grad():  # pruned weights are zeros on the grid too, and gzip shrinks them
        for w in weights:
            w.mul_((torch.rand_like(w) > 0.7).float())
    pruned = trial.epoch_size_metrics(model, ("model_bytes_compressed",), image_size=28, int8=True)
    assert pruned["model_bytes_compressed"] < 0.6 * int8["model_bytes_compressed"]


def test_mo_asha_ranks_the_int8_file_size_but_refuses_int8_sizes_it_cannot_stand_in_for(tmp_path):
    path = spaces.builtin_space_path("fashion_mnist")
    space = spaces.load_space(path)
    assert space.fixed["use_quantization"] is True
    assert space.scheduler is not None and space.scheduler.type == "mo_asha"  # shipped with it
    assert space.with_overrides(["scheduler=none"]).scheduler is None  # trains every trial to the end
    with pytest.raises(SpaceError, match=r"scheduler.*takes only none.*got 'fifo'"):
        space.with_overrides(["scheduler=fifo"])
    ranked = space.with_overrides(["scheduler.grace_period=3"])
    assert ranked.objectives == {"val_acc": "max", "model_bytes_compressed": "min"}
    text = open(path).read()
    assert "\n  model_bytes_compressed: min" in text
    for metric in ("nonzero_params", "model_bytes"):
        bad = tmp_path / f"{metric}.yaml"
        bad.write_text(text.replace("\n  model_bytes_compressed: min", f"\n  {metric}: min"))
        with pytest.raises(SpaceError) as err:
            spaces.load_space(bad)
        for fragment in (str(bad), f"objectives.{metric}", "use_quantization", "model_bytes_compressed",
                         "remove the scheduler"):
            assert fragment in str(err.value), (metric, fragment)
