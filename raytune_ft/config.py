"""The typed, frozen configuration of one trial.

Every knob a trial has is a field of `TrialConfig`. A search space (spaces.py) says which
fields are fixed and which are searched; Tune's dict is turned into a `TrialConfig` once, at
the edge, and unknown keys or bad values are rejected there with the field named.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
PRUNING_SCOPES = ("global", "layer")
CHANNEL_IMPORTANCE = ("l1", "l2", "taylor", "bn_scale")
CHANNEL_SCOPES = ("uniform", "global")
DATASETS = ("digits", "imagefolder", "cifar10", "cifar100", "fashion_mnist", "parquet")
ON_BAD_IMAGE = ("error", "skip")
QUANT_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # quantization.CALIBRATION_METHODS
AUGMENT_CROPS = ("resized", "pad")  # data.images.augment_batch


@dataclass(frozen=True)
class TrialConfig:
    # --- model and data -------------------------------------------------------------
    model: str = "efficientnet_lite0"  # a timm model name, or "torchvision/NAME" (models.py)
    weights: str = "pretrained"  # "pretrained", "none", "auto" (pretrained where local weights exist), or a file
    dataset: str = "digits"  # one of DATASETS
    data_root: str | None = None  # folder for imagefolder / cifar10 / cifar100 / parquet (data/)
    image_size: int = 32  # square input side in pixels
    val_fraction: float = 0.2  # stratified hold-out used for val_acc (selection, early stopping, sampler)
    test_fraction: float = 0.2  # stratified hold-out no selection touches (test_acc, after the search), where
    # the dataset has no test split of its own (imagefolder test/, CIFAR test batch, Fashion-MNIST t10k)
    max_samples: int | None = None  # use a stratified subset of this many images (quick tests)
    max_test_samples: int | None = None  # a stratified subset of a dataset's own test split (null: all of it)
    # train on this stratified fraction of the training split (val and test unchanged): the first
    # stage of a data-size fidelity search (search.data_fraction); 1 = all of it (what follows from
    # it, e.g. which trials may share a front, is data_fraction.py's)
    data_fraction: float = 1.0
    data_seed: int = 0  # fixes the train/val/test split; the same for every trial of an experiment
    download: bool = False  # cifar10/cifar100 only: fetch the dataset into data_root if it is missing
    on_bad_image: str = "error"  # one of ON_BAD_IMAGE: stop naming bad files, or skip and list them
    augment: bool = False  # random crop + horizontal flip of training batches (+ random erasing below)
    augment_crop: str = "resized"  # one of AUGMENT_CROPS: random resized crop, or "pad" (shift by crop_padding px)
    crop_min_scale: float = 0.08  # smallest area fraction kept by the random resized crop
    crop_padding: int = 4  # augment_crop "pad": the largest shift in pixels (He et al. 2016 pad 4 and crop)
    random_erasing: float = 0.0  # with augment: probability of erasing a random rectangle (Zhong et al. 2017)
    # --- optimisation ---------------------------------------------------------------
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adamw"  # one of OPTIMIZERS; weight decay is decoupled for both
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    lr_schedule: str = "cosine"  # one of LR_SCHEDULES
    warmup_fraction: float = 0.0  # linear warm-up, as a fraction of all steps
    seed: int = 0  # model init (new head) and batch order
    bn_recalibration_batches: int = 8  # re-estimate BatchNorm statistics before each evaluation; 0 = off
    channels_last: bool = True  # NHWC memory format: about 3x faster convs on CPU (oneDNN) and on GPU
    # --- regularization for fine-tuning (each family switchable off) ------------------
    use_weight_decay: bool = False
    weight_decay: float = 1e-4  # decoupled (AdamW-style): w <- w - lr * weight_decay * w
    use_l2sp: bool = False
    l2sp_alpha: float = 1e-3  # alpha * ||w - w0||^2 on the pretrained backbone
    l2sp_beta: float = 1e-4  # beta * ||w||^2 on the new head
    use_label_smoothing: bool = False
    label_smoothing: float = 0.1
    dropout: float = 0.0  # dropout before the classifier
    # --- knowledge distillation ------------------------------------------------------
    use_kd: bool = False
    kd_alpha: float = 0.5  # weight of the distillation term, (1 - kd_alpha) on the task loss
    kd_temperature: float = 4.0
    # --- gradual magnitude pruning (Zhu & Gupta 2017) ---------------------------------
    use_pruning: bool = False
    final_sparsity: float = 0.8  # fraction of prunable weights that are zero at the end
    pruning_start: float = 0.0  # start of the pruning window, fraction of training steps
    pruning_end: float = 0.7  # end of the window; sparsity stays final_sparsity afterwards
    pruning_frequency: int = 10  # optimizer steps between two mask updates
    pruning_scope: str = "global"  # one threshold for all layers, or the same ratio per layer
    # --- structured channel pruning (Torch-Pruning), in the same window ------------------
    use_channel_pruning: bool = False
    channel_pruning_ratio: float = 0.5  # fraction of channels removed from each prunable group
    channel_importance: str = "l2"  # l1 | l2 (weight magnitude) | taylor | bn_scale
    channel_pruning_steps: int = 4  # prune in this many equal steps spread over the window
    channel_pruning_scope: str = "uniform"  # the same ratio everywhere, or ranked globally
    channel_round_to: int = 8  # pruned channel counts stay multiples of this (Torch-Pruning round_to): 8 keeps
    # ONNX Runtime on the vectorised kernels (docs/benchmarks.md); 1 = any count
    # --- int8 post-training static quantization (ONNX Runtime, quantization.py) ----------
    use_quantization: bool = False  # ship model.int8.onnx; val_acc is then that file's accuracy in ORT
    quant_calibration_batches: int = 4  # calibration images: this many x batch_size, random training rows
    quant_calibration_method: str = "minmax"  # one of QUANT_CALIBRATION_METHODS
    quant_aware_fraction: float = 0.0  # the last fraction of training steps run with fake int8 quantization
    # (quantization-aware fine-tuning, quantization.FakeQuantization); 0 = post-training quantization only
    # --- size measurement on the exported model ---------------------------------------
    export: bool = True  # export (model.pt2 + model.onnx + manifest) and measure the deployed file
    latency_budget_s: float = 5.0  # seconds of interleaved b1/b32 ONNX Runtime runs (median reported)
    # --- execution -------------------------------------------------------------------
    cpus_per_trial: int = 1  # torch threads and Ray CPUs of a one-worker trial (and of the teacher)
    workers_per_trial: int = 1  # 1: in-process (lean); > 1: a Ray Train TorchTrainer with DDP
    cpus_per_worker: int | None = None  # Ray CPUs and torch threads of each worker; null = cpus_per_trial
    gpus_per_worker: float = 0.0  # with use_gpu: GPUs per worker (or per one-worker trial); 0.25 packs four
    use_gpu: bool = False  # train on CUDA (NCCL between workers); gloo and the CPU otherwise
    # mixed precision: true = bf16 autocast if supported, else fp16 + GradScaler (CUDA); bf16 on CPU.
    # "auto": on CUDA as true; on a CPU, time a few training steps of the model in fp32 and bf16
    # and keep the faster (train/loop.py `measured_dtype`; the teacher's forward is timed on its own)
    amp: bool | str = False
    sync_batchnorm: bool = False  # workers_per_trial > 1 on GPU: BatchNorm statistics over the global batch

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("pruning_scope", self.pruning_scope, PRUNING_SCOPES)
        _check_choice("dataset", self.dataset, DATASETS)
        if self.amp not in (True, False, "auto"):
            raise ValueError(f"amp must be true, false or \"auto\", got {self.amp!r}")
        _check_choice("on_bad_image", self.on_bad_image, ON_BAD_IMAGE)
        _check_range("crop_min_scale", self.crop_min_scale, low=0.0, high=1.0, low_open=True)
        _check_choice("augment_crop", self.augment_crop, AUGMENT_CROPS)
        _check_range("crop_padding", self.crop_padding, low=0)
        _check_range("random_erasing", self.random_erasing, low=0.0, high=1.0)
        if self.dataset == "parquet" and self.augment and (self.augment_crop != "resized" or self.random_erasing):
            raise ValueError("augment_crop \"pad\" and random_erasing work on in-memory datasets; a streamed "
                             f"parquet dataset decodes with random resized crops only (got augment_crop="
                             f"{self.augment_crop!r}, random_erasing={self.random_erasing})")
        _check_choice("channel_importance", self.channel_importance, CHANNEL_IMPORTANCE)
        _check_choice("quant_calibration_method", self.quant_calibration_method, QUANT_CALIBRATION_METHODS)
        _check_range("quant_calibration_batches", self.quant_calibration_batches, low=1)
        _check_range("quant_aware_fraction", self.quant_aware_fraction, low=0.0, high=1.0)
        if self.quant_aware_fraction > 0 and not self.use_quantization:
            raise ValueError(f"quant_aware_fraction is {self.quant_aware_fraction} but use_quantization is false; "
                             "quantization-aware fine-tuning trains for the int8 file: set use_quantization: true")
        if self.use_quantization and not self.export:
            raise ValueError("use_quantization needs export: true (the int8 file is made from the exported ONNX model)")
        _check_choice("channel_pruning_scope", self.channel_pruning_scope, CHANNEL_SCOPES)
        _check_range("channel_pruning_steps", self.channel_pruning_steps, low=1)
        _check_range("channel_pruning_ratio", self.channel_pruning_ratio, low=0.0, high=0.9)
        _check_range("channel_round_to", self.channel_round_to, low=1)
        _check_range("latency_budget_s", self.latency_budget_s, low=0.0, low_open=True)
        _check_range("epochs", self.epochs, low=1)
        _check_range("data_fraction", self.data_fraction, low=0.0, high=1.0, low_open=True)
        _check_range("batch_size", self.batch_size, low=1)
        _check_range("image_size", self.image_size, low=8)
        _check_range("cpus_per_trial", self.cpus_per_trial, low=1)
        _check_range("workers_per_trial", self.workers_per_trial, low=1)
        if self.cpus_per_worker is not None:
            _check_range("cpus_per_worker", self.cpus_per_worker, low=1)
        _check_range("gpus_per_worker", self.gpus_per_worker, low=0.0)
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError(f"gpus_per_worker above 1 must be a whole number, got {self.gpus_per_worker!r}")
        if self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("use_gpu is true but gpus_per_worker is 0; set gpus_per_worker (e.g. 1, or 0.25 "
                             "to pack four trials on one GPU)")
        if not self.use_gpu and self.gpus_per_worker > 0:
            raise ValueError(f"gpus_per_worker is {self.gpus_per_worker} but use_gpu is false; set use_gpu: true")
        if self.sync_batchnorm and not self.use_gpu:
            raise ValueError("sync_batchnorm needs use_gpu: true (torch's SyncBatchNorm runs on GPUs only)")
        if self.batch_size % self.workers_per_trial:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of workers_per_trial "
                             f"({self.workers_per_trial}): each worker takes an equal share of every batch")
        _check_range("pruning_frequency", self.pruning_frequency, low=1)
        _check_range("bn_recalibration_batches", self.bn_recalibration_batches, low=0)
        _check_range("lr", self.lr, low=0.0, low_open=True)
        for name in ("weight_decay", "l2sp_alpha", "l2sp_beta", "kd_temperature"):
            _check_range(name, getattr(self, name), low=0.0)
        for name in ("val_fraction", "test_fraction", "label_smoothing", "dropout", "final_sparsity"):
            _check_range(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 (something must be left to train on), got "
                             f"{self.val_fraction} + {self.test_fraction}")
        for name in ("kd_alpha", "pruning_start", "pruning_end", "warmup_fraction", "momentum"):
            _check_range(name, getattr(self, name), low=0.0, high=1.0)
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature!r}")
        if self.pruning_end < self.pruning_start:
            raise ValueError(
                f"pruning_end ({self.pruning_end}) must be >= pruning_start ({self.pruning_start})"
            )
        if self.max_samples is not None and self.max_samples < 20:
            raise ValueError(f"max_samples must be >= 20 or null, got {self.max_samples!r}")
        if self.max_test_samples is not None and self.max_test_samples < 20:
            raise ValueError(f"max_test_samples must be >= 20 or null, got {self.max_test_samples!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from a plain dict (Tune's config, YAML), rejecting unknown keys and wrong types."""
        unknown = sorted(set(values) - set(FIELD_TYPES))
        if unknown:
            raise ValueError(unknown_key_message(unknown[0], FIELD_TYPES))
        return cls(**{k: coerce(k, v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def worker_cpus(self) -> int:
        """CPUs (and torch threads) of one training process: a Train worker or a one-worker trial."""
        return self.cpus_per_trial if self.cpus_per_worker is None else self.cpus_per_worker

    def ray_resources(self) -> dict[str, float]:
        """What Tune reserves for one trial. A one-worker trial trains inside the Tune actor. With
        more workers the actor only drives a TorchTrainer whose workers reserve their own
        placement group (Ray Train V2, outside Tune's), so the actor asks for no CPU (any CPU it
        held would be missing for the workers: 2 x 1 CPU never fit next to it on 2 cores) but 1 MiB
        of memory, as Tune needs a non-empty request; search.max_concurrent bounds such trials."""
        if self.workers_per_trial > 1:
            return {"memory": 2**20}
        return {"CPU": self.worker_cpus, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}


def _field_types() -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(TrialConfig)
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(TrialConfig):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        out[f.name] = tuple(args)
    return out


FIELD_TYPES: dict[str, tuple[type, ...]] = _field_types()  # field -> allowed types


def unknown_key_message(key: str, valid: typing.Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown key {key!r}{hint} (valid keys: {', '.join(valid)})"


def coerce(name: str, value: Any) -> Any:
    """Check `value` against the declared type of field `name`; ints are accepted for floats."""
    allowed = FIELD_TYPES[name]
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):  # bool is an int subclass: only accept it for bool fields
        if bool in allowed:
            return value
    elif float in allowed and isinstance(value, (int, float)):
        return float(value)
    elif int in allowed and isinstance(value, int):
        return value
    elif str in allowed and isinstance(value, str):
        return value
    expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {sorted(choices)}")


def _check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}")
