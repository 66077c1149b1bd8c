"""A run directory, opened: what every stage and consumer reads from a run, read the same way.

The run layer sits below the model and the areas that use it: it hands out the raw things a run holds (its
config, the model spec, checkpoint paths and weights, the prepared data, the catalog and histories), and each
area builds its own objects from them (the FM in `recfm.fm.load`, the student in `recfm.serving_exports`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import OmegaConf

from recfm.data.config import DataConfig
from recfm.run.files import BEST_LINK, CONFIG_FILE, DATA_DIR, FINAL_LINK, MODEL_FILE

if TYPE_CHECKING:  # the data modules (pandas, pyarrow) load when a run's data is first read
    from recfm.data.catalog import Catalog
    from recfm.data.dataset import Sequences

RUNS_DIR = Path("runs")
MODEL_KEY = "model"  # a checkpoint's model weights, beside "optim"
Section = TypeVar("Section")


def create_run_dir(path: Path, config_yaml: str) -> Path:
    """A new run directory at `path` with its resolved config saved in it (refused where a run already trained)."""
    path = Path(path)
    if (path / "ray").exists():
        raise FileExistsError(f"{path} already holds a training run: continue it with --resume {path}, or pick "
                              f"another run_dir")
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(config_yaml)
    return path


def default_run_dir(name: str) -> Path:
    return RUNS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run(root: Path = RUNS_DIR) -> Path | None:
    """The most recently started run directory under `root` (the one a bare --resume continues)."""
    runs = [p for p in Path(root).glob("*") if (p / CONFIG_FILE).exists()]
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime, default=None)


@dataclass
class Run:
    directory: Path
    config: dict[str, Any]  # config.yaml as written: sections of plain values
    spec: dict  # model.json: what rebuilds the FM (architecture, tokenizer, facet sizes)

    @classmethod
    def open(cls, directory: Path | None = None) -> Run:
        """A run directory written by `recfm train` (default: the newest under runs/)."""
        directory = Path(directory) if directory else latest_run(RUNS_DIR)
        if directory is None:
            raise FileNotFoundError("no trained run under runs/: run `make demo` or `recfm train` first, or pass "
                                    "--run DIR")
        if not (directory / CONFIG_FILE).exists() or not (directory / MODEL_FILE).exists():
            raise FileNotFoundError(f"{directory} is not a recfm training run (no {CONFIG_FILE} or {MODEL_FILE})")
        if not (directory / BEST_LINK).exists():
            raise FileNotFoundError(f"{directory} has no best checkpoint: its training did not finish")
        return cls(directory.resolve(), OmegaConf.to_container(OmegaConf.load(directory / CONFIG_FILE)),
                   json.loads((directory / MODEL_FILE).read_text()))

    def section(self, name: str, cls: type[Section]) -> Section:
        """A config section as its dataclass `cls` (settings the class does not know are left out)."""
        raw = self.config.get(name) or {}
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    @cached_property
    def prepared(self) -> Path:
        """The run's own copy of its prepared data (runs from before there was one: the data cache's)."""
        if (self.directory / DATA_DIR).is_dir():
            return self.directory / DATA_DIR
        from recfm.data.pipeline import ensure_prepared

        return ensure_prepared(self.section("data", DataConfig), log=lambda _: None)

    @cached_property
    def sequences(self) -> Sequences:
        from recfm.data.dataset import Sequences

        return Sequences.load(self.prepared)

    @cached_property
    def catalog(self) -> Catalog:
        from recfm.data.catalog import Catalog

        return Catalog.load(self.prepared)

    @cached_property
    def users(self) -> dict[str, int]:
        import pyarrow.parquet as pq

        ids = pq.read_table(self.prepared / "users.parquet").column("user_id").to_pylist()
        return {str(u): n for n, u in enumerate(ids)}

    def checkpoint(self, name: str = FINAL_LINK) -> Path:
        path = self.directory / name
        if not path.exists():  # runs from before the refit step have only the best checkpoint
            path = self.directory / BEST_LINK
        return path

    def load_weights(self, module, name: str = FINAL_LINK) -> None:
        """Loads checkpoint `name` (sharded by torch.distributed.checkpoint, any world size) into `module`, a
        plain unsharded copy of what was trained, in this one process."""
        load_weights(self.checkpoint(name), module)



def keep_data(prepared: Path, run_dir: Path) -> Path:
    """Puts the prepared data a run trains on into the run (`data/`), file by file as hard links where the file
    system allows (the cache and the runs usually share one), copies elsewhere; cached baseline results stay
    behind. Returns the run's copy; an existing one is kept."""
    out = Path(run_dir) / DATA_DIR
    if out.is_dir():
        return out
    partial = out.with_name(DATA_DIR + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for source in sorted(Path(prepared).rglob("*")):
        if source.is_dir() or source.name.startswith("baselines-"):
            continue
        target = partial / source.relative_to(prepared)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system, or no hard links there
            shutil.copy2(source, target)
    partial.rename(out)  # complete or absent, never half there
    return out


def load_weights(directory: Path, module) -> None:
    """A checkpoint's model weights into a plain (unsharded) copy of the trained module, in one process."""
    import torch.distributed.checkpoint as dcp

    if not (Path(directory) / ".metadata").exists():
        raise FileNotFoundError(f"{directory} is not a recfm checkpoint (no .metadata)")
    state = {MODEL_KEY: module.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        dcp.load(state, checkpoint_id=str(directory), no_dist=True)
    module.load_state_dict(state[MODEL_KEY])
