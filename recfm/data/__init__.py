"""Data import, validation, synthetic data, and preparation into sequences and splits."""
