import pytest
import torch

from raytune_ft.families import channel_pruning, magnitude_pruning, pruning, regularization
from tests.conftest import TINY_HEAD, TinyClassifier


def test_schedule_endpoints_and_monotonic():
    values = [magnitude_pruning.sparsity_at(t, final=0.9, start=10, end=110) for t in range(0, 130)]
    assert values[0] == 0.0 and values[10] == 0.0
    assert values[110] == pytest.approx(0.9) and values[-1] == pytest.approx(0.9)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    # cubic: fast early, slow late (Zhu & Gupta 2017)
    assert values[60] == pytest.approx(0.9 * (1 - 0.5**3))


def test_prune_steps_cover_the_window_and_include_its_end():
    steps = magnitude_pruning.prune_steps(100, start_fraction=0.1, end_fraction=0.75, frequency=20)
    assert steps == [10, 30, 50, 70, 75]
    assert magnitude_pruning.prune_steps(10, start_fraction=0.0, end_fraction=1.0, frequency=100) == [0, 9]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_masks_give_exact_sparsity(scope, sparsity):
    torch.manual_seed(0)
    weights = {"a": torch.randn(37, 11), "b": torch.randn(5, 3, 3, 3)}
    masks = magnitude_pruning.magnitude_masks(weights, sparsity, scope)
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((~m).sum()) for m in masks.values())
    if scope == "global":
        assert zeros == round(sparsity * total)
    else:
        for _name, m in masks.items():
            assert int((~m).sum()) == round(sparsity * m.numel())


def test_masks_are_exact_even_with_ties_and_keep_the_largest():
    weights = {"w": torch.ones(10, 10)}
    weights["w"][0, :3] = 5.0
    masks = magnitude_pruning.magnitude_masks(weights, 0.5, "global")
    assert int(masks["w"].sum()) == 50
    assert masks["w"][0, :3].all()


def test_global_scope_prunes_small_layers_more():
    weights = {"small": torch.full((100,), 0.01), "large": torch.full((100,), 1.0)}
    masks = magnitude_pruning.magnitude_masks(weights, 0.5, "global")
    assert int(masks["small"].sum()) == 0 and int(masks["large"].sum()) == 100


def test_prunable_parameters_skip_the_head_and_masks_roundtrip_through_zeros():
    model = TinyClassifier()
    prunable = pruning.prunable_parameters(model, TINY_HEAD)
    assert set(prunable) == {"conv.weight", "conv2.weight"}
    dense = pruning.size_metrics(model, prunable)  # BatchNorm's bias starts at zero
    masks = magnitude_pruning.magnitude_masks(prunable, 0.6, "layer")
    magnitude_pruning.apply_masks(prunable, masks)
    recovered = magnitude_pruning.masks_from_zeros(prunable)
    assert all(torch.equal(recovered[k], masks[k]) for k in masks)
    sizes = pruning.size_metrics(model, prunable)
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert sizes["sparsity"] == pytest.approx(zeros / sum(m.numel() for m in masks.values()))
    assert dense["nonzero_params"] - sizes["nonzero_params"] == sum(int((~m).sum()) for m in masks.values())


def test_channel_prune_steps_spread_over_the_window():
    assert channel_pruning.channel_prune_steps(100, start_fraction=0.0, end_fraction=0.6, steps=4) == [0, 20, 40, 60]
    assert channel_pruning.channel_prune_steps(100, start_fraction=0.2, end_fraction=0.5, steps=1) == [50]


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale"])
@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_channel_pruner_shrinks_the_network_and_its_l2sp_anchors(importance, scope):
    torch.manual_seed(0)
    model = TinyClassifier()
    with torch.no_grad():
        model.bn.weight.uniform_(0.1, 1.0)  # BN-scale importance needs scales that differ
    x = torch.randn(4, 3, 8, 8)
    l2sp = regularization.L2SP(model, TINY_HEAD, alpha=1.0, beta=0.0)
    pruner = channel_pruning.ChannelPruner(model, x, ratio=0.5, importance=importance, steps=2, scope=scope,
                                           head=model.fc)
    for _ in range(2):
        model(x).sum().backward()  # Taylor importance needs gradients
        pruner.step(l2sp.anchors)
    assert model(x).shape == (4, 3)  # still a working network, head intact
    assert model.fc.out_features == 3
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in TinyClassifier().parameters())
    # weights did not move, so the shrunk anchors must be exactly the kept channels
    assert float(l2sp().detach()) == 0.0


@pytest.mark.parametrize("round_to, kept", [(1, 5), (4, 4)])
def test_channel_pruner_round_to_keeps_channel_counts_multiples_of_it(round_to, kept):
    torch.manual_seed(0)
    model = TinyClassifier()  # both convs have 8 output channels; ratio 0.3 keeps int(8 * 0.7) = 5 of them
    pruner = channel_pruning.ChannelPruner(model, torch.randn(2, 3, 8, 8), ratio=0.3, importance="l2", steps=1,
                                           scope="uniform", head=model.fc, round_to=round_to)
    pruner.step()
    assert (model.conv.out_channels, model.conv2.out_channels, model.fc.in_features) == (kept, kept, kept)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_channel_pruning_on_efficientnet_keeps_anchors_aligned():
    from raytune_ft import models

    model = models.build_model("efficientnet_lite0", 10, weights="none")
    head = models.head_parameter_names(model)
    l2sp = regularization.L2SP(model, head, alpha=1.0, beta=0.0)
    before = sum(p.numel() for p in model.parameters())
    pruner = channel_pruning.ChannelPruner(model, torch.randn(2, 3, 32, 32), ratio=0.5, importance="l2", steps=1,
                                           scope="uniform", head=model.get_classifier())
    pruner.step(l2sp.anchors)
    after = sum(p.numel() for p in model.parameters())
    assert 0.2 < after / before < 0.6
    assert float(l2sp().detach()) == 0.0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
