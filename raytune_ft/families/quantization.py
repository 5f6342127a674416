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

Quantization-aware fine-tuning (`quant_aware_fraction` > 0; Jacob et al. 2018, Krishnamoorthi
2018 "Quantizing deep convolutional networks for efficient inference"): for the last fraction of
training steps every Conv2d and Linear runs with fake-quantized weights and inputs in exactly the
scheme the export applies, so the weights learn to live on ORT's int8 grid:

    weights  per output channel, symmetric: s_c = max|w_c| / 64, w -> s_c * clamp(round(w / s_c), -64, 64)
    inputs   per tensor, asymmetric uint8: s = (hi - lo) / 255, z = round(-lo / s),
             x -> s * (clamp(round(x / s) + z, 0, 255) - z), [lo, hi] an EMA of the batch min/max (with 0)

with straight-through gradients (torch.fake_quantize_*). Per-channel symmetric weight scales
commute with folding BatchNorm into the convolution (a per-channel factor), so the grid learned on
the unfolded weights is the one ORT quantizes the folded ones to. The fake quantization is removed
after the last step; the file shipped is still made by `at_export` (calibrated on training images),
so QAT and PTQ trials ship through the same quantizer and are measured the same way.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raytune_ft import layout
from raytune_ft.config import QUANT_CALIBRATION_METHODS as CALIBRATION_METHODS
from raytune_ft.config import TrialConfig
from raytune_ft.errors import ExportError, one_line
from raytune_ft.families.base import Family

if TYPE_CHECKING:
    from raytune_ft.families.base import Run

WEIGHT_QMAX = 64  # QInt8 weights with reduce_range: the grid [-64, 64] (onnxruntime quant_utils)
ACTIVATION_QMAX = 255  # QUInt8 activations: [0, 255]
RANGE_MOMENTUM = 0.1  # EMA of the observed input min/max per fake-quantized layer


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
        output = Path(output) if output is not None else onnx_path.with_name(layout.INT8_FILE)
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
                                  f"{one_line(err)}") from None
        return output


@torch.no_grad()
def int8_weight_bytes(model: torch.nn.Module) -> bytes:
    """The bytes an int8 file of `model` is made of, without exporting or calibrating: every weight
    of 2+ dimensions (convolutions, linear layers) on the export's per-output-channel int8 grid
    (one byte each, plus its fp32 scales), every other floating tensor of the state dict (biases,
    BatchNorm) as fp32. MO-ASHA's per-epoch stand-in for the int8 file's model_bytes_compressed
    (trial.epoch_size_metrics): gzip of these bytes was 0.99-1.01x the gzip of the model.int8.onnx
    exported from the same weights on 32 trained compact CNNs, ranking them alike (Kendall tau 0.99;
    benchmarks/int8_size_standin.py)."""
    parts = []
    for tensor in model.state_dict().values():
        if not torch.is_floating_point(tensor):
            continue
        t = tensor.detach().float().cpu()
        if t.dim() >= 2:
            scale = (t.abs().flatten(1).amax(dim=1) / WEIGHT_QMAX).clamp_min(1e-12)
            q = torch.round(t / scale.view(-1, *[1] * (t.dim() - 1))).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
            parts += [q.to(torch.int8).numpy().tobytes(), scale.numpy().tobytes()]
        else:
            parts.append(t.numpy().tobytes())
    return b"".join(parts)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` on ORT's per-output-channel symmetric int8 grid, straight-through gradient."""
    scale = (weight.detach().float().abs().flatten(1).amax(dim=1) / WEIGHT_QMAX).clamp_min(1e-12)
    zero = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, 0, -WEIGHT_QMAX,
                                                  WEIGHT_QMAX).to(weight.dtype)


def fake_quantize_input(x: torch.Tensor, bounds: torch.Tensor, *, observe: bool) -> torch.Tensor:
    """`x` on a per-tensor uint8 grid spanning `bounds` = [lo, hi] (updated in place from this batch
    when `observe`: an EMA, initialised by the first batch), straight-through gradient."""
    x32 = x.float()
    if observe:
        with torch.no_grad():
            seen = torch.stack([x32.min().clamp_max(0), x32.max().clamp_min(0)])
            if bool(torch.isnan(bounds).any()):
                bounds.copy_(seen)
            else:
                bounds.lerp_(seen, RANGE_MOMENTUM)
    lo, hi = bounds[0].clamp_max(0), bounds[1].clamp_min(0)
    scale = ((hi - lo) / ACTIVATION_QMAX).clamp_min(1e-12).reshape(1)
    zero = torch.round(-lo / scale).clamp(0, ACTIVATION_QMAX).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(x32, scale, zero, 0, ACTIVATION_QMAX).to(x.dtype)


def _fake_quantized_forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = fake_quantize_input(x, module._qat_bounds, observe=module.training)
    weight = fake_quantize_weight(module.weight)
    if isinstance(module, torch.nn.Conv2d):
        return module._conv_forward(x, weight, module.bias)
    return torch.nn.functional.linear(x, weight, module.bias)


class FakeQuantization:
    """Fake int8 quantization of every plain Conv2d and Linear of a network (module docstring).

    `install` gives each such module an instance `forward` that fake-quantizes its input and weight
    (the parameters and the state_dict stay the network's own: masks, L2-SP anchors, channel
    pruning and checkpoints see the usual names); `remove` restores the class's forward. Modules
    whose class overrides forward (e.g. padding-same convolutions) are left in float.
    """

    def __init__(self) -> None:
        self.bounds: dict[str, torch.Tensor] = {}  # per module name: [lo, hi] of its input

    @staticmethod
    def layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return {name: m for name, m in model.named_modules()
                if type(m).forward in (torch.nn.Conv2d.forward, torch.nn.Linear.forward)}

    def install(self, model: torch.nn.Module, bounds: dict[str, torch.Tensor] | None = None) -> None:
        device = next(model.parameters()).device
        for name, module in self.layers(model).items():
            start = bounds[name] if bounds is not None and name in bounds else torch.full((2,), float("nan"))
            module._qat_bounds = self.bounds[name] = start.clone().to(device)
            module.forward = types.MethodType(_fake_quantized_forward, module)

    @staticmethod
    def remove(model: torch.nn.Module) -> None:
        for module in model.modules():
            if "_qat_bounds" in module.__dict__:
                del module.forward, module._qat_bounds

    @staticmethod
    def installed(model: torch.nn.Module) -> bool:
        return any("_qat_bounds" in m.__dict__ for m in model.modules())


class QuantizationFamily(Family):
    """The family as the registry (families/__init__.py) knows it: switched on by
    `use_quantization`. At export it removes QAT's fake quantization (`before_export`) and turns
    the fp32 ONNX file into the int8 file that ships (`at_export`, ONNX Runtime PTQ calibrated on
    training images); with `quant_aware_fraction` > 0 the loop's last steps train through
    `FakeQuantization`."""

    name = "quantization"
    switches = ("use_quantization",)
    fields = ("use_quantization", "quant_calibration_batches", "quant_calibration_method", "quant_aware_fraction")

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(cfg)
        self.fake = FakeQuantization()
        self.first_step: int | None = None  # the first fake-quantized step; None: PTQ only

    def ptq(self) -> Quantization:
        cfg = self.cfg
        return Quantization(cfg.quant_calibration_batches, cfg.quant_calibration_method, cfg.batch_size, cfg.seed)

    def before_export(self, model: torch.nn.Module) -> None:
        FakeQuantization.remove(model)  # ship the float network; at_export makes the int8 file

    def at_export(self, onnx_path: Path, x_train: torch.Tensor) -> Path:
        return self.ptq().at_export(onnx_path, x_train)

    def start(self, run: Run) -> None:
        if self.cfg.quant_aware_fraction > 0:
            self.first_step = min(run.total_steps - 1, round((1 - self.cfg.quant_aware_fraction) * run.total_steps))

    def before_forward(self, run: Run) -> None:
        # self.fake.bounds is filled by install and emptied at the end: no walk over the modules every step
        if self.first_step is not None and run.step >= self.first_step and not self.fake.bounds:
            self.fake.install(run.model)

    def after_step(self, run: Run) -> None:
        if run.dist.world_size > 1 and self.fake.bounds:  # every rank keeps the same ranges: their mean
            stacked = torch.stack(list(self.fake.bounds.values()))
            torch.distributed.all_reduce(stacked)
            for bounds, mean in zip(self.fake.bounds.values(), stacked / run.dist.world_size, strict=True):
                bounds.copy_(mean)

    def epoch_end(self, run: Run) -> dict[str, float]:
        if self.first_step is None:
            return {}
        if run.step >= run.total_steps:  # trained: the float network goes on to export
            self.fake.remove(run.model)
            self.fake.bounds = {}
        return {"quant_aware": float(run.step > self.first_step)}

    def state_dict(self) -> dict[str, Any]:
        if not self.fake.bounds:  # not (or no longer) fake-quantizing
            return {}
        return {"qat_bounds": {name: b.detach().cpu() for name, b in self.fake.bounds.items()}}

    def load_state_dict(self, run: Run, state: dict[str, Any]) -> None:
        if state.get("qat_bounds"):
            self.fake.install(run.model, state["qat_bounds"])
