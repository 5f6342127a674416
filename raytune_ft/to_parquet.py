"""CLI: python -m raytune_ft.to_parquet IMAGEFOLDER OUT_DIR — image folder -> Parquet shards for Ray Data.

Writes OUT_DIR/train/, OUT_DIR/val/ and OUT_DIR/test/ (part-NNNNN.parquet each) with columns image
(the original encoded file bytes), label (int64), index (int64, stable: the file's position in
the sorted folder) and path (relative to IMAGEFOLDER), plus OUT_DIR/dataset.json (class names,
row counts, skipped files). test/ is the folder's own test/ split, else a stratified --test-fraction
(none with --test-fraction 0); it is read only after a search (holdout.py). Rows are shuffled
(seeded) across shards, never class by class.
Shards are written one at a time, so memory stays bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from raytune_ft import data, models
from raytune_ft.layout import PARQUET_META


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raytune_ft.to_parquet", description=__doc__.splitlines()[0])
    p.add_argument("imagefolder", help="one sub-folder per class, or train/ + val/ each holding them")
    p.add_argument("out_dir", help="output folder (must not exist or be empty)")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="images per Parquet file (default 1000)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="stratified validation share when the folder has no val/ split (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="stratified test share (of all images) when the folder has no test/ split (default 0.2; "
                   "0: no test split)")
    p.add_argument("--seed", type=int, default=0, help="seed of those splits (default 0)")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error",
                   help="stop at unreadable images and empty class folders (default), or skip and list them")
    return p.parse_args(argv)


def convert(imagefolder: str, out_dir: str, *, rows_per_shard: int = 1000, val_fraction: float = 0.2,
            seed: int = 0, on_bad_image: str = "error", test_fraction: float = 0.2) -> dict:
    """Write the shards and dataset.json; returns dataset.json's content. Raises DataError on bad input."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if rows_per_shard < 1:
        raise data.DataError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    if not 0 < val_fraction < 1:
        raise data.DataError(f"--val-fraction must be > 0 and < 1, got {val_fraction}")
    if not 0 <= test_fraction < 1 - val_fraction:
        raise data.DataError(f"--test-fraction must be >= 0 and < 1 - val_fraction ({1 - val_fraction:g}), "
                             f"got {test_fraction}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise data.DataError(f"output folder {out_dir!r} exists and is not empty (nothing was written)")
    layout = data.scan_imagefolder(imagefolder, on_bad_image, verify=True)
    files = layout.train + (layout.val or []) + (layout.test or [])
    index = {f: i for i, f in enumerate(sorted((f for f, _ in files), key=str))}
    if layout.val is None:
        labels = np.asarray([label for _, label in layout.train])
        val = set(data.stratified_take(labels, max(1, round(val_fraction * len(labels))),
                                        np.random.default_rng(seed)).tolist())
        splits = {"train": [f for i, f in enumerate(layout.train) if i not in val],
                  "val": [f for i, f in enumerate(layout.train) if i in val]}
    else:
        splits = {"train": layout.train, "val": layout.val}
    if layout.test is not None:
        splits["test"] = layout.test
    elif test_fraction > 0:  # a fraction of all images, taken from what validation left (as data.load_splits)
        train = splits["train"]
        labels = np.asarray([label for _, label in train])
        n = max(1, round(test_fraction * len(layout.train)))  # layout.train: every image, or the train/ folder
        test = set(data.stratified_take(labels, n, np.random.default_rng(seed + 2)).tolist())
        splits = {**splits, "train": [f for i, f in enumerate(train) if i not in test],
                  "test": [f for i, f in enumerate(train) if i in test]}
    # Rows in a seeded random order, not class by class: a stream reads a shard front to back, so
    # a class-sorted shard would give class-sorted training batches and BatchNorm statistics.
    order = np.random.default_rng(seed + 1)
    splits = {split: [items[i] for i in order.permutation(len(items))] for split, items in splits.items()}

    schema = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("index", pa.int64()), ("path", pa.string())])
    skipped, rows = list(layout.skipped), {}
    for split, items in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        shard, count, parts = [], 0, 0

        def flush(shard: list, part: int, split: str = split) -> int:
            pq.write_table(pa.Table.from_pylist(shard, schema=schema), out / split / f"part-{part:05d}.parquet")
            return part + 1

        for file, label in items:
            try:  # decode fully once, so a truncated file is caught here and not in a training run
                with Image.open(file) as im:
                    im.load()
            except Exception as err:
                problem = f"{file}: cannot be decoded ({type(err).__name__}: {err})"
                if on_bad_image != "skip":
                    raise data.DataError(f"{problem}. Fix or remove it, or pass --on-bad-image skip") from err
                skipped.append(problem)
                continue
            shard.append({"image": file.read_bytes(), "label": label, "index": index[file],
                          "path": str(file.relative_to(layout.root))})
            count += 1
            if len(shard) == rows_per_shard:
                parts, shard = flush(shard, parts), []
        if shard or parts == 0:
            flush(shard, parts)
        rows[split] = count
    meta = {"class_names": list(layout.class_names), "num_rows": rows, "source": str(Path(imagefolder).resolve()),
            "skipped": skipped}
    (out / PARQUET_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        meta = convert(args.imagefolder, args.out_dir, rows_per_shard=args.rows_per_shard,
                       val_fraction=args.val_fraction, seed=args.seed, on_bad_image=args.on_bad_image,
                       test_fraction=args.test_fraction)
    except (data.DataError, models.ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {meta['num_rows']['train']} train + {meta['num_rows']['val']} val + "
          f"{meta['num_rows'].get('test', 0)} test images of "
          f"{len(meta['class_names'])} classes to {args.out_dir}"
          + (f"; skipped {len(meta['skipped'])} (listed in dataset.json)" if meta["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
