"""Ship the smallest front model whose accuracy is within 1 point of the dense teacher's: its
deployed file and manifest go to a folder, with a predict.py that needs only onnxruntime and numpy.

    python examples/smallest_within_one_point.py ray_results/<name> shipped/ [--points 1]
    python shipped/predict.py images.npy     # (n, 3, H, W) RGB in [0, 1] (or uint8) at the model's size

The choice is made on the validation accuracy the search optimised; the test-split accuracy is
printed but not used to choose (a choice made on it would leave no unbiased number).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import raytune_ft

PREDICT = '''"""Classify images with the model in this folder (written by examples/smallest_within_one_point.py).

    python predict.py images.npy

images.npy: (n, 3, H, W) RGB images, floats in [0, 1] or uint8, H x W the model's input size
(manifest.json "input_size"). Needs only numpy and onnxruntime.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
MANIFEST = json.loads((HERE / "manifest.json").read_text())
SESSION = ort.InferenceSession(str(HERE / MANIFEST["deployed"]), providers=["CPUExecutionProvider"])


def predict(images: np.ndarray) -> np.ndarray:
    """Logits, one row per image."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.ndim != 4 or list(x.shape[1:]) != MANIFEST["input_size"]:
        raise SystemExit(f"images must be (n, {', '.join(map(str, MANIFEST['input_size']))}), got {x.shape}")
    mean, std = (np.array(MANIFEST["normalization"][k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    return SESSION.run(None, {SESSION.get_inputs()[0].name: (x - mean) / std})[0]


if __name__ == "__main__":
    for row in predict(np.load(sys.argv[1])):
        print(MANIFEST["class_names"][int(row.argmax())])
'''


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment")
    p.add_argument("dest", help="the folder to write (created)")
    p.add_argument("--points", type=float, default=1.0, help="how far below the teacher, in accuracy points")
    args = p.parse_args(argv)
    exp = raytune_ft.open_experiment(args.experiment)
    acc = next(k for k, v in exp.objectives.items() if v == "max")
    size = next(k for k, v in exp.objectives.items() if v == "min")
    if not len(exp.teacher) or not len(exp.front):
        raise SystemExit(f"{exp.name}: no teacher or no front yet")
    floor = float(exp.teacher[acc].iloc[0]) - args.points / 100
    close = exp.front[exp.front[acc] >= floor]  # the front is sorted by size: the first is the smallest
    if not len(close):
        print(f"no front model has {acc} >= {floor:.4f} (the teacher's {exp.teacher[acc].iloc[0]:.4f} "
              f"- {args.points} points); the most accurate has {exp.front[acc].max():.4f}")
        return 1
    best = close.iloc[0]
    source = exp.export_dir(best["trial_id"])  # the trial's export/ folder
    manifest = json.loads((source / "manifest.json").read_text())
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", manifest["deployed"]):  # model.onnx or model.int8.onnx
        shutil.copy2(source / name, dest / name)
    (dest / "predict.py").write_text(PREDICT)
    test = f", test_acc {best['test_acc']:.4f}" if "test_acc" in best and best["test_acc"] == best["test_acc"] else ""
    print(f"trial {best['trial_id']}: {acc} {best[acc]:.4f} (teacher {exp.teacher[acc].iloc[0]:.4f}){test}, "
          f"{size} {best[size]:,.0f}, input {tuple(manifest['input_size'])}")
    print(f"wrote {dest}/: {manifest['deployed']}, manifest.json, predict.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
