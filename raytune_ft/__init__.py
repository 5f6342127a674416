"""raytune_ft: search fine-tuning recipes (regularization x distillation x pruning) for the
smallest pretrained image classifier that is still accurate enough, with Ray Tune + Optuna."""

__version__ = "0.1.0"
