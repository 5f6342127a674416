"""Re-measure deployed files on the official Fashion-MNIST test split in a process that imports
only onnxruntime and numpy (plus the standard library): each folder's manifest.json names the
deployed file and the normalization; prints its test accuracy and any torch/raytune_ft module loaded.

    python benchmarks/fashion_mnist_ort_check.py runs/<exp>/stage2/trial_*/checkpoint_*/export \
        runs/<exp>/teacher/export_int8
"""

import gzip
import json
import sys

import numpy as np
import onnxruntime as ort

ROOT = "/usr/share/datasets/fashion-mnist/"


def read_idx(name: str, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(ROOT + name).read(), np.uint8, offset=offset)


def main() -> None:
    x = read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y = read_idx("t10k-labels-idx1-ubyte.gz", 8)
    for folder in sys.argv[1:]:
        manifest = json.load(open(folder + "/manifest.json"))
        mean = np.array(manifest["normalization"]["mean"], np.float32)[None, :, None, None]
        std = np.array(manifest["normalization"]["std"], np.float32)[None, :, None, None]
        session = ort.InferenceSession(folder + "/" + manifest["deployed"], providers=["CPUExecutionProvider"])
        right = 0
        for i in range(0, len(y), 500):
            batch = ((np.repeat(x[i:i + 500], 3, 1).astype(np.float32) / 255 - mean) / std).astype(np.float32)
            right += int((session.run(None, {"images": batch})[0].argmax(1) == y[i:i + 500]).sum())
        loaded = [k for k in sys.modules if k.split(".")[0] in ("torch", "raytune_ft")]
        print(folder, manifest["deployed"], f"test_acc={right / len(y):.4f}", "torch/raytune_ft loaded:", loaded)


if __name__ == "__main__":
    main()
