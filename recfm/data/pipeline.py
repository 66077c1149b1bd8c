"""From a data config to prepared sequences: import and prepare once, then reuse while nothing changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from recfm.data.config import DataConfig
from recfm.data.events import import_events
from recfm.data.importing import summary
from recfm.data.movielens import import_movielens
from recfm.data.prepare import PreparedInfo, describe, prepare
from recfm.data.schema import DatasetInfo
from recfm.data.sequences import import_sequences

_IMPORT_KEYS = ("source", "format", "mode", "id_type", "mapping", "ts_unit", "items")
_PREPARE_KEYS = ("split", "val_cutoff", "test_cutoff", "actions", "cold_items", "cold_seed", "min_item_events")
PREPARE_VERSION = 2  # bumped when prepare's output changes, so cached outputs are rebuilt


def import_source(cfg: DataConfig, out: Path) -> DatasetInfo:
    """Runs the importer that `cfg.format` names (not "imported", which needs none)."""
    if cfg.format == "movielens":
        return import_movielens(Path(cfg.source), out, cfg.mode)
    if cfg.format == "sequences":
        return import_sequences(Path(cfg.source), out, cfg.mode, cfg.id_type)
    return import_events(Path(cfg.source), out, cfg.mode, dict(cfg.mapping), cfg.ts_unit, cfg.id_type,
                         Path(cfg.items) if cfg.items else None)


def ensure_prepared(cfg: DataConfig, log: Callable[[str], None] = print) -> Path:
    """The prepared-data directory for `cfg`, importing and preparing only what is missing or stale."""
    settings = asdict(cfg)
    import_params = {k: settings[k] for k in _IMPORT_KEYS} | {"files": _fingerprint(cfg)}
    prepare_params = {k: settings[k] for k in _PREPARE_KEYS} | {"version": PREPARE_VERSION}
    base = Path(cfg.cache_dir) / f"{Path(cfg.source).name.split('.')[0]}-{_digest(import_params)}"
    imported = base / "imported"
    prepared = base / f"prepared-{_digest(prepare_params)}"
    params = {"import": import_params, "prepare": prepare_params}
    try:
        if PreparedInfo.load(prepared).params == json.loads(json.dumps(params)):
            return prepared
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        pass
    if cfg.format == "imported":  # already in recfm's schema (e.g. `recfm data synth` output): prepare only
        imported = Path(cfg.source)
        DatasetInfo.load(imported)  # a clear error if it is not an imported dataset
    elif _reusable(imported, cfg):
        log(f"reusing the import in {imported}")
    else:
        log(f"importing {cfg.source} ({cfg.format}, {cfg.mode})")
        shutil.rmtree(imported, ignore_errors=True)
        log(summary(import_source(cfg, imported)))
    info = prepare(imported, prepared, cfg.split, cfg.val_cutoff, cfg.test_cutoff, cfg.actions,
                   cold_items=cfg.cold_items, cold_seed=cfg.cold_seed,
                   min_item_events=cfg.min_item_events)
    info.params = params
    info.save(prepared)
    log(describe(info))
    return prepared


def _reusable(imported: Path, cfg: DataConfig) -> bool:
    try:
        return DatasetInfo.load(imported).source == str(cfg.source)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return False


def _fingerprint(cfg: DataConfig) -> list:
    """Name, size and modification time of every source file: a changed file invalidates the cache."""
    paths = [Path(cfg.source)] + ([Path(cfg.items)] if cfg.items else [])
    files = []
    for path in paths:
        for f in sorted(path.iterdir()) if path.is_dir() else [path]:
            if f.is_file():
                stat = f.stat()
                files.append([str(f.resolve()), stat.st_size, stat.st_mtime_ns])
    return files


def _digest(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
