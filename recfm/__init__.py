"""recfm: a unified foundation-model training platform for recommendations."""

__version__ = "0.1.0"
