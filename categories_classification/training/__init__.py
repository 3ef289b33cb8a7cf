"""The training stage: read and validate a client's file, size and fit its model, evaluate it,
log and register it in MLflow, and let the promotion gate decide whether it becomes champion.

Entry point: :func:`categories_classification.training.trainer.train_model`.
"""
