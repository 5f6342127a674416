"""Tests for raytune_ft.checkpoints: a checkpoint folder written and read back exactly, a channel-pruned
network rebuilt from its tensor shapes, and a folder that is not a checkpoint named."""

import pytest
import torch

from raytune_ft import checkpoints, layout, models


def test_checkpoint_roundtrip_is_exact(tmp_path):
    model = models.build_model("efficientnet_lite0", 3, weights="none").eval()
    with torch.no_grad():
        model.conv_stem.weight[0].zero_()
    checkpoints.save_checkpoint(tmp_path, model, config={"model": "efficientnet_lite0", "dropout": 0.0},
                                class_names=("a", "b", "c"), metrics={"val_acc": 0.5})
    loaded, meta = checkpoints.load_checkpoint(tmp_path)
    assert meta["class_names"] == ["a", "b", "c"] and meta["metrics"]["val_acc"] == 0.5
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert int((loaded.conv_stem.weight[0] == 0).sum()) == loaded.conv_stem.weight[0].numel()


def test_channel_pruned_checkpoint_rebuilds_from_tensor_shapes(tmp_path):
    from raytune_ft.families import channel_pruning

    model = models.build_model("efficientnet_lite0", 5, weights="none")
    pruner = channel_pruning.ChannelPruner(model, torch.randn(2, 3, 32, 32), ratio=0.4, importance="l1", steps=1,
                                           scope="global", head=model.get_classifier())
    pruner.step()
    model.eval()
    checkpoints.save_checkpoint(tmp_path, model, config={"model": "efficientnet_lite0"}, class_names=tuple("abcde"),
                                metrics={})
    loaded, _ = checkpoints.load_checkpoint(tmp_path)
    x = torch.randn(3, 3, 32, 32)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.equal(model(x), loaded(x))


def test_a_folder_without_checkpoint_json_is_not_a_checkpoint(tmp_path):
    (tmp_path / layout.CHECKPOINT_WEIGHTS).write_bytes(b"")
    with pytest.raises(models.ModelError, match=f"is not a raytune_ft checkpoint \\(no {layout.CHECKPOINT_META}\\)"):
        checkpoints.load_checkpoint(tmp_path)
