"""Search, similar-items and homepage heads over one unified context."""
