"""Each technique family's contribution to the shipped front (docs/benchmarks.md "Family ablation").

For every family the shipped space searches, a variant of the space with that family switched off
(its switch fixed to false, its conditional params and the seeded recipes' values for them
removed; int8: `use_quantization: false`, so the fp32 file ships), run like the shipped command
with `--seed S` for each seed; plus the space as shipped. Every variant of a seed reuses the same
fitted teacher (teacher reuse: one storage folder). Per run: the best test accuracy among the
front files at <= 100 KB and <= 400 KB (gzip of the deployed file, Wilson 95 %), and the front's
hypervolume on the shared scales; per variant: the median over seeds and its difference from the
full space's. A killed run resumes (finished runs are read, unfinished ones continue).

    PYTHONPATH=. python benchmarks/family_ablation.py --seeds 0 1 2 --storage-path runs/ablation
    PYTHONPATH=. python benchmarks/family_ablation.py --seeds 0 --set max_samples=3000 --set epochs=2 \\
        --set search.promote_epochs=2 --set teacher.epochs=2 --num-samples 4 --storage-path /tmp/abl   # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from raytune_ft import layout
from raytune_ft.report import results
from raytune_ft.space import builtin_space_path

# family -> the switch params it owns in a space (a family with none of them in the space is skipped)
FAMILIES = {
    "distillation": ("use_kd",),
    "pruning": ("use_pruning", "use_channel_pruning"),
    "regularization": ("use_weight_decay", "use_label_smoothing", "use_l2sp"),
    "int8": ("use_quantization",),
}
BUDGETS = {"le_100KB": 100_000, "le_400KB": 400_000}


def without_family(space: dict[str, Any], family: str) -> dict[str, Any] | None:
    """The space (a YAML mapping) with `family` off; None when the space does not use it."""
    out = copy.deepcopy(space)
    params = out.get("params") or {}
    switches = [s for s in FAMILIES[family] if s in params or (out.get("fixed") or {}).get(s)]
    if not switches:
        return None
    dependents = {name for name, spec in params.items()
                  if isinstance(spec, dict) and set(spec.get("when") or {}) & set(switches)}
    for name in (*switches, *dependents):
        params.pop(name, None)
    for switch in switches:
        out.setdefault("fixed", {})[switch] = False
    recipes = (out.get("search") or {}).get("initial") or []
    out.setdefault("search", {})["initial"] = [
        {k: v for k, v in recipe.items() if k not in switches and k not in dependents} for recipe in recipes]
    out["name"] = f"{space.get('name', 'space')}_no_{family}"
    return out


def variant_files(space_path: Path, folder: Path) -> dict[str, Path]:
    """`full` (the space as given) and `no_<family>` for each family it uses, as YAML files in `folder`."""
    space = yaml.safe_load(space_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    files = {"full": space_path}
    for family in FAMILIES:
        variant = without_family(space, family)
        if variant is not None:
            path = folder / f"{variant['name']}.yaml"
            path.write_text(yaml.safe_dump(variant, sort_keys=False))
            files[f"no_{family}"] = path
    return files


def run(variant: str, space_file: Path, seed: int, args: argparse.Namespace) -> Path:
    folder = Path(args.storage_path) / f"{variant}-s{seed}"
    if folder.is_dir() and results.load_experiment(folder).state == "finished":
        return folder
    cmd = [sys.executable, "-m", "raytune_ft.search", "--space", str(space_file), "--seed", str(seed),
           "--storage-path", str(args.storage_path), "--name", folder.name, *(["--resume"] if folder.is_dir() else [])]
    cmd += [x for s in args.set for x in ("--set", s)]
    cmd += ["--num-samples", str(args.num_samples)] if args.num_samples else []
    started = time.perf_counter()
    print(f"{folder.name}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    print(f"{folder.name}: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return folder


def measure(folder: Path) -> dict[str, Any]:
    """Best test accuracy of the front files under each budget (pareto.csv's test columns: the deployed
    file on the test split, Wilson 95 %), and the front itself."""
    front = pd.read_csv(folder / layout.PARETO_CSV)
    row: dict[str, Any] = {"run": folder.name}
    for name, limit in BUDGETS.items():
        fits = front[(front["model_bytes_compressed"] <= limit) & front["test_acc"].notna()]
        best = fits.loc[fits["test_acc"].idxmax()] if len(fits) else None
        row[f"test_{name}"] = float(best["test_acc"]) if best is not None else None
        row[f"ci_{name}"] = [float(best["test_acc_low"]), float(best["test_acc_high"])] if best is not None else None
    row["front"] = front[["trial_id", "model", "val_acc", "test_acc", "model_bytes_compressed"]].to_dict("records")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="fashion_mnist")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="*", help="default: full and every no_<family>")
    p.add_argument("--storage-path", default="runs/ablation")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every search")
    p.add_argument("--out", default="benchmarks/results/family_ablation.json")
    args = p.parse_args()
    space_path = Path(args.space) if Path(args.space).is_file() else builtin_space_path(args.space)
    files = variant_files(space_path, Path(args.storage_path) / "spaces")
    rows = []
    for seed in args.seeds:
        for variant, path in files.items():
            if args.variants and variant not in args.variants:
                continue
            rows.append({"variant": variant, "seed": seed, **measure(run(variant, path, seed, args))})
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    table = pd.DataFrame(rows)
    cols = [f"test_{b}" for b in BUDGETS]
    medians = table.groupby("variant")[cols].median()
    if "full" in medians.index:
        for c in cols:
            medians[f"{c}_vs_full"] = medians[c] - medians.loc["full", c]
    print(medians.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
