"""Record real learning curves on the quickstart for the replay benchmark (search_strategies.py).

Fine-tunes the quickstart's dense teacher once (its train-set logits are the distillation
targets), then trains configurations sampled uniformly at random from the quickstart space
(Optuna's RandomSampler over the space's own define-by-run function, so conditional params
behave as in a real search) with the quickstart's fixed settings, calling train.fit directly
(no Ray). Every epoch's metrics and the config are appended to the CSV as they come, so an
interrupted run keeps what it measured; a rerun with the same --seed skips recorded configs.

    PYTHONPATH=. python benchmarks/record_curves.py --minutes 60 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ("val_acc", "val_loss", "train_loss", "task_loss", "kd_loss", "l2sp_loss", "params", "nonzero_params",
           "sparsity", "epoch_time_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results" / "curves.csv"))
    p.add_argument("--space", default="quickstart")
    p.add_argument("--max-configs", type=int, default=200)
    p.add_argument("--minutes", type=float, default=60.0, help="stop starting new configs after this")
    p.add_argument("--seed", type=int, default=1234, help="RandomSampler seed for the configs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import optuna
    import torch

    from raytune_ft import data as data_mod
    from raytune_ft import models, train
    from raytune_ft.space import spaces

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = spaces.load_space(spaces.resolve_space(args.space))
    out = Path(args.out)
    teacher_cache = out.with_name(out.stem + "_teacher_logits.pt")
    started = time.perf_counter()

    teacher_cfg = dataclasses.replace(space.teacher_config(), cpus_per_trial=args.threads, export=False)
    data = data_mod.load_splits(teacher_cfg)
    if teacher_cache.exists():
        logits = torch.load(teacher_cache, weights_only=True)
    else:
        print(f"teacher: {teacher_cfg.epochs} epochs", flush=True)
        model = models.build_model(teacher_cfg.model, data.num_classes, weights=teacher_cfg.weights,
                                   dropout=teacher_cfg.dropout)
        m = train.fit(teacher_cfg, model, data, head_names=models.head_parameter_names(model),
                      report=lambda metrics, _m, _s: print(f"  teacher epoch {metrics['epoch']} "
                                                       f"val_acc={metrics['val_acc']:.4f}", flush=True))
        logits = train.predict_logits(model, data.x_train)
        torch.save(logits, teacher_cache)
        meta = {"val_acc": m["val_acc"], "nonzero_params": m["nonzero_params"], "params": m["params"],
                "epochs": teacher_cfg.epochs, "time_s": time.perf_counter() - started,
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"torch threads {args.threads}"}
        out.with_name(out.stem + "_teacher.json").write_text(json.dumps(meta, indent=2))

    done: set[int] = set()
    if out.exists():
        with out.open() as f:
            done = {int(r["config_id"]) for r in csv.DictReader(f)}
    param_names = [q.name for q in space.params]
    # lr is also a searched param: the schedule's current value is lr_now
    fields = ["config_id", "status", "epoch", "epochs", *METRICS, "lr_now", *param_names, "config_json"]
    new_file = not out.exists()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    define = space.define_by_run()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new_file:
            writer.writeheader()
        for config_id in range(args.max_configs):
            trial = study.ask()
            define(trial)  # the same sequence of configs for the same seed, so reruns skip done ones
            sampled = dict(trial.params)
            study.tell(trial, 0.0)
            if config_id in done:
                continue
            if (time.perf_counter() - started) / 60 > args.minutes:
                break
            cfg = dataclasses.replace(space.trial_config(sampled), cpus_per_trial=args.threads, export=False)
            base = {"config_id": config_id, "epochs": cfg.epochs, **{k: sampled.get(k, "") for k in param_names},
                    "config_json": json.dumps(sampled, sort_keys=True)}

            def report(metrics: dict, _model: torch.nn.Module, _state=None, base: dict = base) -> None:
                writer.writerow({**base, "status": "ok", **{k: metrics.get(k, "") for k in ("epoch", *METRICS)},
                                 "lr_now": metrics.get("lr", "")})
                f.flush()

            model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights, dropout=cfg.dropout)
            t0 = time.perf_counter()
            try:
                last = train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
                                 teacher_logits=logits if cfg.use_kd else None)
                print(f"config {config_id}: val_acc={last['val_acc']:.4f} nonzero_params={last['nonzero_params']:,}"
                      f" ({time.perf_counter() - t0:.0f}s, {(time.perf_counter() - started) / 60:.1f} min)",
                      flush=True)
            except FloatingPointError as err:  # recorded: the replay treats it as a failed trial
                writer.writerow({**base, "status": "failed", "epoch": ""})
                f.flush()
                print(f"config {config_id}: failed: {err}", flush=True)


if __name__ == "__main__":
    main()
