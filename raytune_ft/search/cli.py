"""CLI: python -m raytune_ft.search — run a joint search and write the Pareto front.

`run_experiment` is the search, with keyword arguments; `main` (the command line) and the Python
API (`raytune_ft.run_search`, api.py) are thin layers over it.
Flow: validate everything the user gave (space file or dict, --set, model, data, tracking
packages) before Ray starts; fine-tune (or load) the dense teacher once; run the trials with Ray
Tune + OptunaSearch; write trials.csv, pareto.csv, pareto.png, teacher.json, optuna_trials.csv and
optuna_journal.log (the sampler's study: early-stopped trials PRUNED) into <storage-path>/<name>/.
The storage path is a local folder or a URI pyarrow.fs understands (s3://bucket/prefix): for a
URI the driver writes its own files in a local staging folder and uploads them, Tune persists
trials and checkpoints there itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft import layout
from raytune_ft.errors import ExportError
from raytune_ft.search import teacher_reuse
from raytune_ft.search.searcher import make_searcher, resume_into

DEFAULT_STORAGE = "ray_results"  # relative to the current directory
STORAGE_ENV = "RAYTUNE_FT_STORAGE"  # the default --storage-path where set, e.g. s3://bucket/prefix on a cluster
DATA_FIELDS = ("dataset", "data_root", "image_size", "val_fraction", "test_fraction", "max_samples",
               "max_test_samples", "data_seed", "download", "on_bad_image")
TRIAL_METRICS = ("val_acc", "val_loss", "params", "nonzero_params", "sparsity", "model_bytes",
                 "model_bytes_compressed", "macs", "flops", "latency_ms_b1", "latency_ms_b32",
                 "latency_ms_b1_iqr", "latency_ms_b32_iqr", "train_loss", "task_loss", "kd_loss", "l2sp_loss")
BASELINE_METRICS = ("val_acc", "val_acc_fp32", "params", "nonzero_params", "model_bytes", "model_bytes_compressed",
                    "macs", "latency_ms_b1", "latency_ms_b1_iqr", "latency_ms_b32", "latency_ms_b32_iqr")


class UserError(Exception):
    """Bad input from the command line or a file: reported in one line, without a traceback."""


DICT_SPACE = "<space dict>"  # where a space given as a dict is said to come from in its error messages


@dataclass(frozen=True)
class SearchOptions:
    """What one search is asked to do: the command line's flags (parse_args gives the same names) or
    `run_experiment`'s keyword arguments."""

    space: str | os.PathLike | Mapping[str, Any] = "quickstart"  # built-in name, YAML path, or a dict like one
    overrides: tuple[str, ...] = ()  # KEY=VALUE, as --set
    num_samples: int | None = None  # None: the space's search.num_samples (likewise the next two)
    max_concurrent: int | None = None
    seed: int | None = None
    storage_path: str | None = None  # None: $RAYTUNE_FT_STORAGE, else ./ray_results
    name: str | None = None  # None: <space name>-<date>-<time>
    address: str | None = None  # a running Ray cluster to join; None: start a local one
    dashboard_host: str | None = None  # the local cluster's dashboard address; None: no dashboard
    confirm: int = 1  # runs per front recipe (1: no confirmation runs)
    resume: bool = False  # continue <storage_path>/<name>


@dataclass(frozen=True)
class Location:
    """Where an experiment lives: `uri` as recorded (a local folder or e.g. s3://bucket/prefix/name)
    and `local`, the folder this driver writes the search's own files to (the experiment folder
    itself, or a staging folder uploaded to `uri`)."""

    uri: str
    local: Path

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @property
    def storage_path(self) -> str:  # Tune's RunConfig(storage_path=...), with name = local.name
        return self.uri.rsplit("/", 1)[0] if self.remote else str(self.local.parent)

    def exists(self) -> bool:
        if not self.remote:
            return self.local.exists()
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        return filesystem.get_file_info(path).type != fs.FileType.NotFound

    def has(self, name: str) -> bool:
        if not self.remote:
            return (self.local / name).exists()
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        return filesystem.get_file_info(f"{path}/{name}").type != fs.FileType.NotFound

    def upload(self, *names: str) -> None:
        """Copy files or folders of `local` to `uri` (nothing to do for a local experiment)."""
        if not self.remote:
            return
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        for name in names:
            source = self.local / name
            files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for file in (f for f in files if f.is_file()):
                target = f"{path}/{file.relative_to(self.local).as_posix()}"
                filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
                with open(file, "rb") as src, filesystem.open_output_stream(target) as dst:
                    dst.write(src.read())


def locate(storage_path: str, name: str) -> Location:
    """The experiment <storage-path>/<name>; a URI gets a fresh local staging folder."""
    if "://" not in storage_path:
        folder = Path(storage_path).expanduser().resolve() / name
        return Location(str(folder), folder)
    try:
        from pyarrow import fs

        fs.FileSystem.from_uri(storage_path)
    except Exception as err:  # unknown scheme, bad bucket name, missing filesystem support
        raise UserError(f"--storage-path {storage_path!r} is not a folder or a URI pyarrow.fs can open: "
                        f"{err}") from err
    staging = Path(tempfile.mkdtemp(prefix="raytune_ft-")) / name
    staging.mkdir()
    return Location(f"{storage_path.rstrip('/')}/{name}", staging)


def _builtin_spaces_text() -> str:
    """One line per built-in space: its name and the first sentence of its description."""
    import textwrap

    from raytune_ft.space import spaces

    lines = []
    for name in spaces.builtin_space_names():
        try:
            text = " ".join(spaces.load_space(spaces.builtin_space_path(name)).description.split())
        except Exception as err:  # noqa: BLE001  (--help must print even if one file is broken)
            text = f"(cannot be read: {err})"
        first = text.split(": ")[0] if len(text) > 100 else text
        lines.append(textwrap.fill(f"{name}: {first}", width=100, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m raytune_ft.search",
        description="Search fine-tuning recipes (regularization x distillation x pruning x int8 quantization) "
        "and report the accuracy-versus-size Pareto front. With no arguments: the embedded quickstart "
        "(scikit-learn digits + ImageNet-pretrained EfficientNet-Lite students, offline).",
        epilog="built-in spaces (--space NAME):\n" + _builtin_spaces_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", default="quickstart",
                   help="search space: a YAML path or a built-in name (listed below); default: quickstart")
    p.add_argument("--num-samples", type=int, help="number of trials (default: the space's search.num_samples)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's search.max_concurrent)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the space's search.seed)")
    p.add_argument("--storage-path", default=os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE,
                   help="folder or URI for results, e.g. s3://bucket/prefix (on a cluster every node must "
                   f"reach it); default: ${STORAGE_ENV} if set (cluster.yaml sets it), else ./{DEFAULT_STORAGE}")
    p.add_argument("--name", help="experiment name (default: <space name>-<date>-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fixed setting of the space, e.g. --set epochs=2; also "
                   "teacher.KEY=VALUE and search.KEY=VALUE; repeatable")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto'); default: start a local one")
    p.add_argument("--dashboard-host", default=None, metavar="HOST",
                   help="start the local cluster's dashboard bound to HOST (127.0.0.1: this machine only; "
                   "0.0.0.0 exposes it, and with it job submission, to the network); default: no dashboard")
    p.add_argument("--confirm", type=int, default=1, metavar="K",
                   help="after the search, re-run every front recipe with K - 1 more seeds (model init and batch "
                   "order) in parallel and write confirmed.csv (mean ± std of test_acc and size); default 1: "
                   "no re-runs")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment <storage-path>/<name> instead of refusing to touch it; "
                   "this unpickles Tune's saved state: resume only folders you trust")
    return p.parse_args(argv)


def load_space(space: str | os.PathLike | Mapping[str, Any]) -> Any:
    """A space given as a built-in name, a YAML path, or a dict shaped like a space file (its
    errors name DICT_SPACE); validated like a file. Raises SpaceError."""
    from raytune_ft.space import recipes, spaces

    if isinstance(space, Mapping):
        fields = spaces.parse_space(DICT_SPACE, dict(space))
        fields["search"] = recipes.check_initial(DICT_SPACE, fields["search"], fields["params"], fields["fixed"])
        return spaces.Space(path=DICT_SPACE, **fields)
    return spaces.load_space(spaces.resolve_space(str(space)))


def prepare(args: SearchOptions | argparse.Namespace):
    """Everything that can fail on user input, checked before Ray starts; returns (space, where).
    `args`: SearchOptions, or parse_args' Namespace (the same names). A space given as a dict is
    written into the experiment folder as space.yaml once all checks passed (the file space.json names)."""
    from raytune_ft import data, models
    from raytune_ft.config import TrialConfig
    from raytune_ft.search import tracking
    from raytune_ft.space import spaces
    from raytune_ft.train import teachers

    if not isinstance(args, SearchOptions):
        args = SearchOptions(**{**vars(args), "overrides": tuple(args.overrides)})
    if args.confirm < 1:
        raise UserError(f"--confirm must be >= 1 (runs per front recipe), got {args.confirm}")
    try:
        space = load_space(args.space)
        overrides = list(args.overrides)
        for flag, key in (("num_samples", "num_samples"), ("max_concurrent", "max_concurrent"), ("seed", "seed")):
            if getattr(args, flag) is not None:
                overrides.append(f"search.{key}={getattr(args, flag)}")
        space = space.with_overrides(overrides)
        searched_data = [p.name for p in space.params if p.name in DATA_FIELDS]
        if searched_data:
            raise UserError(f"{space.path}: params.{searched_data[0]}: data settings "
                            f"({', '.join(DATA_FIELDS)}) must be fixed, not searched")
        data.check_dataset(TrialConfig.from_dict(space.fixed))  # the students' data, which the teacher shares
        teachers.check_architectures(space)  # every student choice and the teacher: names, local weights, classes
        tracking.check_installed(space.search.callbacks)
    except (spaces.SpaceError, models.ModelError, data.DataError, ValueError) as err:
        raise UserError(str(err)) from err

    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    where = locate(args.storage_path or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE, name)
    try:
        exists = where.exists()
    except OSError as err:  # a URI: no credentials, no such bucket, unreachable endpoint
        raise UserError(f"--storage-path: cannot read {where.uri!r}: {err}") from err
    if exists and not args.resume:
        raise UserError(f"experiment folder {where.uri!r} already exists; pass --resume to continue "
                        "it or choose a new --name (nothing was changed)")
    if args.resume and not exists:
        raise UserError(f"--resume: experiment folder {where.uri!r} does not exist")
    if args.resume and not where.has(layout.SPACE_JSON):
        raise UserError(f"--resume: {where.uri!r} is not a raytune_ft experiment (no space.json); "
                        "nothing was restored")
    if args.resume and where.remote:  # the teacher and settings, to continue from (no trial weights)
        from raytune_ft.report import results

        where.local.rmdir()
        where = Location(where.uri, results.fetch(where.uri))
    if isinstance(args.space, Mapping):
        import yaml

        where.local.mkdir(parents=True, exist_ok=True)
        plain = json.loads(json.dumps(dict(args.space), default=str))  # tuples -> lists, paths -> strings
        (where.local / layout.SPACE_YAML).write_text(yaml.safe_dump(plain, sort_keys=False))
        where.upload(layout.SPACE_YAML)
        space = dataclasses.replace(space, path=f"{where.uri}/{layout.SPACE_YAML}")
    return space, where


def obtain_teacher(space, data, exp_dir: Path, location: str | None = None,
                   reuse_root: Path | None = None) -> tuple[dict[str, Any], Any, Any]:
    """The dense teacher's metrics, its train-set logits (None when the training split streams,
    dataset parquet) and {"config", "state_dict"} for an online teacher (trial.training_inputs):
    loaded from the experiment folder or space's teacher.checkpoint, else fine-tuned once as a
    Ray task. The teacher is its own model: it trains, is evaluated and predicts on its own view
    of the students' split `data` (teachers.teacher_splits: same rows, its normalization and
    input size), so its logits index the students' rows. `location`: the experiment's address
    recorded in teacher.json when `exp_dir` is a staging copy of it. `reuse_root`: the local storage
    folder whose other experiments' teachers are reused when fitted on the same data with the same
    teacher config (teacher_reuse.py)."""
    import torch

    from raytune_ft import models, train
    from raytune_ft.config import TrialConfig
    from raytune_ft.search import trial
    from raytune_ft.train import teachers

    teacher_dir = exp_dir / layout.TEACHER_DIR
    logits_path = teacher_dir / layout.TRAIN_LOGITS
    cfg = space.teacher_config()
    reused_from = None
    if not space.teacher_checkpoint and not (teacher_dir / models.CHECKPOINT_META).exists() and reuse_root:
        reused_from = teacher_reuse.find_fitted(reuse_root, cfg.to_dict(), exclude=exp_dir)
        if reused_from is not None:  # fitted once per dataset: the same data and teacher config in this storage
            print(f"teacher: reusing the teacher fitted by experiment {reused_from.parent.name!r} (the same data "
                  "and teacher config in this storage folder; change the teacher section or give "
                  "teacher.checkpoint to fit or load another)", flush=True)
            teacher_reuse.copy_in(reused_from, teacher_dir)
    source = space.teacher_checkpoint or (teacher_dir if (teacher_dir / models.CHECKPOINT_META).exists() else None)
    if source is not None:
        print(f"teacher: loading {source}", flush=True)
        try:
            teachers.check_checkpoint_classes(source, data.class_names)
        except models.ModelError as err:
            raise UserError(str(err)) from err
        model, meta = models.load_checkpoint(source)
        torch.set_num_threads(cfg.cpus_per_trial)
        config = meta["config"]
        cfg = teachers.view_config(cfg, config)
        view = teachers.teacher_splits(data, cfg)
        metrics = {**meta["metrics"], **train.evaluate(model, view.x_val, view.y_val)}
        if not len(view.x_train):
            logits = None
        elif logits_path.exists() and source == teacher_dir:
            logits = torch.load(logits_path, weights_only=True)
        else:
            logits = train.predict_logits(model, view.x_train)
        changed = source != teacher_dir
    else:
        print(f"teacher: fine-tuning {cfg.model} ({cfg.weights}, {cfg.image_size} px) densely for {cfg.epochs} "
              "epochs", flush=True)
        view = teachers.teacher_splits(data, cfg)
        try:
            out = trial.fit_teacher_remote(cfg, view)
        except Exception as err:  # a Ray task error wraps the teacher's own exception as .cause
            cause = getattr(err, "cause", None) or err
            first = (str(cause).strip().splitlines() or [""])[0]
            raise UserError(f"teacher: {cfg.model} could not be fitted on this data ({type(cause).__name__}: {first}); "
                            "no trial has started and nothing was lost. Fix the teacher section (e.g. a lower "
                            "teacher.lr) or give teacher.checkpoint") from err
        model = models.build_model(cfg.model, data.num_classes, weights="none", dropout=cfg.dropout)
        model.load_state_dict(out["state_dict"])
        config, metrics, logits = cfg.to_dict(), out["metrics"], out["train_logits"]
        changed = True
        teacher_dir.mkdir(parents=True, exist_ok=True)
        teacher_reuse.write_key(teacher_dir, cfg.to_dict())  # another search in this storage reuses it
    export_dir = teacher_dir / layout.EXPORT_DIR
    # measured with the students' threads: the baselines' latencies compare with the trials'
    measure_cfg = dataclasses.replace(cfg, cpus_per_trial=TrialConfig.from_dict(space.fixed).worker_cpus,
                                      cpus_per_worker=None)
    if cfg.export and not (export_dir / layout.MANIFEST).exists():
        print("teacher: exporting and measuring", flush=True)
        torch.set_num_threads(measure_cfg.cpus_per_trial)
        metrics = {**metrics, **trial.export_and_measure(model, measure_cfg, view, metrics, export_dir)}
        changed = True
    # both baselines on the teacher's own view: calibration, val and the file's input size
    baselines = teacher_baselines(model, measure_cfg, view, metrics, teacher_dir, recorded=(
        f"{location}/teacher" if location else str(teacher_dir))) if cfg.export else []
    if baselines:
        import pandas as pd

        pd.DataFrame(baselines).to_csv(exp_dir / layout.BASELINES_CSV, index=False)
    if changed:  # one write, with the measured sizes in its metrics
        models.save_checkpoint(teacher_dir, model, config=config, class_names=data.class_names, metrics=metrics)
    if logits is not None:
        assert len(logits) == len(data.y_train), (len(logits), len(data.y_train))  # one row per student sample
        torch.save(logits, logits_path)
    recorded = f"{location}/teacher" if location else str(teacher_dir)
    info = {**{k: metrics[k] for k in TRIAL_METRICS if k in metrics},
            "model": config["model"], "image_size": config.get("image_size"),
            "epochs_trained": metrics.get("epoch"), "wall_time_s": metrics.get("wall_time_s"),
            "checkpoint": recorded, "reused_from": str(reused_from) if reused_from else None,
            "export_path": f"{recorded}/{layout.EXPORT_DIR}" if export_dir.exists() else None,
            "baselines": {row["baseline"]: row for row in baselines}}
    (exp_dir / layout.TEACHER_JSON).write_text(json.dumps(info, indent=2))
    print(f"teacher: {info['model']} val_acc={info['val_acc']:.4f}  nonzero_params={info['nonzero_params']:,}",
          flush=True)
    model.cpu()
    teacher_model = {"config": config, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    return info, logits, teacher_model


def teacher_baselines(model: Any, cfg: Any, view: Any, metrics: dict[str, Any], teacher_dir: Path, *,
                      recorded: str) -> list[dict[str, Any]]:
    """The dense teacher as a user would ship it first, measured like a trial: fp32 (teacher/export,
    model.onnx) and int8 PTQ with the default calibration (teacher/export_int8, model.int8.onnx),
    calibrated and validated on `view`, the teacher's own view of the data (teachers.teacher_splits).
    Each is exported once and read back from its manifest afterwards; an int8 export that fails is
    left out with a one-line note (the search goes on)."""
    from raytune_ft.search import trial

    rows = []
    for name, folder, quantize in (("teacher_fp32", layout.EXPORT_DIR, False),
                                   ("teacher_int8", layout.INT8_EXPORT_DIR, True)):
        directory = teacher_dir / folder
        if not (directory / layout.MANIFEST).exists():
            if not quantize:
                continue  # teacher/export is written by obtain_teacher
            print("teacher: int8 baseline (post-training static quantization)", flush=True)
            try:
                trial.export_and_measure(model, cfg, view, metrics, directory, quantize=True)
            except ExportError as err:
                print(f"teacher: no int8 baseline: {err}", flush=True)
                continue
        manifest = json.loads((directory / layout.MANIFEST).read_text())
        measured = {**metrics, **manifest["metrics"]} if not quantize else manifest["metrics"]
        rows.append({"baseline": name, **{k: measured.get(k) for k in BASELINE_METRICS},
                     "file": f"{recorded}/{folder}/{manifest.get('deployed', layout.ONNX_FILE)}"})
    return rows


def students_data_config(space) -> Any:
    """The config the trials' data and the test split are decoded with (teachers.data_config)."""
    from raytune_ft.train import teachers

    choices = next((tuple(p.choices) for p in space.params if p.name == "model" and p.type == "categorical"), ())
    return teachers.data_config(space.fixed, choices)


def run_search(space, where: Location, *, address: str | None = None, dashboard_host: str | None = None,
               resume: bool = False):
    """Start Ray (or join `address`), obtain the teacher, run the trials, or continue them (`resume`);
    returns (Tune's ResultGrid, teacher info, the trials' inputs)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from offline machines
    # Every epoch checkpoints (num_to_keep=1) and forces a state snapshot; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Size objectives measured on the exported model (model_bytes, latency_ms_*) exist only in a
    # trial's final report; the searcher reads only that one.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    import optuna
    import ray
    from ray import tune

    from raytune_ft import data as data_mod
    from raytune_ft.config import TrialConfig
    from raytune_ft.data import parquet
    from raytune_ft.search import mo_asha, planned, progress, tracking, trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp_dir = where.local
    exp_dir.mkdir(parents=True, exist_ok=True)
    progress.begin(exp_dir / layout.PROGRESS_JSONL)  # every time-left estimate, recorded (progress.py)
    # the trials' fixed settings: a two-stage search's first stage trains on a subset (fidelity.py);
    # the teacher and the test split are not the trials' and keep all the data
    trial_fixed = {**space.fixed, "data_fraction": space.search.data_fraction} if space.search.data_fraction < 1 \
        else space.fixed
    (exp_dir / layout.SPACE_JSON).write_text(json.dumps(
        {"space_file": space.path, "fixed": trial_fixed, "teacher_overrides": space.teacher_overrides,
         "teacher_checkpoint": space.teacher_checkpoint, "search": space.search.__dict__,
         "objectives": space.objectives, "params": [p.name for p in space.params]}, indent=2, default=str))
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("raytune_ft.search: warning: RAY_AUTH_MODE=disabled turns Ray's token authentication off: "
              "anyone who can reach the cluster's ports can run code on it", file=sys.stderr, flush=True)
    if not ray.is_initialized():
        dashboard = {"include_dashboard": dashboard_host is not None}
        if dashboard_host is not None:
            dashboard["dashboard_host"] = dashboard_host
            if dashboard_host not in ("127.0.0.1", "localhost", "::1"):
                print(f"raytune_ft.search: warning: the dashboard listens on {dashboard_host}: whoever "
                      "reaches that address can submit jobs (code) to this cluster", file=sys.stderr, flush=True)
        # no --address: a fresh local cluster, never a stale one recorded in /tmp/ray (Ray's default
        # for address=None), except under `ray job submit`, which sets RAY_ADDRESS for its driver
        ray.init(address=address or (None if os.environ.get("RAY_ADDRESS") else "local"), log_to_driver=True,
                 **dashboard)
    if address in (None, "local") and not {"workers_per_trial", "cpus_per_worker", "cpus_per_trial",
                                                 "gpus_per_worker"} & {p.name for p in space.params}:
        # a local cluster does not grow: refuse a trial that could never be placed
        available = ray.cluster_resources()
        missing = (trial.missing_resources(TrialConfig.from_dict(space.fixed), available)
                   or trial.missing_data_cpus(dataclasses.replace(space.teacher_config(), workers_per_trial=1),
                                              available)  # the teacher trains in one process
                   or trial.missing_data_cpus(TrialConfig.from_dict(space.fixed), available,
                                              concurrent=space.search.max_concurrent))
        if missing:
            raise UserError(f"{space.path}: {missing}; lower them or add resources")
    # The students' data (a searched model: normalized for the default one, trials convert it,
    # teachers.student_view); the teacher makes its own view of the same rows (obtain_teacher).
    # parquet: validation in memory, the training split streams in each trial (Ray Data)
    student_cfg = students_data_config(space)
    data = parquet.parquet_splits(student_cfg) if student_cfg.dataset == "parquet" \
        else data_mod.load_splits(student_cfg)
    data = data.without_test()  # trials, the teacher and the sampler never see the test split (holdout.py)
    if data.skipped:  # what on_bad_image: skip left out; each trial reports the count as `skipped`
        (exp_dir / layout.SKIPPED_TXT).write_text("".join(f"{line}\n" for line in data.skipped))
        print(f"on_bad_image: skip: left out {len(data.skipped)} file(s)/row(s), listed in {layout.SKIPPED_TXT}",
              flush=True)
        where.upload(layout.SKIPPED_TXT)
    teacher, logits, teacher_model = obtain_teacher(space, data, exp_dir, where.uri if where.remote else None,
                                                    reuse_root=None if where.remote else exp_dir.parent)
    baselines = [layout.BASELINES_CSV] if (exp_dir / layout.BASELINES_CSV).exists() else []
    where.upload(layout.SPACE_JSON, layout.TEACHER_DIR, layout.TEACHER_JSON, *baselines)  # a resumed run finds them

    # MO-ASHA ranks every objective at every epoch: measure the exported sizes cheaply each epoch,
    # and report the planned final ones (planned_<m>, planned.py), which it ranks where present
    sizes = (*trial.EPOCH_SIZE_METRICS, *planned.PLANNED_METRICS)
    epoch_metrics = tuple(m for m in space.objectives if m in sizes) if space.scheduler else ()
    trial_inputs = dict(fixed=trial_fixed, data=data, teacher_logits=logits, teacher_model=teacher_model,
                        epoch_metrics=epoch_metrics, checkpoint_every=space.search.checkpoint_every)
    trainable = tune.with_resources(tune.with_parameters(trial.tune_trial, **trial_inputs),
                                    trial.resources_for(space.fixed))
    if resume and tune.Tuner.can_restore(where.uri):
        print(f"resuming {where.uri}", flush=True)
        resume_into(exp_dir)  # the searcher was pickled naming its first folder (moved, or a new s3 staging copy)
        tuner = tune.Tuner.restore(where.uri, trainable, resume_errored=True)  # callbacks are restored too
    else:
        metrics, modes = space.metric_and_mode()
        searcher = make_searcher(space, exp_dir, teacher_val_acc=teacher.get("val_acc"))
        scheduler = None
        if space.scheduler:
            settings = space.scheduler
            scheduler = mo_asha.MOASHAScheduler(
                metrics, modes, max_t=settings.max_t or space.max_epochs(), grace_period=settings.grace_period,
                reduction_factor=settings.reduction_factor, time_attr="epoch",
                state_path=str(exp_dir / layout.MO_ASHA_STATE))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=space.search.num_samples,
                                        reuse_actors=True, trial_dirname_creator=trial.trial_dirname),
            run_config=tune.RunConfig(
                name=exp_dir.name,
                storage_path=where.storage_path,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=space.search.keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=space.search.max_failures),
                verbose=0,  # progress comes from trial.Progress and the trials' epoch lines
                callbacks=[trial.Progress(space.search.num_samples, space.objectives, teacher=teacher,
                                          epochs=space.fixed.get("epochs", TrialConfig().epochs),
                                          plan=progress.plan_for(space)),
                           *tracking.logger_callbacks(space.search.callbacks, exp_dir)],  # mlflow, wandb, ...
            ),
        )
    try:
        return tuner.fit(), teacher, trial_inputs
    finally:
        resume_into(None)


def write_results(trials, space, where: Location, teacher: dict[str, Any]):
    from raytune_ft import pareto, report

    exp_dir = where.local
    trials.to_csv(exp_dir / layout.TRIALS_CSV, index=False)
    front = pareto.pareto_front(trials, space.objectives)  # of a two-stage search: its full-data trials
    front.to_csv(exp_dir / layout.PARETO_CSV, index=False)
    report.plot_pareto(trials, space.objectives, exp_dir / layout.PARETO_PNG, teacher=teacher,
                       baselines=list((teacher.get("baselines") or {}).values()),
                       title=f"{exp_dir.name}: {len(trials)} trials, {len(front)} on the front")
    tracked = [layout.MLFLOW_DB] if (exp_dir / layout.MLFLOW_DB).exists() else []
    where.upload(layout.TRIALS_CSV, layout.PARETO_CSV, layout.PARETO_PNG, layout.OPTUNA_TRIALS_CSV,
                 layout.OPTUNA_JOURNAL, *tracked)
    return front


def main(argv: list[str] | None = None) -> int:
    """`python -m raytune_ft.search`: the flags, then `run_experiment`; bad input exits with status 2
    and one line on stderr."""
    args = parse_args(argv)
    try:
        run_experiment(**vars(args))
    except UserError as err:
        print(f"raytune_ft.search: error: {err}", file=sys.stderr)
        return 2
    return 0


def run_experiment(space: str | os.PathLike | Mapping[str, Any] = "quickstart", *, overrides: Sequence[str] = (),
                   num_samples: int | None = None, max_concurrent: int | None = None, seed: int | None = None,
                   storage_path: str | None = None, name: str | None = None, address: str | None = None,
                   dashboard_host: str | None = None, confirm: int = 1, resume: bool = False) -> Location:
    """One search, end to end: check the inputs (prepare), run the trials (run_search), re-time and
    test the deployed files, write the results and print the summary; returns where the experiment
    is. The arguments are the command line's flags (SearchOptions). Raises UserError on bad input,
    before Ray starts for everything that can be checked then."""
    # before Ray is imported: repeated worker lines folded except the trials' own (which differ only
    # in numbers); off a terminal, no progress bars, colour codes or pid prefixes (console.py)
    from raytune_ft.search import console

    console.configure()
    options = SearchOptions(space=space, overrides=tuple(overrides), num_samples=num_samples,
                            max_concurrent=max_concurrent, seed=seed, storage_path=storage_path, name=name,
                            address=address, dashboard_host=dashboard_host, confirm=confirm, resume=resume)
    space, where = prepare(options)
    started = time.perf_counter()
    print(f"experiment: {where.uri}\nspace: {space.path} ({space.search.num_samples} trials, "
          f"sampler {space.search.sampler}, seed {space.search.seed})", flush=True)
    _, teacher, trial_inputs = run_search(space, where, address=address, dashboard_host=dashboard_host, resume=resume)
    from raytune_ft.report import results as results_mod

    # Tune's files are complete once fit() returned
    trials = results_mod.load_experiment(where.uri).trials if where.remote else results_mod.read_trials(where.local)
    if space.search.data_fraction < 1:
        from raytune_ft.search import fidelity

        trials = fidelity.second_stage(trials, space, where.local, trial_inputs)
        where.upload(layout.STAGE2_DIR, layout.FIDELITY_CSV, layout.FIDELITY_JSON)
    from raytune_ft.deploy import remeasure

    trials, teacher = remeasure.after_search(trials, teacher, space.fixed, where.local, where.upload)
    front = write_results(trials, space, where, teacher)
    front, teacher, confirmed = honest_results(trials, front, space, where, teacher, trial_inputs, confirm)

    from raytune_ft import pareto
    from raytune_ft.report import summary
    from raytune_ft.search import progress

    counts = trials["status"].value_counts().to_dict()
    notes = [f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}) in "
             f"{(time.perf_counter() - started) / 60:.1f} min"]
    int8 = (teacher.get("baselines") or {}).get("teacher_int8")
    notes += [pareto.dominance_line(front, space.objectives, int8, "the int8 teacher")] if int8 is not None else []
    print("\n" + summary.closing_summary(front, teacher, space.objectives, where.uri, notes=notes))
    progress.finish()
    where.upload(layout.PROGRESS_JSONL)
    if confirmed is not None:
        from raytune_ft import report

        print(f"\nconfirmed with {confirm} seeds per front recipe ({where.uri}/confirmed.csv):\n"
              + report.format_front(confirmed, list(confirmed.columns)))
    return where


def honest_results(trials, front, space, where: Location, teacher: dict[str, Any], trial_inputs: dict[str, Any],
                   confirm: int):
    """After the search, once: the test split (holdout.py) on the deployed files of the front and the
    teacher (pareto.csv, pareto.png and teacher.json get test_acc with its Wilson 95 % interval,
    test_front.json the McNemar pairs), then `confirm` - 1 more seeds per front recipe (confirmed.csv).
    Returns (front, teacher, confirmed table or None)."""
    from raytune_ft import models, report
    from raytune_ft.deploy import holdout
    from raytune_ft.search import confirmation
    from raytune_ft.train import teachers

    exp_dir, cfg = where.local, space.teacher_config()
    started = time.perf_counter()
    student_cfg = students_data_config(space)
    test = holdout.load_test(student_cfg)  # decoded as the trials' data was; the teacher's view is its own
    views: dict[str, Any] = {student_cfg.model: test}
    mean, std = models.input_config(student_cfg.model).mean, models.input_config(student_cfg.model).std

    def test_for(model: str) -> Any:
        """The test images as a front point's architecture was trained on them: the same decode
        (resize, crop) as the trials' data, normalized for the architecture (as student_view)."""
        if model and model not in views and test is not None:
            views[model] = holdout.TestSplit(teachers.renormalize(test.x, mean, std, model), test.y)
        return views.get(model) or test

    if test is None:
        print("test: no test split (test_fraction 0 and none in the dataset): no test_acc", flush=True)
    else:
        print(f"test: {len(test)} held-out images, evaluated once on each front point's deployed file", flush=True)
        front, correct = holdout.evaluate_front(front, test_for, threads=cfg.worker_cpus)
        teacher_test = test if cfg.model == student_cfg.model and cfg.image_size == student_cfg.image_size \
            else holdout.load_test(cfg)
        front.to_csv(exp_dir / layout.PARETO_CSV, index=False)
        teacher_dir = exp_dir / layout.TEACHER_DIR
        if (teacher_dir / layout.EXPORT_DIR).is_dir():
            teacher = {**teacher, **holdout.evaluate_export(teacher_dir / layout.EXPORT_DIR, teacher_test,
                                                            threads=cfg.worker_cpus)[0]}
            # the baselines a user would ship first (fp32 and int8 teacher files), on the same test images
            folders = {"teacher_fp32": layout.EXPORT_DIR, "teacher_int8": layout.INT8_EXPORT_DIR}
            baselines = {name: {**row, **holdout.evaluate_export(teacher_dir / folders[name], teacher_test,
                                                                 threads=cfg.worker_cpus)[0]}
                         for name, row in (teacher.get("baselines") or {}).items()}
            teacher = {**teacher, "baselines": baselines}
            (exp_dir / layout.TEACHER_JSON).write_text(json.dumps(teacher, indent=2))
            if baselines:
                import pandas as pd

                pd.DataFrame(list(baselines.values())).to_csv(exp_dir / layout.BASELINES_CSV, index=False)
        pairs = holdout.indistinguishable(correct)
        (exp_dir / layout.TEST_FRONT_JSON).write_text(pairs.to_json(orient="records", indent=2))
        marked = trials.merge(front[["trial_id", *holdout.TEST_COLUMNS]], on="trial_id", how="left")
        report.plot_pareto(marked, space.objectives, exp_dir / layout.PARETO_PNG, teacher=teacher,
                           baselines=list((teacher.get("baselines") or {}).values()),
                           title=f"{exp_dir.name}: {len(trials)} trials, {len(front)} on the front "
                           "(bars: test_acc, Wilson 95 %)")
        where.upload(layout.PARETO_CSV, layout.PARETO_PNG, layout.TEACHER_JSON, layout.TEST_FRONT_JSON,
                     *([layout.BASELINES_CSV] if (exp_dir / layout.BASELINES_CSV).exists() else []))
        print(f"test: {len(front)} front point(s) and the teacher evaluated in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    confirmed = None
    if confirm > 1 and len(front):
        runs = confirmation.confirm_runs(front, [p.name for p in space.params], space.fixed, confirm)
        print(f"confirm: {len(runs)} more runs ({confirm - 1} seeds x {len(front)} front recipes)", flush=True)
        done = confirmation.run_confirmation(runs, exp_dir, trial_inputs, space.fixed)
        confirmed = confirmation.summarize_confirmation(front, done, space.objectives, test, threads=cfg.worker_cpus)
        confirmed.to_csv(exp_dir / layout.CONFIRMED_CSV, index=False)
        where.upload(layout.CONFIRMED_CSV, layout.CONFIRM_DIR)
    return front, teacher, confirmed


if __name__ == "__main__":
    sys.exit(main())
