"""Framework overhead: the same fine-tuning as a bare PyTorch loop and as a one-trial search.

Side by side in one run, alternating, each as a fresh process (Python start-up and imports
count for both): (a) `--bare`, a plain PyTorch loop — same data (raytune_ft.data), model
(EfficientNet-Lite0, packaged ImageNet weights), optimizer, cosine schedule, epochs, batch
size, threads, channels_last, one evaluation per epoch; (b) `python -m raytune_ft.search` with
one trial of that recipe (a new local Ray cluster, Tune + Optuna, a checkpoint every epoch, the
teacher loaded from a checkpoint made beforehand, export and BN recalibration off so that the
work is the same). Then, once each, the per-trial start-up of the in-process path and of the
Ray Train path (workers_per_trial=2): from Tune starting the trial to the end of its first
epoch, minus that epoch's training time.

    python benchmarks/overhead.py --max-samples 600 --epochs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR = 5e-3


def bare(max_samples: int, epochs: int, batch_size: int, threads: int) -> None:
    """The plain PyTorch loop (runs in its own process)."""
    import torch

    from raytune_ft import data, models
    from raytune_ft.config import TrialConfig

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as raytune_ft does
    cfg = TrialConfig(max_samples=max_samples, image_size=32)
    splits = data.load_splits(cfg)
    torch.manual_seed(0)
    model = models.build_model("efficientnet_lite0", splits.num_classes, weights="pretrained")
    model.to(memory_format=torch.channels_last)
    x_train = splits.x_train.contiguous(memory_format=torch.channels_last)
    x_val = splits.x_val.contiguous(memory_format=torch.channels_last)
    steps = len(x_train) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), splits.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(x_val).argmax(1) == splits.y_val).float().mean())
        print(f"bare epoch {epoch + 1}: val_acc={acc:.4f}", flush=True)


def make_teacher(directory: Path, max_samples: int) -> None:
    """A teacher checkpoint for the search to load (not timed): the pretrained model as is."""
    from raytune_ft import checkpoints, data, models
    from raytune_ft.config import TrialConfig

    cfg = TrialConfig(max_samples=max_samples, image_size=32, epochs=1, export=False)
    splits = data.load_splits(cfg)
    model = models.build_model(cfg.model, splits.num_classes, weights="pretrained")
    checkpoints.save_checkpoint(directory, model, config=cfg.to_dict(), class_names=splits.class_names,
                                metrics={"epoch": 1, "val_acc": 0.0, "params": 0, "nonzero_params": 0})


def space_file(path: Path, teacher: Path, max_samples: int, epochs: int, batch_size: int, threads: int,
               workers: int = 1) -> Path:
    execution = f"cpus_per_trial: {threads}" if workers == 1 else \
        f"cpus_per_trial: {threads}, workers_per_trial: {workers}, cpus_per_worker: {max(1, threads // workers)}"
    path.write_text(f"""
name: overhead
fixed: {{model: efficientnet_lite0, weights: pretrained, dataset: digits, image_size: 32,
        max_samples: {max_samples}, epochs: {epochs}, batch_size: {batch_size}, optimizer: adamw,
        lr_schedule: cosine, export: false, bn_recalibration_batches: 0, {execution}}}
teacher: {{checkpoint: {teacher}}}
search: {{sampler: random, num_samples: 1, seed: 0, max_concurrent: 1}}
params:
  lr: {{type: categorical, choices: [{LR}]}}
objectives: {{val_acc: max, nonzero_params: min}}
""")
    return path


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"})
    elapsed = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def trial_startup(exp_dir: Path) -> dict[str, float]:
    """From Tune starting the trial (its start_time) to the end of its first epoch, minus that
    epoch's training time: actor or worker-group start, imports, model build, data hand-over."""
    from raytune_ft.report import results

    (trial_dir,) = exp_dir.glob("trial_*")
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    start = float(results.read_trials(exp_dir)["start_time"].iloc[0])
    first = reports[0]["timestamp"] + 0.5  # whole seconds in result.json: +-0.5 s
    return {"trial_wall_s": reports[-1]["timestamp"] + 0.5 - start,
            "epochs_s": sum(r["epoch_time_s"] for r in reports),
            "startup_s": first - start - reports[0]["epoch_time_s"]}


def search_cmd(space: Path, storage: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "raytune_ft.search", "--space", str(space), "--storage-path", str(storage),
            "--name", name, "--address", "local"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-samples", type=int, default=600)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--bare", action="store_true", help="run only the bare loop (used internally)")
    args = p.parse_args()
    if args.bare:
        bare(args.max_samples, args.epochs, args.batch_size, args.threads)
        return

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    make_teacher(tmp / "teacher", args.max_samples)
    space = space_file(tmp / "space.yaml", tmp / "teacher", args.max_samples, args.epochs, args.batch_size,
                       args.threads)
    bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", "--max-samples", str(args.max_samples),
                "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    bare_s, search_s, startups = [], [], []
    for i in range(args.repeats):  # alternate so that machine noise hits both alike
        bare_s.append(timed(bare_cmd))
        search_s.append(timed(search_cmd(space, tmp, f"in-process-{i}")))
        startups.append(trial_startup(tmp / f"in-process-{i}"))
        print(f"repeat {i + 1}: bare {bare_s[-1]:.1f} s, search {search_s[-1]:.1f} s, "
              f"trial start-up {startups[-1]['startup_s']:.1f} s", flush=True)
    ddp_space = space_file(tmp / "ddp.yaml", tmp / "teacher", args.max_samples, 1, args.batch_size, args.threads,
                           workers=2)
    ddp_search = timed(search_cmd(ddp_space, tmp, "ray-train"))
    ddp = trial_startup(tmp / "ray-train")

    b, s = statistics.median(bare_s), statistics.median(search_s)
    inproc = statistics.median(x["startup_s"] for x in startups)
    command = (f"python benchmarks/overhead.py --max-samples {args.max_samples} --epochs {args.epochs} "
               f"--repeats {args.repeats}")
    ddp_detail = (f"{ddp['startup_s']:.1f} (trial {ddp['trial_wall_s']:.1f}, epochs {ddp['epochs_s']:.1f}; "
                  f"whole search {ddp_search:.1f})")
    print(f"""
Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores visible, torch \
{torch.__version__}, {args.threads} threads; efficientnet_lite0 (packaged ImageNet weights) on digits at 32 px, \
{args.max_samples} samples (80 % train), batch {args.batch_size}, {args.epochs} epochs, AdamW + cosine; \
{args.repeats} alternating repeats, medians.

Command: `{command}`

| run | wall time (s), median | each run (s) |
|---|---|---|
| bare PyTorch loop (fresh process) | {b:.1f} | {', '.join(f'{x:.1f}' for x in bare_s)} |
| one-trial `raytune_ft.search` (fresh process, new Ray cluster) | {s:.1f} | {', '.join(f'{x:.1f}' for x in search_s)} |
| **ratio search / bare** | **{s / b:.2f}×** | fixed cost {s - b:.1f} s |

| per-trial start-up (Tune's trial start → end of epoch 1, minus epoch 1's training) | seconds |
|---|---|
| in-process trial (workers_per_trial 1), median | {inproc:.1f} |
| Ray Train trial (workers_per_trial 2, TorchTrainer + 2 gloo workers), 1 epoch | {ddp_detail} |
""")


if __name__ == "__main__":
    main()
