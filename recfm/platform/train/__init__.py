"""The Ray Train job: driver, per-worker loop, data, checkpoints, metrics, validation."""
