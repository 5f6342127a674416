"""The networks trained from scratch on small images (28-32 px): `CompactCNN` and the CIFAR-style
`CifarResNet`, with the names they go by (`COMPACT_CNNS`, `CIFAR_RESNETS`). Each is registered in timm
when this module is imported, so `timm.create_model("compact_cnn_16")` and every path of `models`
(build, head surgery, checkpoints) treat them like any timm model.
"""

from __future__ import annotations

import torch
from torch import nn

from raytune_ft.errors import ModelError


class CompactCNN(nn.Module):
    """A VGG-style network for 28-32 px images (Fashion-MNIST, CIFAR): three stages of `depth`
    3x3 conv-BatchNorm-ReLU layers with `width`, 2x and 4x channels at full, 1/2 and 1/4
    resolution (2x2 max-pool between stages), global average pooling, dropout and a linear head.

    Why it exists: timm's mobile networks (MobileNetV3-Small 0.5, LCNet 0.35/0.5, MnasNet-S)
    downsample 32x, so a 28 px image reaches their last stage as one pixel. On full
    Fashion-MNIST, from scratch, 5 epochs, they reached 0.80-0.83 test accuracy at 28 px and
    0.86-0.88 at 56 px (at 2-4x the cost), where this network reaches more at 28 px in the same
    time (docs/benchmarks.md, "Students for 28 px"). It follows timm's classifier interface
    (`get_classifier`, `reset_classifier`), so it is built, pruned, distilled, exported and
    quantized like any timm model. No pretrained weights exist: it trains from scratch
    (`weights: none` or `auto`).
    """

    def __init__(self, width: int = 16, depth: int = 2, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.drop_rate = drop_rate
        self.fc = nn.Linear(channels, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.fc(nn.functional.dropout(x, self.drop_rate, self.training))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (He et al. 2016). The shortcut is the
    identity, or a strided 1x1 conv + BN where the shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The ResNet for 32 px images of He et al. 2016 (section 4.2): a 3x3 stem of `width` channels,
    three stages of n = (depth - 2) / 6 basic blocks with `width`, 2x and 4x channels at full, 1/2 and
    1/4 resolution, global average pooling, dropout and a linear head. ResNet-20 (n = 3, width 16)
    has 0.27M parameters, ResNet-32 (n = 5) 0.46M; `width` scales channels (8: a quarter of the
    parameters). At 28 px (Fashion-MNIST) the stages run at 28, 14 and 7 px.

    Why it exists: the networks with published fronts on Fashion-MNIST and CIFAR at this size
    (ResNet-20/32: 0.956-0.962 test on Fashion-MNIST with crop, flip and random erasing, Zhong et al.
    2017). timm's ImageNet ResNets downsample 32x and end a 28 px image as one pixel. Like CompactCNN
    it follows timm's classifier interface and trains from scratch (`weights: none` or `auto`);
    Torch-Pruning sees the residual additions and prunes the channels they couple together.
    """

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        channels = width
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                layers.append(BasicBlock(channels, out, 2 if stage and not i else 1))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.num_features = channels
        self.drop_rate = drop_rate
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(nn.functional.relu(self.bn1(self.conv1(x)))).mean(dim=(2, 3))
        return self.fc(nn.functional.dropout(x, self.drop_rate, self.training))


# name -> (width, depth): timm.create_model(name) builds them, check_model_name knows them
COMPACT_CNNS = {"compact_cnn_16": (16, 2), "compact_cnn_24": (24, 2), "compact_cnn_32": (32, 2)}
# name -> (depth, width): cifar_resnet20 is He et al.'s ResNet-20 (width 16); _w8 .. _w32 scale its channels
CIFAR_RESNETS = {f"cifar_resnet{d}" + ("" if w == 16 else f"_w{w}"): (d, w)
                 for d in (20, 32, 44, 56) for w in (8, 12, 16, 24, 32)}


def small_networks() -> dict[str, tuple[type[nn.Module], dict[str, int]]]:
    """Every network trained from scratch for small images: name -> (class, constructor arguments)."""
    out: dict[str, tuple[type[nn.Module], dict[str, int]]] = {
        name: (CompactCNN, {"width": w, "depth": d}) for name, (w, d) in COMPACT_CNNS.items()}
    out.update({name: (CifarResNet, {"depth": d, "width": w}) for name, (d, w) in CIFAR_RESNETS.items()})
    return out


def register_small_networks() -> None:
    """Register every network of `small_networks` in timm (once), so that timm.create_model and every
    timm name path (models.build_model, check_model_name) serve them."""
    import timm
    from timm.models import register_model

    for name, (cls, shape) in small_networks().items():
        if timm.is_model(name):  # registered already (the module was reloaded)
            continue

        def entrypoint(pretrained: bool = False, *, _cls: type = cls, _shape: dict = shape, _name: str = name,
                       **kwargs) -> nn.Module:
            if pretrained:
                raise ModelError(f"{_name} has no pretrained weights (it trains from scratch); use weights: none "
                                 "or auto")
            args = {k: kwargs[k] for k in ("num_classes", "in_chans", "drop_rate") if k in kwargs}
            return _cls(**_shape, **args)

        entrypoint.__name__ = name
        entrypoint.__module__ = __name__
        register_model(entrypoint)


register_small_networks()
