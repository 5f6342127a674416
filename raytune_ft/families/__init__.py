"""The registry of technique families: name -> `base.Family` subclass, and the active families
of a trial built from its config.

Adding a family: one module with a `Family` subclass, one entry here, its fields in
`TrialConfig` and its params in the space YAML (docs/architecture.md has a worked example).
"""

from __future__ import annotations

from collections.abc import Iterable

from raytune_ft.config import TrialConfig
from raytune_ft.families.base import Family
from raytune_ft.families.channel_pruning import ChannelPruning
from raytune_ft.families.distillation import Distillation
from raytune_ft.families.magnitude_pruning import MagnitudePruning
from raytune_ft.families.quantization import QuantizationFamily
from raytune_ft.families.regularization import Regularization

# The order is the order in which the loop calls the families at each moment. Channel pruning
# comes first: it changes the network's structure after backward, and magnitude masks and weight
# decay then act on the new parameters. Distillation before regularization gives the loss its
# order (1 − α)·task_loss + α·kd_loss + l2sp_loss. Quantization acts after training, at export.
FAMILIES: dict[str, type[Family]] = {
    family.name: family
    for family in (ChannelPruning, MagnitudePruning, Distillation, Regularization, QuantizationFamily)
}


def family(name: str) -> type[Family]:
    """The family registered as `name`."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[name]


def build(cfg: TrialConfig, names: Iterable[str] | None = None) -> list[Family]:
    """The families `cfg` switches on, in registry order; with `names`, only those of them."""
    chosen = set(FAMILIES) if names is None else {family(name).name for name in names}
    return [cls(cfg) for name, cls in FAMILIES.items() if name in chosen and cls.active(cfg)]
