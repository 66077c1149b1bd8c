"""Distillation, export, and the embedding store with its push."""
