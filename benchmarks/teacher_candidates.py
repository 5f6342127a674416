"""Which dense teacher is worth distilling on full Fashion-MNIST (docs/benchmarks.md "Teacher").

Each candidate is a `teacher:` section of the shipped `fashion_mnist` space (its TrialConfig fields
over the space's `fixed`), trained exactly as the search's teacher stage trains it (train.fit on the
same 48,000 / 12,000 split, data_seed 0), then scored once on the official 10,000-image test split
(PyTorch, fp32; the search re-measures the shipped teacher as ONNX files). Results go to
`--out` after each candidate (a killed run resumes: finished candidates are skipped), and each
candidate's checkpoint to `--checkpoints/NAME`, which `--set teacher.checkpoint=` reuses.

    PYTHONPATH=. python benchmarks/teacher_candidates.py --only resnet20_pad   # one candidate
    PYTHONPATH=. python benchmarks/teacher_candidates.py                        # all, one after another
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from raytune_ft import checkpoints, models, train
from raytune_ft import data as data_mod
from raytune_ft.config import TrialConfig
from raytune_ft.deploy import holdout
from raytune_ft.search import trial
from raytune_ft.space import load_space, resolve_space

SGD = {"weights": "none", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "use_weight_decay": True,
       "weight_decay": 5.0e-4, "warmup_fraction": 0.02, "augment": True, "augment_crop": "pad", "amp": True}
# name -> the teacher section's fields. Lite0 at 28 px is recorded in docs/benchmarks.md (0.916-0.932 test);
# at 56 px its epoch costs 147 s on 2 EPYC cores (2.4x), too slow for the 90-minute budget here.
# "_noaug": augment false (the ResNet without its crop and flip: it fits the training set exactly).
CANDIDATES: dict[str, dict[str, Any]] = {
    "resnet20_noaug": {**SGD, "model": "cifar_resnet20", "epochs": 30, "augment": False},
    "resnet20_pad": {**SGD, "model": "cifar_resnet20", "epochs": 30},
    "resnet20_pad_erase": {**SGD, "model": "cifar_resnet20", "epochs": 30, "random_erasing": 0.5},
    "resnet32_pad": {**SGD, "model": "cifar_resnet32", "epochs": 30},
    # longer, with erasing at p 0.25 (Zhong et al.'s setting is 0.5 over 300 epochs): about 50 min each
    # on one Xeon thread, within the shipped command's 90-minute budget as a teacher phase
    "resnet20_pad_erase_e50": {**SGD, "model": "cifar_resnet20", "epochs": 50, "random_erasing": 0.25},
    "resnet32_pad_erase_e32": {**SGD, "model": "cifar_resnet32", "epochs": 32, "random_erasing": 0.25},
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run(name: str, fields: dict[str, Any], space_fixed: dict[str, Any], threads: int, ckpt_root: Path,
        smoke: bool = False) -> dict:
    extra = {"max_samples": 3000, "max_test_samples": 500, "epochs": 1} if smoke else {}
    cfg = TrialConfig.from_dict({**space_fixed, **fields, "cpus_per_trial": threads, "export": False,
                                 "use_quantization": False, **extra})
    torch.set_num_threads(threads)
    splits = data_mod.load_splits(cfg)
    x_test, y_test = splits.x_test, splits.y_test
    data = splits.without_test()
    model = models.build_model(cfg.model, data.num_classes, weights=cfg.weights)
    epochs: list[dict] = []

    def report(m: dict, _model: Any, _state: Any) -> None:
        epochs.append({"epoch": m["epoch"], "val_acc": m["val_acc"], "epoch_s": m.get("epoch_time_s")})
        print(f"{name}: epoch {m['epoch']} val_acc={m['val_acc']:.4f} ({m.get('epoch_time_s', 0):.0f} s)", flush=True)

    batches, _, _ = trial.training_inputs(cfg, data, dist=train.Dist())  # the search's batches: augmented
    started = time.perf_counter()
    metrics = train.fit(cfg, model, data, head_names=models.head_parameter_names(model), report=report,
                        batches=batches)
    wall = time.perf_counter() - started
    model = model.to(memory_format=torch.contiguous_format)
    correct = int((train.predict_logits(model, x_test).argmax(1) == y_test).sum())
    n = len(y_test)
    checkpoints.save_checkpoint(ckpt_root / name, model, config=cfg.to_dict(), class_names=data.class_names,
                           metrics={k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
    return {"fields": fields, "val_acc": metrics["val_acc"], "test_acc": correct / n,
            "test_wilson95": list(holdout.wilson_interval(correct, n)), "n_test": n, "fit_s": wall,
            "threads": threads, "params": sum(p.numel() for p in model.parameters()), "epochs": epochs,
            "checkpoint": str(ckpt_root / name)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="these candidates (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 when two candidates run side by side)")
    p.add_argument("--space", default="fashion_mnist")
    p.add_argument("--out", default="benchmarks/results/teacher_candidates.json")
    p.add_argument("--checkpoints", default="ray_results/teacher_candidates")
    p.add_argument("--smoke", action="store_true", help="3,000 images, 1 epoch: checks the script, measures nothing")
    args = p.parse_args()
    out_path = Path(args.out)
    done = json.loads(out_path.read_text()) if out_path.exists() else {}
    space = load_space(resolve_space(args.space))
    for name in args.only or sorted(CANDIDATES):
        if name in done.get("candidates", {}):
            print(f"{name}: done already ({done['candidates'][name]['test_acc']:.4f} test)", flush=True)
            continue
        result = run(name, CANDIDATES[name], space.fixed, args.threads, Path(args.checkpoints), args.smoke)
        result.update(cpu=cpu_model(), date=time.strftime("%Y-%m-%d"),
                      command=f"PYTHONPATH=. python benchmarks/teacher_candidates.py --only {name} "
                              f"--threads {args.threads}")
        done = json.loads(out_path.read_text()) if out_path.exists() else {}  # a side-by-side run wrote too
        done.setdefault("candidates", {})[name] = result
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(done, indent=1))
        print(f"{name}: val {result['val_acc']:.4f} test {result['test_acc']:.4f} "
              f"[{result['test_wilson95'][0]:.4f}, {result['test_wilson95'][1]:.4f}] in {result['fit_s'] / 60:.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
