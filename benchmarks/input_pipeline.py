"""Input pipeline vs training step: is the loader the bottleneck (does it deliver >= 2x the training rate)?

Side by side in one run, for each image size: images/s of
  - one EfficientNet-Lite0 training step (forward + backward + AdamW, channels_last, batch --batch),
  - the ImageFolder loader (`data.load_splits`: JPEG decode + resize + normalize, once per run),
  - `data.augment_batch` (random resized crop + flip of in-memory tensors, every step),
  - the Ray Data Parquet path (`parquet.ray_datasets` with augment: read_parquet -> decode/crop/flip/normalize
    in map_batches -> iter_torch_batches into this one consumer), warm passes,
  - training fed by that Ray Data stream (decode and training share the CPU, as in a real run).
Medians over --repeats. With --write the table also goes to benchmarks/results/input_pipeline.md.

    python benchmarks/input_pipeline.py --write
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raytune_ft import data, models, to_parquet
from raytune_ft.config import TrialConfig
from raytune_ft.data import parquet


def make_photos(root: Path, n: int, classes: int = 4, size: tuple[int, int] = (500, 375)) -> None:
    """`n` JPEGs (quality 90) of photo size: smooth colour fields + texture, so they compress like photos."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    for i in range(n):
        c = i % classes
        folder = root / f"class {c}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(2, 12, 3)
        img = np.stack([np.sin(f[k] * (xx + yy * (k + 1)) + c) for k in range(3)], -1) * 90 + 128
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def train_step_rate(size: int, batch: int, steps: int) -> tuple[float, list[float]]:
    """images/s of one training step (median over `steps` after 2 warm-up steps)."""
    model = models.build_model("efficientnet_lite0", 4, weights="none").to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times), times


def imagefolder_rate(root: Path, size: int, repeats: int) -> float:
    cfg = TrialConfig(dataset="imagefolder", data_root=str(root), image_size=size)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        s = data.load_splits(cfg)
        rates.append((len(s.x_train) + len(s.x_val)) / (time.perf_counter() - t))
    return statistics.median(rates)


def augment_rate(size: int, batch: int, repeats: int) -> float:
    x = torch.randn(batch, 3, size, size)
    g = torch.Generator().manual_seed(0)
    data.augment_batch(x, g)
    times = []
    for _ in range(repeats * 5):
        t = time.perf_counter()
        data.augment_batch(x, g)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def parquet_rates(shards: Path, size: int, batch: int, repeats: int, train_steps: int) -> dict[str, float]:
    """Warm Ray Data passes over the train split: whole pass and steady state (after the first batch);
    then training steps fed by the stream."""
    cfg = TrialConfig(dataset="parquet", data_root=str(shards), image_size=size, augment=True)
    ds = parquet.ray_datasets(cfg)["train"]
    whole, steady = [], []
    for r in range(repeats + 1):  # pass 0 starts the workers: not counted
        t0 = time.perf_counter()
        n, first = 0, None
        for b in ds.iter_torch_batches(batch_size=batch, drop_last=True):
            n += len(b["label"])
            if first is None:
                first, n_first = time.perf_counter(), n
        end = time.perf_counter()
        if r:
            whole.append(n / (end - t0))
            steady.append((n - n_first) / (end - first))
    model = models.build_model("efficientnet_lite0", 4, weights="none").to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seen, t0 = 0, None
    while seen < train_steps * batch:
        batches = iter(ds.iter_torch_batches(batch_size=batch, drop_last=True))
        for b in batches:
            if t0 is None:  # from the first batch on: the stream's start-up is in `whole` above
                t0, seen = time.perf_counter(), 0
            x = b["image"].contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(x), b["label"] % 4)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            if seen >= train_steps * batch:
                break
        del batches
    fed = seen / (time.perf_counter() - t0)
    return {"whole": statistics.median(whole), "steady": statistics.median(steady), "fed": fed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    p.add_argument("--images", type=int, default=384, help="JPEGs in the folder (500x375)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--write", action="store_true", help="write the table to benchmarks/results/input_pipeline.md")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(args.threads)
    import ray
    import ray.data

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "photos", Path(tmp) / "shards"
        make_photos(folder, args.images)
        to_parquet.convert(str(folder), str(shards), rows_per_shard=64)
        ray.init(address="local", num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for size in args.sizes:
                train, _ = train_step_rate(size, args.batch, args.train_steps)
                folder_rate = imagefolder_rate(folder, size, args.repeats)
                aug = augment_rate(size, args.batch, args.repeats)
                pq = parquet_rates(shards, size, args.batch, args.repeats, args.train_steps)
                row = {"size": size, "train": train, "imagefolder": folder_rate, "augment": aug, **pq}
                rows.append(row)
                print(row, flush=True)
            # written before ray.shutdown(): a Ray Data prefetch thread left by the stopped stream can end
            # the process when Ray shuts down
            table = render(rows, args, load_before, os.getloadavg())
            print(table, flush=True)
            if args.write:
                write_section(table)
        finally:
            ray.shutdown()
    return 0


def write_section(table: str) -> None:
    path = Path(__file__).resolve().parent / "results" / "input_pipeline.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!-- written by benchmarks/input_pipeline.py --write -->\n{table}\n")


def render(rows: list[dict], args: argparse.Namespace, load_before: tuple, load_after: tuple) -> str:
    cmd = "python benchmarks/input_pipeline.py " + " ".join(sys.argv[1:])
    lines = [
        "# Input pipeline vs training step",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads; load average {load_before[0]:.1f} before and "
        f"{load_after[0]:.1f} after the run (other jobs shared the cores). Command: `{cmd}`.",
        f"Data: {args.images} JPEGs of 500x375 px (written by the script), batch {args.batch}, "
        f"EfficientNet-Lite0; images/s, medians of {args.repeats} repeats ({args.train_steps} steps for training).",
        "",
        "| image size | training step | ImageFolder load (once) | augment_batch (per step) "
        "| Ray Data Parquet, whole pass | Ray Data, steady | training fed by Ray Data | loader / training |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"ImageFolder {r['imagefolder'] / r['train']:.1f}x, Ray Data {r['whole'] / r['train']:.1f}x"
        lines.append(f"| {r['size']} | {r['train']:.0f} | {r['imagefolder']:.0f} | {r['augment']:.0f} | "
                     f"{r['whole']:.0f} | {r['steady']:.0f} | {r['fed']:.0f} ({r['fed'] / r['train']:.2f}x) "
                     f"| {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
