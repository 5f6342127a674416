"""The quantization family: int8 post-training static quantization of the exported model.

`Quantization.at_export(onnx_path, x_train)` turns the fp32 `model.onnx` into `model.int8.onnx`
with ONNX Runtime's tools: `quant_pre_process` (shape inference + graph optimization) then
`quantize_static` in QDQ format, per-channel symmetric QInt8 weights in 7-bit range
(`reduce_range`: with full 8-bit weights ORT's u8s8 CPU kernels can saturate their 16-bit
intermediate sums; measured here on the quickstart teacher: 0.917 fp32 -> 0.733 int8 with 8-bit
weights, 0.917 with reduce_range), QUInt8 activations
(Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"). Activation ranges are calibrated on
`calibration_batches` x `batch_size` images drawn at random (seeded) from the TRAINING split
only: datasets are often class-sorted, so never the first rows; never validation or test
images. Calibration methods: minmax (observed range), entropy (KL-divergence threshold,
TensorRT-style), percentile (99.999th percentile of |x|).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytune_ft.config import QUANT_CALIBRATION_METHODS as CALIBRATION_METHODS
from raytune_ft.config import TrialConfig
from raytune_ft.export import INT8_FILE, ExportError, _one_line
from raytune_ft.hooks import Family


class TrainingImages:
    """An onnxruntime CalibrationDataReader over `indices` of the training images `x_train`,
    in batches of `batch_size`; `seen` lists every index it handed out (what calibration saw)."""

    def __init__(self, x_train: torch.Tensor | np.ndarray, indices: np.ndarray, batch_size: int,
                 input_name: str = "images") -> None:
        self.x = x_train.numpy() if isinstance(x_train, torch.Tensor) else np.asarray(x_train)
        self.indices, self.batch_size, self.input_name = np.asarray(indices), batch_size, input_name
        self.seen: list[int] = []
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.indices):
            return None
        chunk = self.indices[self._next:self._next + self.batch_size]
        self._next += len(chunk)
        self.seen.extend(int(i) for i in chunk)
        return {self.input_name: np.ascontiguousarray(self.x[chunk], dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0


@dataclass(frozen=True)
class Quantization:
    """int8 PTQ settings of one trial (TrialConfig's quant_* fields); hook: `at_export`."""

    calibration_batches: int = 4
    calibration_method: str = "minmax"
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown quant_calibration_method {self.calibration_method!r}; "
                             f"choose from {sorted(CALIBRATION_METHODS)}")
        if self.calibration_batches < 1:
            raise ValueError(f"quant_calibration_batches must be >= 1, got {self.calibration_batches!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> Quantization | None:
        """The family for a TrialConfig, or None when use_quantization is off."""
        if not cfg.use_quantization:
            return None
        return cls(cfg.quant_calibration_batches, cfg.quant_calibration_method, cfg.batch_size, cfg.seed)

    def calibration_indices(self, n_train: int) -> np.ndarray:
        """Distinct training rows, a seeded random sample: calibration_batches x batch_size of them,
        or as many whole batches as n_train holds (ORT's histogram calibrators, entropy and
        percentile, fail on a ragged last batch), or all n_train rows as one batch when fewer."""
        whole = min(self.calibration_batches, n_train // self.batch_size) * self.batch_size
        count = whole or n_train
        return np.sort(np.random.default_rng(self.seed).choice(n_train, size=count, replace=False))

    def reader(self, x_train: torch.Tensor | np.ndarray) -> TrainingImages:
        if not len(x_train):
            raise ExportError("int8 quantization needs training images for calibration, but the training split "
                              "is not in memory (dataset parquet streams it)")
        return TrainingImages(x_train, self.calibration_indices(len(x_train)), self.batch_size)

    def at_export(self, onnx_path: str | Path, x_train: torch.Tensor | np.ndarray,
                  output: str | Path | None = None, *, reader: TrainingImages | None = None) -> Path:
        """Quantize the fp32 ONNX file `onnx_path` to `output` (default: model.int8.onnx beside it),
        calibrated on training images only. Raises ExportError (one line) on failure."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        onnx_path = Path(onnx_path)
        output = Path(output) if output is not None else onnx_path.with_name(INT8_FILE)
        reader = reader or self.reader(x_train)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.calibration_method]
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            step = "quant_pre_process"
            try:
                quant_pre_process(str(onnx_path), str(prepared))
                step = "quantize_static"
                with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print() their progress
                    quantize_static(str(prepared), str(output), reader, quant_format=QuantFormat.QDQ,
                                    per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                                    activation_type=QuantType.QUInt8, calibrate_method=method,
                                    calibration_providers=["CPUExecutionProvider"],
                                    extra_options={"CalibTensorRangeSymmetric": False})
            except ExportError:
                raise
            except Exception as err:
                raise ExportError(f"int8 quantization failed in {step}: {type(err).__name__}: "
                                  f"{_one_line(err)}") from None
        return output


class QuantizationFamily(Family):
    """The family as the registry (families.py) knows it: switched on by `use_quantization`, it acts
    at no moment of the training loop; the export glue (trial.export_and_measure) calls `ptq()`'s
    `at_export` on the exported fp32 file. Quantization-aware fine-tuning would add loop moments here."""

    name = "quantization"
    switches = ("use_quantization",)
    fields = ("use_quantization", "quant_calibration_batches", "quant_calibration_method")

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(cfg)

    def ptq(self) -> Quantization:
        cfg = self.cfg
        return Quantization(cfg.quant_calibration_batches, cfg.quant_calibration_method, cfg.batch_size, cfg.seed)

