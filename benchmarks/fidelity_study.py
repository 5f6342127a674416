"""Does the two-stage search's subset rank recipes as all the data does? (issue 34, docs/benchmarks.md)

N recipes of a shipped space (default `fashion_mnist`), drawn as the search draws them before its
sampler has feedback: the space's `search.initial` recipes first (unless --no-initial), then Optuna's
RandomSampler seeded with `search.seed` through the space's own define-by-run function (TPE's
start-up trials are drawn the same way; what TPE would pick later depends on results, so it is not
reproduced). Each recipe is trained at three fidelities through the trial's own code path
(search/inputs.training_inputs with its `train_subset`, train.fit, search/inputs.save_epoch, which
exports and measures the shipped file after the last epoch), with the TrialConfig the search
builds ({**fixed, **sampled} plus data_fraction and epochs):

  stage1           search.data_fraction of the training split, `epochs` epochs (the shipped stage 1,
                   trained to the end: MO-ASHA's early stops are not reproduced)
  full_equal_cost  all the data for about epochs x data_fraction epochs (the same cost; EcoNAS)
  reference        all the data for --full-epochs epochs (default `epochs`; the shipped stage 2
                   trains search.promote_epochs)

Each (recipe, fidelity) is written to --out as soon as it ends (a killed run skips finished units;
two processes may share the file: `--shard 0/2` and `--shard 1/2` with `--threads 1`). `--report`
reads it and writes the agreement of each cheap fidelity with the reference (Kendall's tau and
Spearman's rho with bootstrap 95 % intervals, on val_acc and on the non-dominated rank of
(val_acc, size)), the promotion regret of the top search.promote recipes and the cost of each
fidelity, as a markdown table and a scatter plot.

    PYTHONPATH=. python benchmarks/fidelity_study.py --no-kd --models compact_cnn_16 compact_cnn_24 \\
        --threads 1 --shard 0/2 &    # and --shard 1/2 beside it
    PYTHONPATH=. python benchmarks/fidelity_study.py --teacher-checkpoint ray_results/teacher_candidates/resnet20_pad
    PYTHONPATH=. python benchmarks/fidelity_study.py --report
    PYTHONPATH=. python benchmarks/fidelity_study.py --smoke --no-kd --recipes 3 --out /tmp/f.json  # checks only
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytune_ft import pareto
from raytune_ft.space import Space, load_space, resolve_space

REFERENCE = "reference"
CHEAP = ("stage1", "full_equal_cost")
SMOKE = ["max_samples=400"]  # 320 train / 80 validation images: checks the script, measures nothing


# --- what is trained ---------------------------------------------------------------------------------


def draw_recipes(space: Space, n: int, *, seed: int, models: list[str] | None = None, no_kd: bool = False,
                 initial: bool = True) -> list[dict[str, Any]]:
    """`n` recipes (the searched params, inactive ones left out) as the search draws them before its
    sampler has feedback: the space's `search.initial` recipes in file order, then RandomSampler(seed)
    through the space's define-by-run function. models: only these architectures (other draws are
    skipped, so the other params keep the space's distribution); no_kd: use_kd pinned to false (as the
    teacher-quality gate pins it) and seeded recipes that distil skipped."""
    import optuna

    def allowed(recipe: dict[str, Any]) -> bool:
        model = recipe.get("model", space.fixed.get("model"))
        return (not models or model in models) and not (no_kd and recipe.get("use_kd"))

    recipes = [dict(r) for r in space.search.initial if allowed(r)][:n] if initial else []
    sample = space.define_by_run()
    if no_kd:
        sample = dataclasses.replace(sample, pinned={"use_kd": False})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(100 * n):
        if len(recipes) >= n:
            break
        trial = study.ask()
        pinned = sample(trial) or {}
        recipe = sample.active({**trial.params, **pinned})
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        if allowed(recipe):
            recipes.append(recipe)
    if len(recipes) < n:
        raise SystemExit(f"only {len(recipes)} of {n} recipes drawn within {100 * n} draws: --models {models} "
                         "is too narrow for this space")
    return recipes


def fidelities(space: Space, full_epochs: int | None, equal_epochs: int | None,
               smoke: bool = False) -> dict[str, dict[str, Any]]:
    """fidelity -> {data_fraction, epochs}: the shipped stage 1, all the data at its cost, the reference."""
    epochs = 1 if smoke else int(space.fixed.get("epochs", 1))
    fraction = space.search.data_fraction
    return {"stage1": {"data_fraction": fraction, "epochs": epochs},
            "full_equal_cost": {"data_fraction": 1.0, "epochs": equal_epochs or max(1, round(epochs * fraction))},
            REFERENCE: {"data_fraction": 1.0, "epochs": 2 if smoke else full_epochs or epochs}}


def load_teacher(path: str, space: Space, data: Any, need_logits: bool) -> tuple[Any, dict[str, Any]]:
    """The teacher as the search's trials get it (teacher_stage.obtain_teacher, loading branch):
    train-set logits on its own view of the students' rows (for KD without augmentation) and
    {"config", "state_dict"} for the online teacher (KD with augmentation)."""
    from raytune_ft import checkpoints, train
    from raytune_ft.train import teachers

    teachers.check_checkpoint_classes(path, data.class_names)
    model, meta = checkpoints.load_checkpoint(path)
    cfg = teachers.view_config(space.teacher_config(), meta["config"])
    logits = train.predict_logits(model, teachers.teacher_splits(data, cfg).x_train) if need_logits else None
    model.cpu()
    return logits, {"config": meta["config"], "state_dict": {k: v.detach().clone() for k, v in
                                                             model.state_dict().items()}}


def train_unit(space: Space, recipe: dict[str, Any], fidelity: dict[str, Any], data: Any, *, threads: int,
               export: bool, teacher: tuple[Any, dict[str, Any] | None], name: str) -> dict[str, Any]:
    """One recipe at one fidelity, trained as tune_trial trains it in process; its last epoch's metrics.
    The size objectives are measured each epoch as MO-ASHA's stand-ins, and after the last epoch on the
    exported file when `export` (what the search's front and stage 2 use)."""
    import torch

    from raytune_ft import models, train
    from raytune_ft.config import TrialConfig
    from raytune_ft.data import views
    from raytune_ft.deploy.measure import EPOCH_SIZE_METRICS, epoch_size_metrics
    from raytune_ft.search.inputs import save_epoch, setup_torch, training_inputs

    settings = {**space.fixed, **recipe, **fidelity, "cpus_per_trial": threads, "cpus_per_worker": None}
    int8 = bool(settings.get("use_quantization"))
    if not export:  # int8 PTQ happens at export only; its size is then the per-epoch int8 stand-in below
        if settings.get("quant_aware_fraction"):
            raise SystemExit("--no-export cannot train quantization-aware recipes (quant_aware_fraction > 0)")
        settings.update(export=False, use_quantization=False)
    cfg = TrialConfig.from_dict(settings)
    view = views.student_view(data, cfg)
    setup_torch(cfg, cfg.worker_cpus)
    model = models.build_model(cfg.model, view.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    sizes = tuple(m for m in space.objectives if m in EPOCH_SIZE_METRICS)
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any], model: torch.nn.Module, state: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            measured, _ = save_epoch(cfg, view, metrics, model, Path(tmp), name, state, epoch_metrics=sizes,
                                     checkpoint_every=cfg.epochs)
        if not export:
            measured.update(epoch_size_metrics(model, sizes, cfg.image_size, int8=int8))
        last.clear()
        last.update(measured)

    logits, teacher_model = teacher
    dist = train.Dist()
    batches, kd_logits, online = training_inputs(cfg, view, dist=dist, teacher_logits=logits,
                                                 teacher_model=teacher_model)
    started = time.perf_counter()
    train.fit(cfg, model, view, head_names=models.head_parameter_names(model), report=report,
              teacher_logits=kd_logits, teacher=online, batches=batches, dist=dist)
    seconds = time.perf_counter() - started
    keep = ("val_acc", "val_loss", "params", "nonzero_params", "sparsity", *space.objectives, "precision")
    return {**{k: last[k] for k in keep if k in last}, **fidelity, "seconds": seconds,
            "train_images": max(1, round(cfg.data_fraction * len(view.y_train))),  # as inputs.train_subset
            "size_measured_on": "exported file" if export else f"per-epoch {'int8 ' if int8 else ''}stand-in"}


# --- the results file ------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock beside `path`, held while a process reads, merges and writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_study(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def record(path: Path, setup: dict[str, Any], key: str | None = None, unit: dict[str, Any] | None = None) -> None:
    """Merge one finished unit (or only the setup) into the results file, atomically."""
    with locked(path):
        study = read_study(path)
        if study and study["setup"] != setup:
            raise SystemExit(f"{path} holds another study (other recipes, fidelities or space); use another --out")
        study["setup"] = setup
        if key is not None:
            study.setdefault("units", {})[key] = unit
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(study, indent=1, default=str))
        os.replace(tmp, path)


def space_label(path: Path) -> str:
    """The space file as the results record it: relative to the repository when inside it, so that a
    study started in one checkout (or worktree) resumes in another."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# --- the report ------------------------------------------------------------------------------------


def rank_agreement(cheap: np.ndarray, reference: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Kendall's tau-b (with its p-value) and Spearman's rho of two scorings of the same recipes, each
    with a percentile bootstrap 95 % interval over the recipes (search/fidelity.bootstrap_ci)."""
    from scipy.stats import kendalltau, spearmanr

    from raytune_ft.search.fidelity import bootstrap_ci

    cheap, reference = np.asarray(cheap, float), np.asarray(reference, float)
    tau = kendalltau(cheap, reference)
    return {"n": len(cheap), "tau": float(tau.statistic), "tau_p": float(tau.pvalue),
            "tau_ci95": bootstrap_ci(cheap, reference, "kendall", seed=seed),
            "rho": float(spearmanr(cheap, reference).statistic),
            "rho_ci95": bootstrap_ci(cheap, reference, "spearman", seed=seed)}


def promotion_regret(cheap: pd.DataFrame, reference_acc: pd.Series, objectives: dict[str, str], k: int,
                     accuracy: str = "val_acc") -> dict[str, float]:
    """How far the best reference accuracy among the k recipes a cheap fidelity promotes is from the best
    of all (in points): promoted as the search promotes (fidelity.promoted: NSGA-II order of the cheap
    objectives) and by cheap accuracy alone."""
    from raytune_ft.search.fidelity import promoted

    table = cheap.assign(trial_id=cheap.index, status="completed")
    by_nsga2 = promoted(table, objectives, k)["trial_id"]
    by_acc = cheap[accuracy].sort_values(ascending=False, kind="stable").index[:k]
    best = reference_acc.max()
    return {"regret_nsga2_pts": 100 * float(best - reference_acc[list(by_nsga2)].max()),
            "regret_acc_pts": 100 * float(best - reference_acc[list(by_acc)].max())}


def units_table(study: dict[str, Any]) -> pd.DataFrame:
    rows = [{"recipe": int(key.split("/")[0]), "fidelity": key.split("/")[1], **unit}
            for key, unit in study.get("units", {}).items()]
    return pd.DataFrame(rows)


def analyse(study: dict[str, Any], objectives: dict[str, str], k: int, seed: int = 0) -> pd.DataFrame:
    """One row per cheap fidelity: agreement with the reference on val_acc and on non-dominated rank,
    promotion regret, cost in reference runs; over the recipes finished at both."""
    table = units_table(study)
    out = []
    reference = table[table["fidelity"] == REFERENCE].set_index("recipe").sort_index()
    ref_rank = pd.Series(pareto.non_dominated_sort(pareto.objective_matrix(reference, objectives)) if len(reference)
                         else [], index=reference.index, dtype=int)
    for name in CHEAP:
        cheap = table[table["fidelity"] == name].set_index("recipe").sort_index()
        both = cheap.index.intersection(reference.index)
        row: dict[str, Any] = {"fidelity": name, "n": len(both)}
        if len(both):
            row.update(data_fraction=cheap["data_fraction"].iloc[0], epochs=int(cheap["epochs"].iloc[0]),
                       cost_x_reference=float(cheap.loc[both, "seconds"].sum() / reference.loc[both, "seconds"].sum()))
        if len(both) >= 3:
            cheap, ref = cheap.loc[both], reference.loc[both]
            acc = rank_agreement(cheap["val_acc"].to_numpy(), ref["val_acc"].to_numpy(), seed=seed)
            ranks = (pareto.non_dominated_sort(pareto.objective_matrix(cheap, objectives)),
                     pareto.non_dominated_sort(pareto.objective_matrix(ref, objectives)))
            front = rank_agreement(*ranks, seed=seed) if np.ptp(ranks[0]) and np.ptp(ranks[1]) else {}
            row.update({f"val_acc_{key}": value for key, value in acc.items() if key != "n"})
            row.update({f"pareto_rank_{key}": value for key, value in front.items() if key != "n"})
            row.update(promotion_regret(cheap, ref["val_acc"], objectives, k))
        out.append(row)
    reference_row = {"fidelity": REFERENCE, "n": len(reference), "cost_x_reference": 1.0}
    if len(reference):
        reference_row.update(data_fraction=reference["data_fraction"].iloc[0], epochs=int(reference["epochs"].iloc[0]),
                             reference_front_size=int((ref_rank == 0).sum()))
    return pd.DataFrame([*out, reference_row])


def _interval(row: pd.Series, key: str) -> str:
    value, ci = row.get(key), row.get(f"{key}_ci95")
    if not isinstance(value, float) or math.isnan(value):
        return "—"
    low, high = ci if isinstance(ci, list) else (math.nan, math.nan)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def markdown(summary: pd.DataFrame, study: dict[str, Any], k: int, source: str) -> str:
    setup = study["setup"]
    units = list(study.get("units", {}).values())
    seen = {key: sorted({str(u.get(key)) for u in units}) for key in ("cpu", "date", "command", "threads")}
    lines = [f"# Fidelity study: {setup['space']}", "",
             "Regenerated by `python benchmarks/fidelity_study.py --report` from "
             f"`{source}`.", "",
             f"- recipes: {len(setup['recipes'])} ({setup['drawn']}); CPU: {', '.join(seen['cpu'])}, "
             f"{'/'.join(seen['threads'])} thread(s) per run; runs on {', '.join(seen['date'])}",
             "- cost: seconds of training (fit + the last epoch's export and measurement), summed over the recipes "
             "finished at both fidelities, over the reference's",
             f"- size objective: {', '.join(m for m, mode in setup['objectives'].items() if mode == 'min')}; "
             f"promotion regret of the top {k} (search.promote), in val_acc points", "",
             "| fidelity | data_fraction | epochs | n | Kendall τ val_acc [95 %] | Spearman ρ val_acc [95 %] | "
             "τ Pareto rank [95 %] | ρ Pareto rank [95 %] | regret top-k NSGA-II | regret top-k val_acc | "
             "cost (× reference) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, row in summary.iterrows():
        regret = [f"{row[c]:.2f}" if isinstance(row.get(c), float) and not math.isnan(row[c]) else "—"
                  for c in ("regret_nsga2_pts", "regret_acc_pts")]
        fraction = f"{row['data_fraction']:g}" if isinstance(row.get("data_fraction"), float) else "—"
        epochs = f"{row['epochs']:.0f}" if isinstance(row.get("epochs"), (int, float)) and not \
            pd.isna(row.get("epochs")) else "—"
        cost = f"{row['cost_x_reference']:.2f}" if not pd.isna(row.get("cost_x_reference")) else "—"
        lines.append(f"| {row['fidelity']} | {fraction} | {epochs} | {row['n']} | "
                     f"{_interval(row, 'val_acc_tau')} | {_interval(row, 'val_acc_rho')} | "
                     f"{_interval(row, 'pareto_rank_tau')} | {_interval(row, 'pareto_rank_rho')} | "
                     f"{regret[0]} | {regret[1]} | {cost} |")
    table = units_table(study)
    if len(table):
        wide = table.pivot_table(index="recipe", columns="fidelity", values="val_acc")
        wide = wide[[c for c in (*CHEAP, REFERENCE) if c in wide.columns]]
        sizes = table[table["fidelity"] == REFERENCE].set_index("recipe")
        size_name = next(m for m, mode in setup["objectives"].items() if mode == "min")
        lines += ["", "| recipe | " + " | ".join(f"val_acc {c}" for c in wide.columns) + f" | {size_name} (reference) |"
                  " params |", "|---" * (len(wide.columns) + 3) + "|"]
        for recipe, values in wide.iterrows():
            size = sizes[size_name].get(recipe) if size_name in sizes else None
            lines.append(f"| {recipe} | " + " | ".join("—" if pd.isna(v) else f"{v:.4f}" for v in values)
                         + f" | {'—' if size is None or pd.isna(size) else f'{size:,.0f}'} | "
                         + ", ".join(f"{k}={_short(v)}" for k, v in setup["recipes"][recipe].items()) + " |")
    # the commands as run, with the measuring machine's checkout left out of their paths
    commands = dict.fromkeys(re.sub(r"(?<=[\s=])/\S*?/(?=(benchmarks|search_spaces)/)", "", c) for c in seen["command"])
    lines += ["", "Commands:", "", *(f"    {c}" for c in commands)]
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def plot(study: dict[str, Any], path: Path) -> None:
    """Cheap against reference val_acc, one panel per cheap fidelity, each recipe labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = units_table(study)
    reference = table[table["fidelity"] == REFERENCE].set_index("recipe")["val_acc"]
    fig, axes = plt.subplots(1, len(CHEAP), figsize=(5 * len(CHEAP), 4.2), squeeze=False)
    for ax, name in zip(axes[0], CHEAP, strict=True):
        cheap = table[table["fidelity"] == name].set_index("recipe")["val_acc"]
        both = cheap.index.intersection(reference.index)
        ax.scatter(cheap[both], reference[both], s=18)
        for recipe in both:
            ax.annotate(str(recipe), (cheap[recipe], reference[recipe]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        if len(both) >= 2:
            from scipy.stats import kendalltau

            ax.set_title(f"Kendall τ {kendalltau(cheap[both], reference[both]).statistic:.2f} over {len(both)} "
                         "recipes", fontsize=10)
        fid = study["setup"]["fidelities"][name]
        ax.set_xlabel(f"val_acc, {name} ({fid['data_fraction']:g} of the data, {fid['epochs']} epochs)")
        ax.set_ylabel("val_acc, reference")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="fashion_mnist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as the search's --set")
    p.add_argument("--recipes", type=int, default=12, help="how many recipes (>= 12 for the issue's numbers)")
    p.add_argument("--seed", type=int, help="RandomSampler's seed (default: search.seed)")
    p.add_argument("--models", nargs="*", help="draw only recipes with these architectures")
    p.add_argument("--no-kd", action="store_true", help="use_kd pinned to false (no teacher needed)")
    p.add_argument("--teacher-checkpoint", help="the teacher (a checkpoint folder) for recipes with KD")
    p.add_argument("--no-initial", action="store_true", help="leave out the space's search.initial recipes")
    p.add_argument("--full-epochs", type=int, help="the reference's epochs (default: the space's epochs)")
    p.add_argument("--equal-epochs", type=int, help="full_equal_cost's epochs (default: epochs x data_fraction)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 with two shards side by side)")
    p.add_argument("--shard", default="0/1", help="i/n: this process trains the recipes with index %% n == i")
    p.add_argument("--no-export", action="store_true",
                   help="no ONNX export: sizes from the per-epoch stand-in (int8: gzip of the weights on the int8 "
                        "grid, Kendall tau 0.992 with the int8 file's, docs/search.md); the training is the same")
    p.add_argument("--out", default="benchmarks/results/fidelity_study.json")
    p.add_argument("--report", action="store_true", help="only write the table and the plot from --out")
    p.add_argument("--md", default="benchmarks/results/fidelity_study.md")
    p.add_argument("--png", default="benchmarks/results/fidelity_study.png")
    p.add_argument("--smoke", action="store_true", help="400 images, 1-2 epochs: checks the script, measures nothing")
    args = p.parse_args(argv)
    space = load_space(resolve_space(args.space)).with_overrides([*(SMOKE if args.smoke else []), *args.set])
    out = Path(args.out)
    k = space.search.promote
    if args.report:
        study = read_study(out)
        if not study.get("units"):
            raise SystemExit(f"{out}: no finished units to report")
        summary = analyse(study, study["setup"]["objectives"], k, seed=space.search.seed)
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(markdown(summary, study, k, str(out)))
        plot(study, Path(args.png))
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
        print(f"wrote {args.md} and {args.png}")
        return 0

    seed = space.search.seed if args.seed is None else args.seed
    recipes = draw_recipes(space, args.recipes, seed=seed, models=args.models, no_kd=args.no_kd,
                           initial=not args.no_initial)
    kd = [i for i, r in enumerate(recipes) if r.get("use_kd", space.fixed.get("use_kd"))]
    if kd and not args.teacher_checkpoint:
        raise SystemExit(f"recipes {kd} distil: give --teacher-checkpoint DIR (teacher_candidates.py writes one) "
                         "or --no-kd")
    levels = fidelities(space, args.full_epochs, args.equal_epochs, args.smoke)
    setup = {"space": space_label(space.path), "overrides": [*(SMOKE if args.smoke else []), *args.set],
             "drawn": f"{'search.initial, then ' if not args.no_initial else ''}RandomSampler(seed={seed}) through the "
                      f"space's define-by-run{', use_kd pinned false' if args.no_kd else ''}"
                      f"{', models ' + ' '.join(args.models) if args.models else ''}",
             "recipes": recipes, "fidelities": levels, "objectives": space.objectives,
             "teacher_checkpoint": args.teacher_checkpoint, "export": not args.no_export}
    record(out, setup)
    index, count = (int(x) for x in args.shard.split("/"))
    todo = [(i, name) for i in range(len(recipes)) if i % count == index for name in levels
            if f"{i:02d}/{name}" not in read_study(out).get("units", {})]
    print(f"{len(recipes)} recipes x {len(levels)} fidelities; shard {args.shard}: {len(todo)} unit(s) to train",
          flush=True)
    if not todo:
        return 0

    from raytune_ft import data as data_mod
    from raytune_ft.search.teacher_stage import students_data_config

    data = data_mod.load_splits(students_data_config(space)).without_test()
    teacher: tuple[Any, Any] = (None, None)
    if args.teacher_checkpoint and any(i in kd for i, _ in todo):
        need_logits = any(not recipes[i].get("augment", space.fixed.get("augment")) for i in kd)
        teacher = load_teacher(args.teacher_checkpoint, space, data, need_logits)
    command = shlex.join([os.path.relpath(sys.argv[0]) if sys.argv[0] else "fidelity_study.py", *sys.argv[1:]])
    for i, name in todo:
        key = f"{i:02d}/{name}"
        unit = train_unit(space, recipes[i], levels[name], data, threads=args.threads, export=not args.no_export,
                          teacher=teacher, name=key)
        unit.update(cpu=cpu_model(), date=time.strftime("%Y-%m-%d"), command=f"PYTHONPATH=. python {command}",
                    threads=args.threads)
        record(out, setup, key, unit)
        print(f"{key}: val_acc {unit['val_acc']:.4f} in {unit['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
