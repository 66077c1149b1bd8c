"""Runs things: CLI, data import and preparation, Ray Train job, checkpoints, metrics, evaluation."""
