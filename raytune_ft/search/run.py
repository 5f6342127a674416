"""The run stage of a search: Ray started (or joined), the teacher obtained, the trials run by Ray
Tune with the space's Optuna sampler and scheduler (`run_search`), the tables and the front written
(`write_results`), then the test split and confirmation runs on the front (`honest_results`)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from raytune_ft import data_fraction, layout
from raytune_ft.report import figures, results
from raytune_ft.search.searcher import make_searcher, resume_into
from raytune_ft.search.storage import Location, UserError
from raytune_ft.search.teacher_stage import obtain_teacher, students_data_config


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
    from raytune_ft.search import console, mo_asha, planned, progress, tracking, trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exp_dir = where.local
    exp_dir.mkdir(parents=True, exist_ok=True)
    progress.begin(exp_dir / layout.PROGRESS_JSONL)  # every time-left estimate, recorded (progress.py)
    # the trials' fixed settings: a two-stage search's first stage trains on a subset (fidelity.py);
    # the teacher and the test split are not the trials' and keep all the data
    trial_fixed = data_fraction.with_fraction(space.fixed, space.search.data_fraction)
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
        # the quiet settings reach workers on other nodes too (console.worker_env); a job submitted
        # with `ray job submit` keeps its own runtime_env
        quiet = console.worker_env() if not os.environ.get("RAY_ADDRESS") else {}
        ray.init(address=address or (None if os.environ.get("RAY_ADDRESS") else "local"), log_to_driver=True,
                 **({"runtime_env": {"env_vars": quiet}} if quiet else {}), **dashboard)
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
    # views.student_view); the teacher makes its own view of the same rows (obtain_teacher).
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
    exp_dir = where.local
    trials.to_csv(exp_dir / layout.TRIALS_CSV, index=False)
    front = results.front(trials, space.objectives)  # of a two-stage search: its full-data trials
    front.to_csv(exp_dir / layout.PARETO_CSV, index=False)
    figures.plot_pareto(trials, space.objectives, exp_dir / layout.PARETO_PNG, teacher=teacher,
                        baselines=list((teacher.get("baselines") or {}).values()),
                        title=f"{exp_dir.name}: {len(trials)} trials, {len(front)} on the front")
    tracked = [layout.MLFLOW_DB] if (exp_dir / layout.MLFLOW_DB).exists() else []
    where.upload(layout.TRIALS_CSV, layout.PARETO_CSV, layout.PARETO_PNG, layout.OPTUNA_TRIALS_CSV,
                 layout.OPTUNA_JOURNAL, *tracked)
    return front




def honest_results(trials, front, space, where: Location, teacher: dict[str, Any], trial_inputs: dict[str, Any],
                   confirm: int):
    """After the search, once: the test split (holdout.py) on the deployed files of the front and the
    teacher (pareto.csv, pareto.png and teacher.json get test_acc with its Wilson 95 % interval,
    test_front.json the McNemar pairs), then `confirm` - 1 more seeds per front recipe (confirmed.csv).
    Returns (front, teacher, confirmed table or None)."""
    from raytune_ft import models
    from raytune_ft.data import views
    from raytune_ft.deploy import holdout
    from raytune_ft.search import confirmation

    exp_dir, cfg = where.local, space.teacher_config()
    started = time.perf_counter()
    student_cfg = students_data_config(space)
    test = holdout.load_test(student_cfg)  # decoded as the trials' data was; the teacher's view is its own
    by_model: dict[str, Any] = {student_cfg.model: test}
    mean, std = models.input_config(student_cfg.model).mean, models.input_config(student_cfg.model).std

    def test_for(model: str) -> Any:
        """The test images as a front point's architecture was trained on them: the same decode
        (resize, crop) as the trials' data, normalized for the architecture (as student_view)."""
        if model and model not in by_model and test is not None:
            by_model[model] = holdout.TestSplit(views.renormalize(test.x, mean, std, model), test.y)
        return by_model.get(model) or test

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
        figures.plot_pareto(marked, space.objectives, exp_dir / layout.PARETO_PNG, teacher=teacher,
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
