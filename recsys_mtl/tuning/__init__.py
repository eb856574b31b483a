"""Optuna tuning of run configs: search spaces, per-epoch objectives, studies and workers."""
