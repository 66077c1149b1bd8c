"""The user foundation model: event tokens, TorchRec tables, transformer, objectives."""
