"""The family registry, each family's hooks on a TinyClassifier, and the loop's moments (train.fit)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raytune_ft import families, train
from raytune_ft.config import TrialConfig
from raytune_ft.families import base
from raytune_ft.families.channel_pruning import ChannelPruning
from raytune_ft.families.distillation import Distillation
from raytune_ft.families.magnitude_pruning import MagnitudePruning
from raytune_ft.families.regularization import Regularization
from raytune_ft.train import losses
from tests.conftest import TINY_HEAD, TinyClassifier


class Tiny(TinyClassifier):
    def get_classifier(self) -> torch.nn.Module:  # the head channel pruning keeps whole (like timm's models)
        return self.fc


CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrialConfig)}
# each family with every switch on: the recipes the hook tests below start from
ALL_ON = {
    "channel_pruning": dict(use_channel_pruning=True, channel_pruning_ratio=0.5, channel_pruning_steps=2,
                            channel_round_to=1, pruning_start=0.0, pruning_end=0.5),
    "magnitude_pruning": dict(use_pruning=True, final_sparsity=0.5, pruning_start=0.0, pruning_end=0.5,
                              pruning_frequency=2),
    "distillation": dict(use_kd=True, kd_alpha=0.25, kd_temperature=2.0),
    "regularization": dict(use_weight_decay=True, weight_decay=0.1, use_l2sp=True, l2sp_alpha=0.1,
                           use_label_smoothing=True, label_smoothing=0.1),
    "quantization": dict(use_quantization=True, quant_calibration_batches=2, quant_calibration_method="entropy"),
}


def _run(splits, teacher_logits=None, **settings) -> train.Run:
    """The Run fit() would train (families started, optimizer built), at its first step."""
    cfg = TrialConfig(epochs=2, batch_size=16, channels_last=False, **settings)
    torch.manual_seed(0)
    return train.start_run(cfg, Tiny(), splits, head_names=TINY_HEAD, teacher_logits=teacher_logits)


def _batch(run: train.Run) -> None:
    """Draw the first batch and run the forward pass as the loop does."""
    run.x, run.y, run.idx = next(run.source.epoch(0))
    run.logits = run.trained(run.x).float()


def _only(run: train.Run, cls: type[base.Family]) -> base.Family:
    return next(f for f in run.families if isinstance(f, cls))


# --- the registry ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_each_family_is_registered_by_its_name_with_real_config_fields(name):
    cls = families.family(name)
    assert cls.name == name and issubclass(cls, base.Family)
    assert set(cls.switches) <= set(cls.fields) <= CONFIG_FIELDS
    assert not cls.active(TrialConfig())  # every family is off by default
    for switch in cls.switches:
        cfg = TrialConfig(**{switch: True})
        assert [type(f) for f in families.build(cfg)] == [cls]


def test_every_technique_switch_belongs_to_exactly_one_family():
    switches = [s for cls in families.FAMILIES.values() for s in cls.switches]
    assert len(switches) == len(set(switches))
    execution = {"use_gpu"}  # not a technique: where the trial runs
    assert set(switches) == {f for f in CONFIG_FIELDS if f.startswith("use_")} - execution


def test_unknown_family_lists_the_choices():
    message = ("unknown family 'quantisation'; choose from ['channel_pruning', 'distillation', "
               "'magnitude_pruning', 'quantization', 'regularization']")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        families.family("quantisation")
    with pytest.raises(ValueError, match="unknown family 'quantisation'"):
        families.build(TrialConfig(), names=["regularization", "quantisation"])


def test_build_keeps_registry_order_and_can_restrict_to_names():
    cfg = TrialConfig(**{k: v for settings in ALL_ON.values() for k, v in settings.items()})
    assert [f.name for f in families.build(cfg)] == list(families.FAMILIES)
    assert [f.name for f in families.build(cfg, names=["regularization", "distillation"])] == [
        "distillation", "regularization"]
    assert families.build(TrialConfig(use_kd=True), names=["regularization"]) == []  # named but off


def test_families_resume_keys_are_disjoint_and_load_with_weights_only(tiny_splits, tmp_path):
    teacher = torch.randn(len(tiny_splits.x_train), 3)
    run = _run(tiny_splits, teacher, **{k: v for settings in ALL_ON.values() for k, v in settings.items()})
    shares = [set(f.state_dict()) for f in run.families]
    assert all(shares[:2]) and sum(map(len, shares)) == len(set().union(*shares))
    torch.save(train.training_state(run, epoch=0), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert {"masked", "l2sp_anchors", "channel_pruner"} <= set(state)


# --- each family's hooks on a TinyClassifier ---------------------------------------------------


def test_regularization_decays_matrices_only_and_adds_l2sp_and_label_smoothing(tiny_splits):
    run = _run(tiny_splits, **ALL_ON["regularization"])
    family = _only(run, Regularization)
    assert run.criterion is family.criterion  # label smoothing is the task criterion
    _batch(run)
    terms = losses.objective(run)
    assert list(terms) == ["task_loss", "l2sp_loss", "loss"]
    assert float(terms["l2sp_loss"].detach()) > 0  # the new head's beta·‖w‖²
    ce = torch.nn.functional.cross_entropy
    assert torch.equal(terms["task_loss"], ce(run.logits, run.y, label_smoothing=0.1))
    assert not torch.isclose(terms["task_loss"], ce(run.logits, run.y))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run.lr = 0.5
    assert family.before_step(run) is False
    for name, p in run.model.named_parameters():
        factor = 1 - 0.5 * 0.1 if p.ndim >= 2 else 1.0  # w <- w - lr·λ·w on conv/linear weights, not BN/bias
        assert torch.allclose(p, before[name] * factor), name
    assert family.shadows() == [family.l2sp.anchors]


def test_distillation_weights_hintons_terms_and_needs_a_teacher(tiny_splits):
    teacher = torch.nn.functional.one_hot(tiny_splits.y_train, 3).float() * 4
    run = _run(tiny_splits, teacher, **ALL_ON["distillation"])
    family = _only(run, Distillation)
    assert family.loss_weights == {"task_loss": 0.75, "kd_loss": 0.25}
    _batch(run)
    terms = losses.objective(run)
    assert torch.allclose(terms["loss"], 0.75 * terms["task_loss"] + 0.25 * terms["kd_loss"])
    run.idx = None
    with pytest.raises(ValueError, match="need the batch's sample indices"):
        family.loss_terms(run)
    with pytest.raises(ValueError, match="no teacher logits"):
        _run(tiny_splits, **ALL_ON["distillation"])


def test_magnitude_pruning_masks_at_its_steps_and_keeps_pruned_weights_zero(tiny_splits):
    run = _run(tiny_splits, **ALL_ON["magnitude_pruning"])
    family = _only(run, MagnitudePruning)
    assert family.state_dict() == {"masked": False}
    step = max(family.prune_at)  # the window's end: the final sparsity
    run.step = step
    family.before_forward(run)
    zeros = sum(int((w == 0).sum()) for w in family.prunable.values())
    assert zeros == round(0.5 * sum(w.numel() for w in family.prunable.values()))
    with torch.no_grad():  # an optimizer step moves every weight
        for w in family.prunable.values():
            w.add_(1.0)
    family.after_step(run)
    assert sum(int((w == 0).sum()) for w in family.prunable.values()) == zeros
    assert family.state_dict() == {"masked": True}
    fresh = _only(_run(tiny_splits, **ALL_ON["magnitude_pruning"]), MagnitudePruning)
    fresh.prunable = family.prunable  # a resumed run: the zeros are in its weights
    fresh.load_state_dict(run, {"masked": True})
    assert all(torch.equal(fresh.masks[k], family.masks[k]) for k in family.masks)


def test_channel_pruning_shrinks_the_network_at_its_steps_and_the_others_follow(tiny_splits):
    run = _run(tiny_splits, **{**ALL_ON["channel_pruning"], **ALL_ON["regularization"], **ALL_ON["magnitude_pruning"]})
    channel, magnitude, reg = (_only(run, c) for c in (ChannelPruning, MagnitudePruning, Regularization))
    _batch(run)
    losses.objective(run)["loss"].backward()
    run.step = 1
    assert 1 not in channel.prune_at and channel.before_step(run) is False
    run.step = max(channel.prune_at)
    assert channel.before_step(run) is True
    assert run.model.conv.out_channels < 8
    train.loop.follow_structure(run)
    params = dict(run.model.named_parameters())
    assert {k: a.shape for k, a in reg.l2sp.anchors.items()} == {k: p.shape for k, p in params.items()
                                                                 if k not in TINY_HEAD}
    assert all(any(d is p for p in run.model.parameters()) for d in reg.decayed)
    assert all(magnitude.prunable[k] is params[k] for k in magnitude.prunable)
    assert [p for group in run.optimizer.param_groups for p in group["params"]] == list(run.model.parameters())
    assert channel.state_dict()["channel_pruner"]["current_step"] == 1


@pytest.mark.parametrize("round_to, kept", [(1, 5), (4, 4)])
def test_fit_passes_channel_round_to_to_the_pruner(tiny_splits, round_to, kept):
    cfg = TrialConfig(epochs=1, batch_size=16, lr=0.01, channels_last=False, use_channel_pruning=True,
                      channel_pruning_ratio=0.3, channel_pruning_steps=1, channel_round_to=round_to)
    model = Tiny()
    train.fit(cfg, model, tiny_splits, head_names=TINY_HEAD, report=lambda *_: None)
    assert model.conv.out_channels == model.conv2.out_channels == kept


# --- the loop's moments, seen by a family the registry did not have ------------------------------


class Probe(base.Family):
    """Records the moments the loop calls, adds a term with a weight, a metric and resume state."""

    name = "probe"
    switches = ()
    fields = ()
    calls: list[tuple[str, int]] = []

    @classmethod
    def active(cls, cfg: TrialConfig) -> bool:
        return True

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(cfg)
        self.loss_weights = {"probe_loss": 0.5}
        self.steps_seen = 0

    def start(self, run):
        self.calls.append(("start", run.step))

    def before_forward(self, run):
        self.calls.append(("before_forward", run.step))

    def loss_terms(self, run):
        self.calls.append(("loss_terms", run.step))
        return {"probe_loss": run.logits.pow(2).mean()}

    def before_step(self, run):
        assert all(p.grad is not None for p in run.model.parameters())
        self.calls.append(("before_step", run.step))
        return False

    def after_step(self, run):
        self.steps_seen += 1
        self.calls.append(("after_step", run.step))

    def epoch_end(self, run):
        return {"probe_steps": self.steps_seen}

    def state_dict(self):
        return {"probe_steps": self.steps_seen}

    def load_state_dict(self, run, state):
        self.steps_seen = state["probe_steps"]


def test_a_registered_family_gets_every_moment_in_order_and_its_term_metric_and_state(tiny_splits, monkeypatch):
    monkeypatch.setitem(families.FAMILIES, "probe", Probe)
    monkeypatch.setattr(Probe, "calls", [])
    cfg = TrialConfig(epochs=2, batch_size=32, lr=0.01, channels_last=False)  # 96 samples: 3 steps per epoch
    reports, states = [], []
    train.fit(cfg, TinyClassifier(), tiny_splits, head_names=TINY_HEAD,
              report=lambda metrics, model, state: (reports.append(metrics), states.append(state())))
    moments = ["before_forward", "loss_terms", "before_step", "after_step"]
    assert Probe.calls == [("start", 0)] + [(m, step) for step in range(6) for m in moments]
    assert [r["probe_steps"] for r in reports] == [3, 6] and "probe_loss" in reports[0]
    assert [s["probe_steps"] for s in states] == [3, 6]
    Probe.calls.clear()
    model = TinyClassifier()
    resumed = []
    train.fit(cfg, model, tiny_splits, head_names=TINY_HEAD, resume=states[0],
              report=lambda metrics, model, state: resumed.append(metrics))
    assert [r["probe_steps"] for r in resumed] == [6]  # its state came back
    assert Probe.calls[1] == ("before_forward", 3)


def test_resumed_l2sp_anchors_follow_the_network_to_its_device():
    """Checkpoints are loaded onto the CPU; a GPU trial's anchors must go back to its device (here
    the meta device stands in for CUDA: the same `.to(run.device)` path, no GPU needed)."""
    from types import SimpleNamespace

    model = TinyClassifier()
    cfg = TrialConfig(use_l2sp=True, l2sp_alpha=0.01)
    family = Regularization(cfg)
    family.start(SimpleNamespace(model=model, head_names=TINY_HEAD, cfg=cfg, criterion=None,
                                 device=torch.device("cpu")))
    state = family.state_dict()
    family.load_state_dict(SimpleNamespace(device=torch.device("meta")), state)
    assert {a.device.type for a in family.l2sp.anchors.values()} == {"meta"}
