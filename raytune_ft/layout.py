"""The experiment folder's layout: every file and folder name an experiment, a trial checkpoint, an
exported model or a Parquet dataset holds, in one place. Writers and readers (search, trial glue,
export, results, analysis, the Python API) take the names from here.

    <storage>/<name>/                      one experiment
        space.json  space.yaml  trials.csv  pareto.csv  pareto.png  report.html  optuna_trials.csv
        optuna_journal.log  mlflow.db  skipped.txt
        teacher.json  teacher_gate.json  baselines.csv  test_front.json
        teacher/                           the dense teacher: model.pt  checkpoint.json  train_logits.pt
                                           teacher_key.json  export/ (fp32)  export_int8/ (int8 PTQ)
        confirmed.csv  confirm/  mo_asha_state.pkl  stage2/  fidelity.csv  fidelity.json  progress.jsonl
        <Tune's trial folders>/            params.json  result.json  error.txt  error.pkl  checkpoint_*/
    <trial>/checkpoint_*/                  model.pt  checkpoint.json, and training_state.pt (to resume)
                                           or export/ (the last one)
    export/                                model.pt2  model.onnx  model.int8.onnx  manifest.json
    <analyze --export-best folder>/        index.csv  index.json  <k>_<trial_id>/
    <Parquet dataset>/                     dataset.json  train/  val/  test/ (python -m raytune_ft.to_parquet)
"""

from __future__ import annotations

# the experiment folder
SPACE_JSON = "space.json"  # the resolved space: file, fixed settings, teacher overrides
SPACE_YAML = "space.yaml"  # a space given as a dict (the Python API), written as the file it names
TRIALS_CSV = "trials.csv"  # one row per trial: status, config, metrics, checkpoint
PARETO_CSV = "pareto.csv"  # the front: non-dominated, fully trained trials
PARETO_PNG = "pareto.png"
REPORT_HTML = "report.html"
OPTUNA_TRIALS_CSV = "optuna_trials.csv"  # the sampler's study as a table
OPTUNA_JOURNAL = "optuna_journal.log"  # the sampler's study in Optuna's JournalStorage (optuna.load_study)
MLFLOW_DB = "mlflow.db"  # search.callbacks=[mlflow]: MLflow's tracking store, one run per trial (SQLite)
SKIPPED_TXT = "skipped.txt"  # on_bad_image: skip: the files/rows left out, one a line
TEACHER_JSON = "teacher.json"  # the dense teacher's config and metrics
TEACHER_DIR = "teacher"  # its checkpoint and exported files
BASELINES_CSV = "baselines.csv"  # the dense teacher as a user would ship it (fp32, int8)
TRAIN_LOGITS = "train_logits.pt"  # in teacher/: its logits on the training set (distillation)
INT8_EXPORT_DIR = "export_int8"  # in teacher/: the dense teacher quantized (int8 PTQ), next to its export/
TEACHER_KEY_JSON = "teacher_key.json"  # in teacher/: the hash of its config that another experiment reuses it by
TEACHER_GATE_JSON = "teacher_gate.json"  # whether distillation was searched, and why (search/gate.py)
TEST_FRONT_JSON = "test_front.json"  # test-split accuracy of every front point and baseline
CONFIRMED_CSV = "confirmed.csv"  # confirmation runs (other seeds) of the front's recipes
CONFIRM_DIR = "confirm"  # the confirmation runs' Tune experiment
MO_ASHA_STATE = "mo_asha_state.pkl"  # the MO-ASHA scheduler's rungs (resume)
STAGE2_DIR = "stage2"  # a data-size fidelity search: the full-data retraining's Tune experiment
FIDELITY_CSV = "fidelity.csv"  # each promoted recipe: subset and full-data metrics and ranks
FIDELITY_JSON = "fidelity.json"  # how well the subset ranking predicted the full-data one
PROGRESS_JSONL = "progress.jsonl"  # every time-left estimate, one JSON a line (search/progress.py)

# Ray Tune's files in each trial folder (Tune writes them; results.py reads them)
TUNE_PARAMS_JSON = "params.json"  # the searched values, exactly as sampled, written when the trial starts
TUNE_RESULT_JSON = "result.json"  # one line per reported epoch
TUNE_ERROR_TXT = "error.txt"  # a failed trial's traceback
TUNE_ERROR_PKL = "error.pkl"  # the same exception, pickled

# a checkpoint folder (a trial's, or the dense teacher's teacher/): checkpoints.save_checkpoint
CHECKPOINT_WEIGHTS = "model.pt"  # the state dict, plain tensors (torch.load(weights_only=True))
CHECKPOINT_META = "checkpoint.json"  # the resolved config, class names and metrics

# a trial's checkpoints
TRAINING_STATE = "training_state.pt"  # in every checkpoint but the last: train.training_state
EXPORT_DIR = "export"  # in a trial's final checkpoint: the exported model

# an exported model (export/)
MODEL_FILE = "model.pt2"  # torch.export program
ONNX_FILE = "model.onnx"  # fp32 ONNX
INT8_FILE = "model.int8.onnx"  # int8 QDQ ONNX (quantization family)
MANIFEST = "manifest.json"  # what the file is, its preprocessing and its measured metrics

# analyze --export-best DIR: the copied front models
EXPORT_INDEX_CSV = "index.csv"  # one row per copied model: its folder, trial, metrics
EXPORT_INDEX_JSON = "index.json"  # the same rows as JSON

# a Parquet dataset folder (python -m raytune_ft.to_parquet), next to its train/ val/ test/ shard folders
PARQUET_META = "dataset.json"  # class names and split sizes

# a trial's status in trials.csv
COMPLETED, FAILED, EARLY_STOPPED, INCOMPLETE = "completed", "failed", "early-stopped", "incomplete"
