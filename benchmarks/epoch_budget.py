"""Epochs and learning rate against accuracy for a space's dense teacher and its student recipes.

Issue 20, item 4: a budget that leaves the training loss falling is the wrong budget. This trains
the space's dense teacher (space.teacher_config(), every technique off) for each (epochs, lr) asked
for, through the product's own `train.fit` (no Ray), and records after every epoch its train loss,
val_acc and test_acc (the space's test split, evaluated in torch; the search itself evaluates the
test split only on deployed files, after the search). With --recipes it then trains the space's
`initial` recipes (and any --recipe JSON) as students, distilled from the last teacher trained here
(its train-set logits, computed on its own view of the same rows, as the search does), and at the
end exports each through `trial.export_and_measure` (int8 where the recipe says so) and evaluates
the deployed file on the test split (`holdout.evaluate_export`). Curves go to a JSON file.

    PYTHONPATH=. python benchmarks/epoch_budget.py --space quickstart \
        --teacher 5:5e-3 10:5e-3 15:5e-3 20:5e-3 10:1e-2 10:2e-3 10:5e-3:32 --out /tmp/teachers.json
    PYTHONPATH=. python benchmarks/epoch_budget.py --space quickstart --teacher 15:5e-3 --recipes \
        --student-epochs 12 --out /tmp/students.json

A run spec is EPOCHS:LR[:BATCH]. Torch threads: the config's (cpus_per_trial: the teacher 2, trials 1)
unless --threads; on a loaded machine use --threads 1 (two threads there ran 10-20x slower per
epoch, the OpenMP threads waiting on each other). Times are wall-clock on whatever machine runs it
(say whether it was shared). benchmarks/results/epoch_budget.json holds the runs of docs/benchmarks.md
("Quickstart: epochs"), each with its command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # lscpu missing: the platform string is better than nothing
        return platform.processor() or platform.machine()


def _spec(text: str) -> tuple[int, float, int | None]:
    parts = text.split(":")
    return int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) > 2 else None


def train_curve(cfg: Any, data: Any, *, teacher_logits: Any = None, teacher_model: dict[str, Any] | None = None,
                label: str, export_to: Path | None = None, test_every_epoch: bool = True,
                ) -> tuple[dict[str, Any], Any, Any]:
    """Train `cfg` from its own weights on `data` (with test split) as a trial does (the batch source
    and KD teacher from trial.training_inputs: augmentation, precomputed logits or the online
    teacher); returns (record, model, splits without test). Every epoch: train_loss, val_acc,
    epoch_time_s, and test_acc in torch when `test_every_epoch`."""
    import torch

    from raytune_ft import models, train
    from raytune_ft.deploy import holdout
    from raytune_ft.search import trial

    torch.set_num_threads(cfg.worker_cpus)
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
    seen = data.without_test()
    curve: list[dict[str, Any]] = []
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x_test = data.x_test.contiguous(memory_format=memory_format)

    def report(metrics: dict[str, Any], net: torch.nn.Module, _state: Any) -> None:
        test = train.evaluate(net, x_test, data.y_test) if test_every_epoch else {"val_acc": None, "val_loss": None}
        row = {"epoch": metrics["epoch"], "train_loss": metrics["train_loss"], "task_loss": metrics.get("task_loss"),
               "kd_loss": metrics.get("kd_loss"), "val_acc": metrics["val_acc"], "val_loss": metrics["val_loss"],
               "test_acc": test["val_acc"], "test_loss": test["val_loss"], "sparsity": metrics.get("sparsity"),
               "epoch_time_s": metrics["epoch_time_s"]}
        curve.append(row)
        shown = f" test={row['test_acc']:.4f}" if test_every_epoch else ""
        print(f"[{label}] epoch {row['epoch']}/{cfg.epochs} loss={row['train_loss']:.4f} "
              f"val={row['val_acc']:.4f}{shown} ({row['epoch_time_s']:.1f}s)", flush=True)

    started = time.perf_counter()
    batches, logits, teacher = trial.training_inputs(cfg, seen, dist=train.Dist(), teacher_logits=teacher_logits,
                                                     teacher_model=teacher_model)
    final = train.fit(cfg, model, seen, head_names=models.head_parameter_names(model), report=report,
                      teacher_logits=logits, teacher=teacher, batches=batches)
    record: dict[str, Any] = {"label": label, "model": cfg.model, "epochs": cfg.epochs, "lr": cfg.lr,
                              "batch_size": cfg.batch_size, "threads": cfg.worker_cpus,
                              "train_s": time.perf_counter() - started, "curve": curve}
    if export_to is not None:
        started = time.perf_counter()
        measured = trial.export_and_measure(model, cfg, seen, final, export_to)
        tested, correct = holdout.evaluate_export(export_to, holdout.TestSplit(data.x_test, data.y_test))
        # val_acc of the deployed file: the int8 file's in ONNX Runtime, else the trained model's
        measured = {"val_acc": final["val_acc"], **measured}
        record["deployed"] = {k: measured.get(k) for k in ("val_acc", "val_acc_fp32", "model_bytes",
                                                           "model_bytes_compressed", "nonzero_params", "params")}
        record["deployed"].update(tested)
        record["deployed"]["export_s"] = time.perf_counter() - started
        print(f"[{label}] deployed {tested['test_file']}: val={measured.get('val_acc'):.4f} "
              f"test={tested['test_acc']:.4f} gzip={measured['model_bytes_compressed'] / 1e6:.3f} MB",
              flush=True)
    return record, model, seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="quickstart")
    p.add_argument("--teacher", nargs="*", default=[], metavar="EPOCHS:LR[:BATCH]",
                   help="teacher runs; the last one is the KD teacher of the students")
    p.add_argument("--recipes", action="store_true", help="also train the space's `initial` recipes")
    p.add_argument("--recipe", action="append", default=[], help="an extra student recipe as JSON")
    p.add_argument("--student-epochs", type=int, default=None, help="default: the space's epochs")
    p.add_argument("--student-lr", type=float, default=None, help="replace every recipe's lr")
    p.add_argument("--set", action="append", default=[], help="--set KEY=VALUE for the space (as the CLI)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    p.add_argument("--out", default=str(HERE / "results" / "epoch_budget.json"))
    args = p.parse_args()

    import torch

    from raytune_ft import data as data_mod
    from raytune_ft import train
    from raytune_ft.data import views
    from raytune_ft.space import spaces
    from raytune_ft.train import teachers

    space = spaces.load_space(spaces.resolve_space(args.space)).with_overrides(args.set)
    out = Path(args.out)
    results: dict[str, Any] = {"space": args.space, "set": args.set, "cpu": _cpu(), "cores": torch.get_num_threads(),
                               "date": time.strftime("%Y-%m-%d %H:%M"), "teachers": [], "students": []}

    def save() -> None:
        out.write_text(json.dumps(results, indent=1, default=float))

    student_cfg = space.trial_config({})
    student_data = data_mod.load_splits(student_cfg)  # the students' rows; the teacher views the same rows
    logits, teacher_model = None, None
    for text in args.teacher:
        epochs, lr, batch = _spec(text)
        cfg = dataclasses.replace(space.teacher_config(), epochs=epochs, lr=lr, export=False,
                                  **({"batch_size": batch} if batch else {}),
                                  **({"cpus_per_trial": args.threads} if args.threads else {}))
        view = teachers.teacher_splits(student_data, cfg)
        record, model, seen = train_curve(cfg, view,
                                          label=f"teacher {cfg.model} {epochs}ep lr={lr:g} b{cfg.batch_size}")
        logits = train.predict_logits(model, seen.x_train)
        teacher_model = {"config": cfg.to_dict(),
                         "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        results["teachers"].append(record)
        save()

    recipes = [dict(r) for r in space.search.initial] if args.recipes else []
    recipes += [json.loads(r) for r in args.recipe]
    for i, recipe in enumerate(recipes):
        if args.student_lr is not None:
            recipe["lr"] = args.student_lr
        cfg = space.trial_config(recipe)
        cfg = dataclasses.replace(cfg, **({"epochs": args.student_epochs} if args.student_epochs else {}),
                                  **({"cpus_per_trial": args.threads} if args.threads else {}))
        if cfg.use_kd and logits is None:
            raise SystemExit("a recipe uses KD: give --teacher runs first (the last one is the teacher)")
        view = views.student_view(student_data, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            record, _, _ = train_curve(cfg, view, teacher_logits=logits if cfg.use_kd else None,
                                       teacher_model=teacher_model if cfg.use_kd else None,
                                       label=f"recipe {i} {cfg.model} {cfg.epochs}ep lr={cfg.lr:g}",
                                       export_to=Path(tmp) / "export")
        record["recipe"] = recipe
        results["students"].append(record)
        save()
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
