"""Which student architectures can learn Fashion-MNIST at 28 px from scratch: timm's mobile networks
against the compact CNNs of raytune_ft.models, in a plain PyTorch loop (no raytune_ft training code).

Full Fashion-MNIST (the first 48,000 training images; the official 10,000 test images), random
2-pixel shifts and horizontal flips, AdamW (lr 4e-3, weight decay 0.05), one-cycle schedule,
label smoothing 0.1, batch 128, one thread per run. Prints test accuracy after every epoch and
the seconds so far; `--jobs 2` runs two models at a time (one per core), as a search does.

    PYTHONPATH=. python benchmarks/students_28px.py --epochs 5 --jobs 2 \
        --models mobilenetv3_small_050@28 lcnet_035@28 lcnet_050@28 mnasnet_small@28 \
                 mobilenetv3_small_050@56 lcnet_035@56 compact_cnn_16@28 compact_cnn_24@28
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def train(spec: str, epochs: int, seed: int) -> list[dict]:
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F

    import raytune_ft.models  # noqa: F401  (registers the compact CNNs in timm)
    from raytune_ft.data.memory import FASHION_MNIST_FILES, FASHION_MNIST_ROOT, read_idx

    root = Path(FASHION_MNIST_ROOT)
    (train_images, train_labels), (test_images, test_labels) = FASHION_MNIST_FILES.values()
    name, size = spec.split("@")
    size = int(size)
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train = torch.from_numpy(read_idx(root / train_images)[:48000, None])
    y_train = torch.from_numpy(read_idx(root / train_labels)[:48000].astype(np.int64))
    x_test = torch.from_numpy(read_idx(root / test_images)[:, None])
    y_test = torch.from_numpy(read_idx(root / test_labels).astype(np.int64))

    def prep(x):
        x = x.float().div(255).sub(0.2860).div(0.3530).expand(-1, 3, -1, -1)
        if size != 28:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def augment(x):
        i, j = rng.integers(0, 5, 2)
        x = F.pad(x, (2, 2, 2, 2))[:, :, i:i + 28, j:j + 28]
        flip = torch.rand(len(x)) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    model = timm.create_model(name, pretrained=False, num_classes=10).to(memory_format=torch.channels_last)
    batch, steps = 128, len(y_train) // 128
    opt = torch.optim.AdamW(model.parameters(), 4e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * steps, pct_start=0.15)
    started, rows = time.perf_counter(), []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            loss = F.cross_entropy(model(prep(augment(x_train[idx]))), y_train[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(prep(x_test[s:s + 500])).argmax(1) == y_test[s:s + 500]).sum().item()
                          for s in range(0, len(y_test), 500))
        rows.append({"model": spec, "params": sum(p.numel() for p in model.parameters()), "epoch": epoch + 1,
                     "test_acc": correct / len(y_test), "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenetv3_small_050@28", "compact_cnn_16@28"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="models trained at a time, one thread each")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/students_28px.jsonl")
    args = ap.parse_args()
    if args.one:
        train(args.one, args.epochs, args.seed)
        return
    queue, running = list(args.models), []
    with open(args.out, "w") as out:
        while queue or running:
            while queue and len(running) < args.jobs:
                spec = queue.pop(0)
                running.append(subprocess.Popen([sys.executable, __file__, "--one", spec, "--epochs", str(args.epochs),
                                                 "--seed", str(args.seed)], stdout=subprocess.PIPE, text=True))
            proc = running.pop(0)
            for line in proc.stdout:
                if line.startswith("{"):
                    out.write(line)
                    out.flush()
                    print(line, end="", flush=True)
            proc.wait()


if __name__ == "__main__":
    main()
