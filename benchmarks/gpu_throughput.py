"""Training throughput: raytune_ft's loop (train.fit) against a plain PyTorch loop, on a GPU or the CPU.

GPU (default): ResNet-50 (timm, random init: speed does not depend on the weights) at 224 px,
AdamW, bf16 autocast (fp16 + GradScaler on GPUs without bf16) and channels_last — the same
settings for both loops, side by side in one run, alternating. Inputs are random tensors in host
memory, copied to the device batch by batch in both loops (as fit() does with in-memory data).
Images/s are over the last epoch (after a warm-up epoch: cuDNN autotuning, oneDNN primitives).

    python benchmarks/gpu_throughput.py --batch-size 128 --steps 40 --repeats 3
    python benchmarks/gpu_throughput.py --device cpu --model efficientnet_lite0 --image-size 28 \
        --batch-sizes 64 128 256 --steps 20 --threads 2 --no-amp --repeats 2

On the CPU each batch size is measured for both loops and the table gives our rate against the
plain loop's best batch size (the bar of issue 20: >= 0.9x). `--device cuda` on a machine without
a GPU says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch


def images(n: int, size: int, classes: int):
    from raytune_ft.data import Splits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Splits(x, y, x[:64], y[:64], tuple(str(i) for i in range(classes)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain(model: torch.nn.Module, data, *, batch_size: int, epochs: int, amp: bool, channels_last: bool,
          device: torch.device) -> float:
    """Images/s of a textbook loop over the same tensors; the last epoch is timed."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt).train()
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = len(data.x_train) // batch_size
    rate = 0.0
    for _ in range(epochs):
        _sync(device)
        started = time.perf_counter()
        order = torch.randperm(len(data.x_train))
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = data.x_train[idx].to(device, non_blocking=True).contiguous(memory_format=fmt)
            y = data.y_train[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        _sync(device)
        rate = steps * batch_size / (time.perf_counter() - started)
    return rate


def raytune_ft_loop(model: torch.nn.Module, data, *, batch_size: int, epochs: int, amp: bool,
                    channels_last: bool, device: torch.device, name: str) -> float:
    """Images/s of train.fit on the same tensors (its epoch_time_s includes a 64-image evaluation)."""
    from raytune_ft import models, train
    from raytune_ft.config import TrialConfig

    cuda = device.type == "cuda"
    cfg = TrialConfig(model=name, weights="none", epochs=epochs, batch_size=batch_size, lr=1e-3,
                      image_size=data.x_train.shape[-1], amp=amp, channels_last=channels_last,
                      bn_recalibration_batches=0, use_gpu=cuda, gpus_per_worker=1 if cuda else 0, export=False,
                      cpus_per_trial=torch.get_num_threads())
    times: list[float] = []

    def report(metrics, _model, _state) -> None:
        _sync(device)
        times.append(metrics["epoch_time_s"])

    steps = len(data.x_train) // batch_size
    train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
              dist=train.Dist(device=device))
    return steps * batch_size / times[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--model", default="resnet50", help="a timm/torchvision name models.build_model knows")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", help="several batch sizes (default: --batch-size)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU; default: torch's)")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU visible; nothing measured (--device cpu measures the CPU)", file=sys.stderr)
        return 2
    from raytune_ft import models

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    sizes = args.batch_sizes or [args.batch_size]
    rows = []
    for batch_size in sizes:
        data = images(batch_size * args.steps, args.image_size, 1000 if args.model == "resnet50" else 10)
        classes = len(data.class_names)
        settings = dict(batch_size=batch_size, epochs=2, amp=args.amp, channels_last=args.channels_last, device=device)
        ours, theirs = [], []
        for _ in range(args.repeats):
            torch.manual_seed(0)
            theirs.append(plain(models.build_model(args.model, classes, weights="none"), data, **settings))
            torch.manual_seed(0)
            ours.append(raytune_ft_loop(models.build_model(args.model, classes, weights="none"), data, **settings,
                                        name=args.model))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((batch_size, statistics.median(theirs), theirs, statistics.median(ours), ours))
    best_plain = max(rows, key=lambda r: r[1])
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name()} ({platform.machine()})"
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16 + GradScaler"
    else:
        where = f"{cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads"
        dtype = "bf16"
    command = "python " + " ".join(sys.argv)
    lines = [f"""
Measured {time.strftime('%Y-%m-%d')} on {where}, torch {torch.__version__}, {args.model} at {args.image_size} px, \
{args.steps} steps per epoch, amp={args.amp}{f' ({dtype})' if args.amp else ''}, channels_last={args.channels_last}; \
median of {args.repeats} alternating repeats.

Command: `{command}`

| batch | plain PyTorch images/s (each) | raytune_ft `train.fit` images/s (each) | ours / plain, same batch \
| ours / best plain |
|---|---|---|---|---|"""]
    for batch_size, t, theirs, o, ours in rows:
        lines.append(f"| {batch_size} | {t:.0f} ({', '.join(f'{x:.0f}' for x in theirs)}) | "
                     f"{o:.0f} ({', '.join(f'{x:.0f}' for x in ours)}) | {o / t:.2f}× | **{o / best_plain[1]:.2f}×** |")
    lines.append(f"\nBest plain setting: batch {best_plain[0]} at {best_plain[1]:.0f} images/s.")
    print("\n".join(lines))
    return 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
