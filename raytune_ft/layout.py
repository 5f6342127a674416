"""The experiment folder's layout: every file and folder name an experiment, a trial checkpoint or an
exported model holds, in one place. Writers and readers (search, trial glue, export, results,
analysis, the Python API) take the names from here.

    <storage>/<name>/                      one experiment
        space.json  space.yaml  trials.csv  pareto.csv  pareto.png  report.html  optuna_trials.csv
        optuna_journal.log  mlflow.db
        teacher.json  teacher/  baselines.csv  train_logits.pt  test_front.json
        confirmed.csv  confirm/  mo_asha_state.pkl  stage2/  fidelity.csv  fidelity.json
        <Tune's trial folders>/checkpoint_*/
    <trial>/checkpoint_*/                  training_state.pt (to resume) or export/ (the last one)
    export/                                model.pt2  model.onnx  model.int8.onnx  manifest.json
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
TEACHER_JSON = "teacher.json"  # the dense teacher's config and metrics
TEACHER_DIR = "teacher"  # its checkpoint and exported files
BASELINES_CSV = "baselines.csv"  # the dense teacher as a user would ship it (fp32, int8)
TRAIN_LOGITS = "train_logits.pt"  # the teacher's logits on the training set (distillation)
TEST_FRONT_JSON = "test_front.json"  # test-split accuracy of every front point and baseline
CONFIRMED_CSV = "confirmed.csv"  # confirmation runs (other seeds) of the front's recipes
CONFIRM_DIR = "confirm"  # the confirmation runs' Tune experiment
MO_ASHA_STATE = "mo_asha_state.pkl"  # the MO-ASHA scheduler's rungs (resume)
STAGE2_DIR = "stage2"  # a data-size fidelity search: the full-data retraining's Tune experiment
FIDELITY_CSV = "fidelity.csv"  # each promoted recipe: subset and full-data metrics and ranks
FIDELITY_JSON = "fidelity.json"  # how well the subset ranking predicted the full-data one

# a trial's checkpoints
TRAINING_STATE = "training_state.pt"  # in every checkpoint but the last: train.training_state
EXPORT_DIR = "export"  # in a trial's final checkpoint: the exported model

# an exported model (export/)
MODEL_FILE = "model.pt2"  # torch.export program
ONNX_FILE = "model.onnx"  # fp32 ONNX
INT8_FILE = "model.int8.onnx"  # int8 QDQ ONNX (quantization family)
MANIFEST = "manifest.json"  # what the file is, its preprocessing and its measured metrics

# a trial's status in trials.csv
COMPLETED, FAILED, EARLY_STOPPED, INCOMPLETE = "completed", "failed", "early-stopped", "incomplete"
