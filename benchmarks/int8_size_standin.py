"""How well MO-ASHA's per-epoch stand-in for an int8 file's size ranks the real files.

A trial that ships int8 has its model.int8.onnx only after the last epoch (calibration at export);
MO-ASHA ranks model_bytes_compressed at every rung on gzip of `quantization.int8_weight_bytes`
(the weights on the export's int8 grid) instead. This script takes finished experiments, and for
every trial checkpoint that holds an exported `model.int8.onnx` compares gzip (level 6, as
export.measure_export) of that file with the stand-in computed from the checkpoint's weights:
their ratio and Kendall's tau over the trials.

    PYTHONPATH=. python benchmarks/int8_size_standin.py runs/cost/tpe-s0 runs/cost/tpe-s1 ...
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from raytune_ft import checkpoints, layout
from raytune_ft.families.quantization import int8_weight_bytes


def int8_files(experiments: list[Path]) -> list[Path]:
    found = []
    for exp in experiments:
        for pattern in (f"trial_*/checkpoint_*/{layout.EXPORT_DIR}/{layout.INT8_FILE}",
                        f"stage2/trial_*/checkpoint_*/{layout.EXPORT_DIR}/{layout.INT8_FILE}"):
            found += sorted(exp.glob(pattern))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", type=Path, help="experiment folders of finished searches")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    files = int8_files(args.experiments)
    if len(files) < 2:
        sys.exit(f"int8_size_standin: found {len(files)} exported {layout.INT8_FILE} under "
                 f"{', '.join(map(str, args.experiments))}; needs finished searches that ship int8")
    real, standin = [], []
    print("| trial checkpoint | int8 file, gzip bytes | stand-in, gzip bytes | file / stand-in |")
    print("|---|---|---|---|")
    for path in files:
        checkpoint = path.parent.parent
        model, _ = checkpoints.load_checkpoint(checkpoint)
        real.append(len(gzip.compress(path.read_bytes(), compresslevel=6)))
        standin.append(len(gzip.compress(int8_weight_bytes(model), compresslevel=6)))
        name = "/".join(checkpoint.parts[-3:])
        print(f"| {name} | {real[-1]:,} | {standin[-1]:,} | {real[-1] / standin[-1]:.4f} |")
    ratio = np.array(real) / np.array(standin)
    tau = kendalltau(real, standin)[0]
    print(f"\n{len(files)} trials: file / stand-in median {np.median(ratio):.4f} "
          f"[{ratio.min():.4f}-{ratio.max():.4f}]; Kendall tau {tau:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
