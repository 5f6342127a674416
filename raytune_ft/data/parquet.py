"""Streaming datasets through Ray Data: `parquet` shards written by `python -m raytune_ft.to_parquet`.

`parquet_info` checks a shard folder without reading images, `ray_datasets` streams it (decode and
augment in `map_batches`), `parquet_selection` counts the rows each split yields (max_samples),
`parquet_splits` materialises the small validation split, `parquet_calibration_images` reads the
few training rows int8 calibration needs, `parquet_test_batches` streams the test split (test/
shards, read only after a search). Ray is imported only inside these functions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytune_ft import layout, models
from raytune_ft.config import TrialConfig
from raytune_ft.data.images import MAX_LISTED, DataError, Splits, decode_image, stratified_take

# --- parquet through Ray Data -------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetInfo:
    class_names: tuple[str, ...]
    files: dict[str, list[str]]  # split ("train", "val", and "test" when test/ exists) -> shard paths
    num_rows: dict[str, int]
    bad_rows: tuple[str, ...]  # "shard: index i label l" for labels out of range (skipped under skip)
    labels: dict[str, np.ndarray]  # split -> every row's label, shard by shard (read once, for parquet_selection)
    indices: dict[str, np.ndarray]  # split -> every row's `index`, in the same order


def parquet_info(cfg: TrialConfig) -> ParquetInfo:
    """Check a Parquet dataset folder (data_root) without reading images: `dataset.json` with
    class_names, shards in `train/` and `val/` (and optionally `test/`) with columns image (binary) and label (integer),
    every label in range. Reads only the label and index columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not cfg.data_root:
        raise DataError("dataset parquet needs data_root: a folder written by python -m raytune_ft.to_parquet")
    root = Path(cfg.data_root)
    meta_path = root / layout.PARQUET_META
    if not meta_path.is_file():
        raise DataError(f"{str(meta_path)!r} does not exist: data_root must be a folder written by "
                        "python -m raytune_ft.to_parquet IMAGEFOLDER OUT_DIR (train/, val/ and dataset.json)")
    try:
        names = tuple(json.loads(meta_path.read_text())["class_names"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{str(meta_path)!r} must be JSON with a class_names list ({err})") from err
    files, rows, bad, labels, indices = {}, {}, [], {}, {}
    for split in ("train", "val", "test"):
        if split == "test" and not (root / split).is_dir():
            continue  # written by an older to_parquet or with --test-fraction 0: no test_acc
        split_labels, split_indices = [], []
        shards = sorted(str(p) for p in (root / split).glob("*.parquet"))
        if not shards:
            raise DataError(f"no .parquet shards in {str(root / split)!r}")
        files[split], rows[split] = shards, 0
        for shard in shards:
            try:
                pf = pq.ParquetFile(shard)
            except Exception as err:
                raise DataError(f"cannot read Parquet shard {shard!r}: {err}") from err
            schema = pf.schema_arrow
            for column, ok in (("image", pa.types.is_binary), ("label", pa.types.is_integer),
                               ("index", pa.types.is_integer)):
                if column not in schema.names or not ok(schema.field(column).type):
                    raise DataError(f"Parquet shard {shard!r} needs a column {column!r} "
                                    f"({'bytes' if column == 'image' else 'integer'}); it has {schema}")
            rows[split] += pf.metadata.num_rows
            for batch in pf.iter_batches(columns=["label", "index"], batch_size=65536):
                label, index = batch.column("label").to_numpy(), batch.column("index").to_numpy()
                split_labels.append(label)
                split_indices.append(index)
                for i in np.flatnonzero((label < 0) | (label >= len(names))):
                    bad.append(f"{shard}: index {index[i]} label {label[i]}")
        labels[split] = np.concatenate(split_labels) if split_labels else np.zeros(0, np.int64)
        indices[split] = np.concatenate(split_indices) if split_indices else np.zeros(0, np.int64)
    train = labels["train"]
    if len(np.unique(train)) > 1 and (np.diff(train) >= 0).all():
        # Streams read rows in storage order within a shard: training batches and the BatchNorm
        # calibration batches would each hold one class (an older to_parquet wrote them so).
        raise DataError(f"the training rows of {str(root)!r} are stored class by class (labels sorted); "
                        "rewrite the folder with python -m raytune_ft.to_parquet IMAGEFOLDER OUT_DIR, "
                        "which stores each split's rows in a seeded random order")
    if bad and cfg.on_bad_image != "skip":
        raise DataError(f"{len(bad)} label(s) out of range [0, {len(names)}) in {str(root)!r}: "
                        + "; ".join(bad[:MAX_LISTED]) + ". Fix the shards, or set on_bad_image: skip")
    return ParquetInfo(names, files, rows, tuple(bad), labels, indices)


def ray_datasets(cfg: TrialConfig, splits: tuple[str, ...] = ("train", "val"), *,
                 decode_view: tuple = ()) -> dict[str, Any]:
    """{"train": ray.data.Dataset, "val": ray.data.Dataset} streaming cfg.data_root's Parquet shards
    (`splits`: which; "test" only after a search, holdout.py).

    Rows after the map: `image` float32 (3, image_size, image_size) normalized with cfg.model's
    mean/std, `label` int64, `index` int64 (the stable sample index written by to_parquet).
    Images are decoded in cfg.model's view (centre crop, interpolation) unless `decode_view`
    (crop_pct, interpolation) says otherwise: a trial streams its training rows in the view its
    validation split was decoded in (Splits.decode_view), which, with architectures that crop
    differently, is the default model's rather than its own.
    Decoding (and, for train with cfg.augment, random resized crop + flip) runs in
    `map_batches` on CPU workers; rows with out-of-range labels or undecodable bytes raise a
    DataError naming the shard index, or are dropped under on_bad_image: skip. The train
    shards are read in a seeded order that changes every epoch. max_samples keeps a fixed,
    stratified subset of exactly `parquet_selection(cfg)[split][0]` rows per split (chosen by the
    stable `index` column with data_seed, the same in every epoch and process). Ray is started
    locally if it is not running.

    Use: `ds["train"].iter_torch_batches(batch_size=64, local_shuffle_buffer_size=...)` in one
    process, or `TorchTrainer(datasets=ds)` + `ray.train.get_dataset_shard("train")
    .iter_torch_batches(...)` on each worker; each batch is {"image", "label", "index"} tensors.
    """
    import ray.data
    from ray.data import DataContext, FileShuffleConfig

    info = parquet_info(cfg)
    selection = parquet_selection(cfg, info)
    inp = models.input_config(cfg.model)
    if decode_view:
        inp = dataclasses.replace(inp, crop_pct=decode_view[0], interpolation=decode_view[1])
    out = {}
    for split in splits:
        if split not in info.files:
            raise DataError(f"data_root {cfg.data_root!r} has no {split}/ shards")
        shuffle = FileShuffleConfig(seed=cfg.data_seed, reseed_after_execution=True) if split == "train" else None
        context = DataContext.get_current()
        use_v2, context.use_datasource_v2 = context.use_datasource_v2, False
        try:  # Ray 2.60's V2 Parquet source spent 5-40 s per pass in its ListFiles task here, V1 0.4 s
            ds = ray.data.read_parquet(info.files[split], shuffle=shuffle)
        finally:
            context.use_datasource_v2 = use_v2
        ds = ds.select_columns(["image", "label", "index"])
        ds = ds.map_batches(
            _decode_batch, batch_format="numpy", batch_size=64,
            fn_kwargs={"size": cfg.image_size, "inp": inp, "augment": cfg.augment and split == "train",
                       "min_scale": cfg.crop_min_scale, "num_classes": len(info.class_names),
                       "on_bad_image": cfg.on_bad_image, "keep": selection[split][1]},
        )
        out[split] = ds
    return out


def parquet_selection(cfg: TrialConfig, info: ParquetInfo | None = None) -> dict[str, tuple[int, np.ndarray | None]]:
    """split -> (rows that split yields per pass, the `index` values kept or None for all).

    The count is exact: the split's rows minus those with labels out of range (`info.bad_rows`,
    dropped under on_bad_image: skip); with max_samples, a stratified take (data_seed) of
    max_samples rows shared between the splits in proportion to their sizes. Rows whose image
    bytes turn out undecodable while streaming are not known here (see `ray_datasets`)."""
    info = info or parquet_info(cfg)
    labels, indices = {}, {}
    for split in ("train", "val"):  # test/ is the dataset's own split: never capped by max_samples
        label, index = info.labels[split], info.indices[split]
        good = (label >= 0) & (label < len(info.class_names))
        labels[split], indices[split] = label[good], index[good]
    total = sum(len(v) for v in labels.values())
    out: dict[str, tuple[int, np.ndarray | None]] = {}
    for split in ("train", "val"):
        if not cfg.max_samples or cfg.max_samples >= total:
            out[split] = (len(labels[split]), None)
            continue
        n = max(1, round(cfg.max_samples * len(labels[split]) / total))
        take = stratified_take(labels[split], n, np.random.default_rng(cfg.data_seed))
        out[split] = (len(take), np.sort(indices[split][take]))
    if "test" in info.labels:
        label = info.labels["test"]
        out["test"] = (int(((label >= 0) & (label < len(info.class_names))).sum()), None)
    return out


def parquet_splits(cfg: TrialConfig) -> Splits:
    """Splits for dataset parquet: the validation split (small) materialized into memory tensors
    for evaluation, the training split left to stream (x_train/y_train are empty; a trial reads
    it with `ray_datasets(cfg)["train"]`). skipped: the rows with labels out of range (under
    on_bad_image: skip). Needs Ray (started locally if it is not running)."""
    info = parquet_info(cfg)
    xs, ys = [], []
    for batch in ray_datasets(cfg)["val"].iter_torch_batches(batch_size=256):
        xs.append(batch["image"])
        ys.append(batch["label"])
    if not ys:
        raise DataError(f"the val/ shards of data_root {cfg.data_root!r} hold no usable rows")
    inp = models.input_config(cfg.model)
    empty = torch.empty(0, 3, cfg.image_size, cfg.image_size)
    return Splits(empty, torch.empty(0, dtype=torch.int64), torch.cat(xs), torch.cat(ys).long(), info.class_names,
                  tuple(info.bad_rows), tuple(inp.mean), tuple(inp.std), decode_view=(inp.crop_pct, inp.interpolation))


def _decode_batch(batch: dict[str, np.ndarray], *, size: int, inp: models.InputConfig, augment: bool,
                  min_scale: float, num_classes: int, on_bad_image: str,
                  keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """map_batches: encoded images -> normalized float32 (n, 3, size, size), with label and index.
    keep: the `index` values to keep (max_samples); other rows are left out silently."""
    if keep is not None:
        mask = np.isin(np.asarray(batch["index"]), keep)
        batch = {k: np.asarray(v)[mask] for k, v in batch.items()}
    rng = np.random.default_rng() if augment else None  # fresh entropy: new crops every epoch
    mean = np.asarray(inp.mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255
    scale = 1 / (np.asarray(inp.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255)
    images, keep = [], []
    for i, (data, label, index) in enumerate(zip(batch["image"], batch["label"], batch["index"], strict=True)):
        problem = None
        if not 0 <= label < num_classes:
            problem = f"label {label} out of range [0, {num_classes})"
        else:
            try:
                images.append(decode_image(bytes(data), size, inp, rng=rng, min_scale=min_scale))
            except Exception as err:
                problem = f"image bytes cannot be decoded ({type(err).__name__}: {err})"
        if problem is None:
            keep.append(i)
        elif on_bad_image != "skip":
            raise DataError(f"Parquet row with index {index}: {problem}")
    x = np.stack(images).transpose(0, 3, 1, 2) if images else np.zeros((0, 3, size, size), np.uint8)
    return {"image": ((x - mean) * scale).astype(np.float32),
            "label": np.asarray(batch["label"])[keep].astype(np.int64),
            "index": np.asarray(batch["index"])[keep].astype(np.int64)}


def parquet_calibration_images(cfg: TrialConfig, count: int, *, decode_view: tuple = ()) -> torch.Tensor:
    """The first `count` usable training rows in storage order, decoded as evaluation decodes them
    (no augmentation; in `decode_view` like `ray_datasets`), as a float32 (n, 3, size, size) tensor:
    the int8 calibration images of a streamed dataset, whose training split is never in memory.
    to_parquet stores each split in a seeded random order, so they are a random sample of it;
    max_samples' selection and on_bad_image apply as when streaming. Reads with pyarrow (no Ray):
    about `count` rows' bytes, whatever the dataset's size."""
    import pyarrow.parquet as pq

    info = parquet_info(cfg)
    keep = parquet_selection(cfg, info)["train"][1]
    inp = models.input_config(cfg.model)
    if decode_view:
        inp = dataclasses.replace(inp, crop_pct=decode_view[0], interpolation=decode_view[1])
    images, have = [], 0
    for shard in info.files["train"]:
        for batch in pq.ParquetFile(shard).iter_batches(columns=["image", "label", "index"], batch_size=256):
            decoded = _decode_batch({name: batch.column(name).to_numpy(zero_copy_only=False)
                                     for name in ("image", "label", "index")},
                                    size=cfg.image_size, inp=inp, augment=False, min_scale=cfg.crop_min_scale,
                                    num_classes=len(info.class_names), on_bad_image=cfg.on_bad_image, keep=keep)
            images.append(decoded["image"][: count - have])
            have += len(images[-1])
            if have >= count:
                return torch.from_numpy(np.concatenate(images))
    return torch.from_numpy(np.concatenate(images)) if images else torch.empty(0, 3, cfg.image_size, cfg.image_size)


def parquet_test_batches(cfg: TrialConfig, batch_size: int = 256) -> Any:
    """The test/ shards as an iterator of (images, labels) tensor batches (model input, as
    `ray_datasets`), or None when the dataset has none. Read once, after the search, by holdout.py;
    needs Ray."""
    if "test" not in parquet_info(cfg).files:
        return None
    stream = ray_datasets(cfg, ("test",))["test"]
    return ((batch["image"], batch["label"].long()) for batch in stream.iter_torch_batches(batch_size=batch_size))
