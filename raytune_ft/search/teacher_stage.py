"""The teacher stage of a search: the dense teacher fitted once (or loaded, or reused from another
experiment in the same storage folder, teacher_reuse.py), exported and measured as the fp32 and int8
baselines a user would ship first, and the data config the students' data is decoded with."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from raytune_ft import layout
from raytune_ft.errors import ExportError
from raytune_ft.search import teacher_reuse
from raytune_ft.search.storage import UserError

TRIAL_METRICS = ("val_acc", "val_loss", "params", "nonzero_params", "sparsity", "model_bytes",
                 "model_bytes_compressed", "macs", "flops", "latency_ms_b1", "latency_ms_b32",
                 "latency_ms_b1_iqr", "latency_ms_b32_iqr", "train_loss", "task_loss", "kd_loss", "l2sp_loss")

BASELINE_METRICS = ("val_acc", "val_acc_fp32", "params", "nonzero_params", "model_bytes", "model_bytes_compressed",
                    "macs", "latency_ms_b1", "latency_ms_b1_iqr", "latency_ms_b32", "latency_ms_b32_iqr")




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

    from raytune_ft import checkpoints, models, train
    from raytune_ft.config import TrialConfig
    from raytune_ft.search import trial
    from raytune_ft.train import teachers

    teacher_dir = exp_dir / layout.TEACHER_DIR
    logits_path = teacher_dir / layout.TRAIN_LOGITS
    cfg = space.teacher_config()
    reused_from = None
    if not space.teacher_checkpoint and not (teacher_dir / layout.CHECKPOINT_META).exists() and reuse_root:
        reused_from = teacher_reuse.find_fitted(reuse_root, cfg.to_dict(), exclude=exp_dir)
        if reused_from is not None:  # fitted once per dataset: the same data and teacher config in this storage
            print(f"teacher: reusing the teacher fitted by experiment {reused_from.parent.name!r} (the same data "
                  "and teacher config in this storage folder; change the teacher section or give "
                  "teacher.checkpoint to fit or load another)", flush=True)
            teacher_reuse.copy_in(reused_from, teacher_dir)
    source = space.teacher_checkpoint or (teacher_dir if (teacher_dir / layout.CHECKPOINT_META).exists() else None)
    if source is not None:
        print(f"teacher: loading {source}", flush=True)
        try:
            teachers.check_checkpoint_classes(source, data.class_names)
        except models.ModelError as err:
            raise UserError(str(err)) from err
        model, meta = checkpoints.load_checkpoint(source)
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
        after = plan_trials(space, cfg, data, view)
        try:
            out = trial.fit_teacher_remote(cfg, view, after)
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
        checkpoints.save_checkpoint(teacher_dir, model, config=config, class_names=data.class_names, metrics=metrics)
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




def plan_trials(space, cfg: Any, data: Any, view: Any) -> Any:
    """The trials after the teacher, planned from one timed step of each model (forecast.plan_after_teacher),
    so the teacher's lines estimate the whole search; None (the teacher's own time left only) when
    the data has no validation images to time on, the teacher trains on a GPU (timed on this CPU the
    steps would not say what the GPUs will take) or the timing fails (a one-line note)."""
    from raytune_ft.search import forecast

    if cfg.use_gpu or not len(data.x_val) or not len(view.x_val):
        return None
    train_rows = len(data.y_train) if len(data.y_train) else len(data.y_val)  # parquet: the training split streams
    try:
        return forecast.plan_after_teacher(space, cfg, view.x_val, data.x_val, data.num_classes,
                                           train_rows, len(data.y_val))
    except Exception as err:  # noqa: BLE001  (an estimate must never stop the search)
        print(f"teacher: time left of the teacher only (the trials could not be timed: {type(err).__name__}: "
              f"{err})", flush=True)
        return None


def students_data_config(space) -> Any:
    """The config the trials' data and the test split are decoded with (views.data_config)."""
    from raytune_ft.data import views

    choices = next((tuple(p.choices) for p in space.params if p.name == "model" and p.type == "categorical"), ())
    return views.data_config(space.fixed, choices)
