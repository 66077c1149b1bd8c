"""The run directory: its file names (`files`) and the one way to open a run (`Run`)."""
