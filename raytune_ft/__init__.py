"""raytune_ft: search fine-tuning recipes (regularization x distillation x pruning) for the
smallest pretrained image classifier that is still accurate enough, with Ray Tune + Optuna.

The Python API (`run_search`, `open_experiment`, `Experiment`, `Preprocessing`; raytune_ft/api.py,
docs/api.md) is imported on first use: importing raytune_ft imports neither Ray nor torch (Ray
workers import it to unpickle functions). `raytune_ft.pareto` holds the multi-objective math;
`__version__` is the installed distribution's (importlib.metadata), read when first asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Experiment", "Preprocessing", "open_experiment", "pareto", "run_search"]


def __getattr__(name: str) -> Any:
    """The public names, imported when first asked for (PEP 562)."""
    import importlib

    if name == "__version__":
        from importlib.metadata import version

        return version("raytune_ft")
    if name == "pareto":
        return importlib.import_module("raytune_ft.pareto")
    if name in __all__:
        return getattr(importlib.import_module("raytune_ft.api"), name)
    raise AttributeError(f"module 'raytune_ft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
