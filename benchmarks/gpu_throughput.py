"""GPU training throughput: raytune_ft's loop (train.fit) against a plain PyTorch loop.

ResNet-50 (timm, random init: speed does not depend on the weights) at 224 px, AdamW, bf16
autocast (fp16 + GradScaler on GPUs without bf16) and channels_last — the same settings for
both loops, side by side in one run, alternating. Inputs are random tensors in host memory,
copied to the GPU batch by batch in both loops (as fit() does with in-memory data). Images/s
are over the timed epochs (after one warm-up epoch that includes cuDNN autotuning).

    python benchmarks/gpu_throughput.py --batch-size 128 --steps 40 --repeats 3

Needs a CUDA GPU; on a machine without one it says so and exits with status 2.
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


def plain(model: torch.nn.Module, data, *, batch_size: int, epochs: int, amp: bool, channels_last: bool) -> float:
    """Images/s of a textbook loop over the same tensors; the last epoch is timed."""
    device = torch.device("cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt).train()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = len(data.x_train) // batch_size
    rate = 0.0
    for _ in range(epochs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        order = torch.randperm(len(data.x_train))
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = data.x_train[idx].to(device, non_blocking=True).contiguous(memory_format=fmt)
            y = data.y_train[idx].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=dtype, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        torch.cuda.synchronize()
        rate = steps * batch_size / (time.perf_counter() - started)
    return rate


def raytune_ft_loop(model: torch.nn.Module, data, *, batch_size: int, epochs: int, amp: bool,
                    channels_last: bool) -> float:
    """Images/s of train.fit on the same tensors (its epoch_time_s includes a 64-image evaluation)."""
    from raytune_ft import models, train
    from raytune_ft.config import TrialConfig

    cfg = TrialConfig(model="resnet50", weights="none", epochs=epochs, batch_size=batch_size, lr=1e-3,
                      image_size=data.x_train.shape[-1], amp=amp, channels_last=channels_last,
                      bn_recalibration_batches=0, use_gpu=True, gpus_per_worker=1, export=False)
    times: list[float] = []

    def report(metrics, _model, _state) -> None:
        torch.cuda.synchronize()
        times.append(metrics["epoch_time_s"])

    steps = len(data.x_train) // batch_size
    train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
              dist=train.Dist(device=torch.device("cuda")))
    return steps * batch_size / times[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU visible; nothing measured", file=sys.stderr)
        return 2
    from raytune_ft import models

    torch.backends.cudnn.benchmark = True
    data = images(args.batch_size * args.steps, args.image_size, 1000)
    settings = dict(batch_size=args.batch_size, epochs=2, amp=args.amp, channels_last=args.channels_last)
    ours, theirs = [], []
    for _ in range(args.repeats):
        torch.manual_seed(0)
        theirs.append(plain(models.build_model("resnet50", 1000, weights="none"), data, **settings))
        torch.manual_seed(0)
        ours.append(raytune_ft_loop(models.build_model("resnet50", 1000, weights="none"), data, **settings))
        torch.cuda.empty_cache()
    o, t = statistics.median(ours), statistics.median(theirs)
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16 + GradScaler"
    command = (f"python benchmarks/gpu_throughput.py --batch-size {args.batch_size} --steps {args.steps} "
               f"--repeats {args.repeats}")
    print(f"""
Measured {time.strftime('%Y-%m-%d')} on {torch.cuda.get_device_name()} ({platform.machine()}), \
torch {torch.__version__}, \
ResNet-50 at {args.image_size} px, batch {args.batch_size}, {args.steps} steps per epoch, amp={args.amp} ({dtype}), \
channels_last={args.channels_last}; median of {args.repeats} alternating repeats.

Command: `{command}`

| loop | images/s, median | each repeat |
|---|---|---|
| plain PyTorch | {t:.0f} | {', '.join(f'{x:.0f}' for x in theirs)} |
| raytune_ft `train.fit` | {o:.0f} | {', '.join(f'{x:.0f}' for x in ours)} |
| **ratio raytune_ft / plain** | **{o / t:.2f}×** | |
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
