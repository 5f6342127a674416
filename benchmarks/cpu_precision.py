"""fp32 against bf16 autocast on this CPU, per model, side by side in one run; and what `amp: auto` picks.

For each model: training steps (forward + backward + AdamW step) and no-grad forwards (the online
KD teacher's role) on a batch of random 28 px images in channels_last, `--threads` torch threads,
`--repeats` timed steps after two warm-up ones, median and min-max of images/s. Then the choice
`train.measured_dtype` makes for the same model (its own short probe, as a trial with `amp: auto`
runs it at start), so the table shows whether the probe picked the faster precision. A second
table times `torch.compile` (default inductor backend) for the training step of `--compile-models`,
with its compile time (the first two steps), in both precisions.

    PYTHONPATH=. python benchmarks/cpu_precision.py --threads 1 --out benchmarks/results/cpu_precision.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from gpu_throughput import cpu_model  # benchmarks/ is on sys.path when this script runs

from raytune_ft import models, train
from raytune_ft.families.base import autocast


def cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}]"


def rates(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, *, training: bool,
          repeats: int) -> list[float]:
    y = torch.randint(0, 10, (len(x),))
    opt = torch.optim.AdamW(model.parameters(), 1e-3) if training else None
    model.train(training)
    out = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        with torch.set_grad_enabled(training), autocast(x.device, dtype):
            logits = model(x).float()
        if training:
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if i >= 2:
            out.append(len(x) / (time.perf_counter() - started))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+",
                   default=["compact_cnn_16", "compact_cnn_24", "compact_cnn_32", "efficientnet_lite0"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--compile-models", nargs="*", default=["compact_cnn_16", "compact_cnn_32", "efficientnet_lite0"])
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    lines = [f"CPU: {cpu_model()}, {args.threads} thread(s), batch {args.batch_size}, {args.image_size} px, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; images/s, median [min-max] of "
             f"{args.repeats} steps", "",
             "| model | role | fp32 | bf16 autocast | bf16 / fp32 | amp: auto picks |",
             "|---|---|---|---|---|---|"]
    for name in args.models:
        model = models.build_model(name, 10, weights="none").to(memory_format=torch.channels_last)
        for role, training in (("train step", True), ("forward (teacher)", False)):
            fp32 = rates(model, x, None, training=training, repeats=args.repeats)
            bf16 = rates(model, x, torch.bfloat16, training=training, repeats=args.repeats)
            probe = x[: min(args.batch_size, 64)]
            picked = train.measured_dtype(model, probe, train=training)
            ratio = statistics.median(bf16) / statistics.median(fp32)
            right = (picked is torch.bfloat16) == (ratio >= 1.0)
            lines.append(f"| {name} | {role} | {cell(fp32)} | {cell(bf16)} | {ratio:.2f}x | "
                         f"{'bf16' if picked is torch.bfloat16 else 'fp32'}{'' if right else ' (slower one)'} |")
            print(lines[-1], flush=True)
    if args.compile_models:
        lines += ["", "| model (train step) | precision | eager | torch.compile | compiled / eager | compile time |",
                  "|---|---|---|---|---|---|"]
    for name in args.compile_models:
        for dtype in (None, torch.bfloat16):
            torch._dynamo.reset()
            eager_model = models.build_model(name, 10, weights="none").to(memory_format=torch.channels_last)
            eager = rates(eager_model, x, dtype, training=True, repeats=args.repeats)
            started = time.perf_counter()
            compiled_model = torch.compile(models.build_model(name, 10, weights="none")
                                           .to(memory_format=torch.channels_last))
            rates(compiled_model, x, dtype, training=True, repeats=0)  # the two warm-up steps compile
            compile_s = time.perf_counter() - started
            compiled = rates(compiled_model, x, dtype, training=True, repeats=args.repeats)
            lines.append(f"| {name} | {'bf16' if dtype else 'fp32'} | {cell(eager)} | {cell(compiled)} | "
                         f"{statistics.median(compiled) / statistics.median(eager):.2f}x | {compile_s:.0f} s |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
