"""Training one model with a trial's recipe, plain PyTorch and no Ray: the loop (`loop.fit`), its
batch sources (`batches`), evaluation and BatchNorm recalibration (`evaluation`), the objective
(`losses`) and the distillation teachers (`teachers`). The family contract (`Run`, `Dist`) is one
layer below, in `families.base`.
"""

from __future__ import annotations

from raytune_ft.families.base import BatchSource, Dist, Run
from raytune_ft.train.batches import IterableBatches, TensorBatches
from raytune_ft.train.evaluation import evaluate, predict_logits, recalibrate_batchnorm
from raytune_ft.train.loop import Report, fit, lr_at, measured_dtype, precision, start_run, training_state

__all__ = ["BatchSource", "Dist", "IterableBatches", "Report", "Run", "TensorBatches", "evaluate", "fit", "lr_at",
           "measured_dtype", "precision", "predict_logits", "recalibrate_batchnorm", "start_run", "training_state"]
