"""Search spaces: the YAML files in `search_spaces/` as validated `Space`s (`spaces`), the parsing
and validation of their records (`parsing`) and the expert `initial` recipes (`recipes`).
"""

from __future__ import annotations

from raytune_ft.space.parsing import SAMPLERS, ParamSpec, SearchSettings, SpaceError
from raytune_ft.space.spaces import Space, builtin_space_names, builtin_space_path, load_space, resolve_space

__all__ = ["SAMPLERS", "ParamSpec", "SearchSettings", "Space", "SpaceError", "builtin_space_names",
           "builtin_space_path", "load_space", "resolve_space"]
