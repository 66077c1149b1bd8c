"""Sharding the foundation model across processes (TorchRec DMP + DDP); kept apart from the unsharded model."""
