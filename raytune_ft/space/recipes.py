"""Expert-seeded starts: the `search.initial:` recipes of a space file, validated like params.

A recipe is one complete trial of the space: a value for every searched param that is active
under the recipe's own categorical choices, and none for a param its parents switch off. The
searcher enqueues the recipes (Ray's OptunaSearch `points_to_evaluate`, which calls
`optuna.Study.enqueue_trial`): they are the first trials of a search, in file order, recorded in
the study as ordinary trials with exactly these params, and every finished one counts towards
the sampler's start-up trials (TPE counts COMPLETE and PRUNED trials, GPSampler COMPLETE ones,
NSGA-II's first generation is made of them). `--resume` restores the study, in which a recipe
already asked for is no longer waiting, so it is not run twice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from raytune_ft.config import unknown_key_message
from raytune_ft.space.parsing import (
    ParamSpec,
    SearchSettings,
    build,
    coerce_at,
    fail,
    is_int,
    is_number,
)


def check_initial(where: str, search: SearchSettings, params: tuple[ParamSpec, ...],
                  fixed: dict[str, Any]) -> SearchSettings:
    """`search` with each of its `initial` recipes validated against `params` and `fixed`, values
    coerced to their fields' types; a mistake raises SpaceError naming `search.initial[i].<param>`."""
    recipes = tuple(check_recipe(where, f"search.initial[{i}]", raw, params, fixed)
                    for i, raw in enumerate(search.initial))
    return dataclasses.replace(search, initial=recipes)


def check_recipe(where: str, key: str, raw: Any, params: tuple[ParamSpec, ...],
                 fixed: dict[str, Any]) -> dict[str, Any]:
    """One recipe: known searched params only, each value valid for its param, every active param
    given and no inactive one; the resulting trial config must be valid as a whole."""
    if not isinstance(raw, dict) or not raw:
        fail(where, key, f"must be a non-empty mapping param: value (one complete recipe), got {raw!r}")
    by_name = {p.name: p for p in params}
    for name in raw:
        if name in by_name:
            continue
        if name in fixed:
            fail(where, f"{key}.{name}", f"{name} is fixed (= {fixed[name]!r}), not searched: a recipe gives "
                 f"values to searched params only (searched: {', '.join(by_name)})")
        fail(where, f"{key}.{name}", f"not a searched param: {unknown_key_message(str(name), by_name)}")
    recipe: dict[str, Any] = {}
    for p in params:  # file order: a conditional param comes after its parents
        why = inactive_reason(p, recipe)
        if why is not None:
            if p.name in raw:
                fail(where, f"{key}.{p.name}", f"is given ({raw[p.name]!r}) but inactive in this recipe: {why}; "
                     "remove it")
            continue
        if p.name not in raw:
            condition = " and ".join(f"{parent}={recipe[parent]!r}" for parent in p.when)
            fail(where, f"{key}.{p.name}", "missing: a recipe is complete, it gives every param that is active "
                 f"in it ({p.name} is {f'active because {condition}' if condition else 'always searched'})")
        recipe[p.name] = param_value(where, f"{key}.{p.name}", p, raw[p.name])
    build(where, key, {**fixed, **recipe})  # fields that depend on each other (pruning_start <= pruning_end)
    return recipe


def inactive_reason(p: ParamSpec, chosen: dict[str, Any]) -> str | None:
    """Why `p` is not sampled given the parents' values in `chosen`, or None when it is active."""
    for parent, allowed in p.when.items():
        if parent not in chosen:
            return f"its parent {parent} is inactive"
        if chosen[parent] not in allowed:
            values = " or ".join(map(repr, allowed))
            return f"{p.name} applies only when {parent} is {values}, and this recipe has {parent}={chosen[parent]!r}"
    return None


def param_value(where: str, key: str, p: ParamSpec, value: Any) -> Any:
    """`value` checked against `p`'s distribution (a choice; or in [low, high], on the step grid)."""
    if p.type == "categorical":
        coerced = coerce_at(where, key, p.name, value)
        if coerced not in p.choices:
            fail(where, key, f"{value!r} is not one of the choices of {p.name}: {list(p.choices)}")
        return coerced
    number_check = is_int if p.type == "int" else is_number
    if not number_check(value) or not math.isfinite(value):
        fail(where, key, f"must be {'an int' if p.type == 'int' else 'a finite number'}, got {value!r}")
    value = float(value) if p.type == "float" else value
    if not p.low <= value <= p.high:
        fail(where, key, f"{value!r} is outside the searched range [{p.low!r}, {p.high!r}] of {p.name}")
    if p.step is not None:
        n_steps = (value - p.low) / p.step
        if abs(n_steps - round(n_steps)) > 1e-9:
            fail(where, key, f"{value!r} is not on the grid low + k * step (low {p.low!r}, step {p.step!r})")
    return value
