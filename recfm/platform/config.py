"""Typed configuration: dataclass defaults <- YAML file <- `key=value` overrides, validated once.

The defaults are the embedded demo (the bundled ml-latest-small), so every command runs with no config
file. `load_config` returns a plain dataclass tree; `to_yaml` is what runs print and save.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data" / "ml-latest-small"
FORMATS = ("movielens", "sequences", "events")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass
class DataConfig:
    source: str = str(DEMO_DATA)  # a MovieLens folder, a sequence file, or event file(s)
    format: str = "movielens"  # movielens | sequences | events
    mode: str = "strict"  # strict: stop at the first bad row; lenient: quarantine bad rows
    id_type: str = "int"  # sequences and events: int or str ids
    mapping: dict[str, str] = field(default_factory=dict)  # events: schema field -> source column
    ts_unit: str = "s"  # events: s | ms | us | ns | iso
    items: str | None = None  # events: an item catalog file (CSV or Parquet)
    split: str = "loo"  # loo | time
    val_cutoff: float | None = None  # time split: a timestamp, or a quantile of event times in (0, 1)
    test_cutoff: float | None = None
    actions: list[str] | None = None  # which actions are interactions; default: the importer's choice
    cache_dir: str = ".cache/data"  # imported and prepared data, reused while source and settings match

    def validate(self) -> None:
        _one_of("data.format", self.format, FORMATS)
        _one_of("data.mode", self.mode, ("strict", "lenient"))
        _one_of("data.split", self.split, ("loo", "time"))
        _one_of("data.id_type", self.id_type, ("int", "str"))
        _one_of("data.ts_unit", self.ts_unit, ("s", "ms", "us", "ns", "iso"))
        if not Path(self.source).exists():
            raise ConfigError(f"data.source: {self.source} does not exist")


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 200])
    baselines: list[str] = field(default_factory=lambda: ["MostPop", "ItemKNN", "EASE"])
    ease_lambdas: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0])
    ease_max_items: int = 40_000  # EASE inverts an items x items matrix: past this it is skipped, and said so
    knn_neighbors: list[int] = field(default_factory=lambda: [20, 50, 100, 200])
    knn_shrinks: list[float] = field(default_factory=lambda: [0.0, 10.0, 100.0])
    batch_size: int = 1024
    seed: int = 0  # tie-breaking order of the ranking

    def validate(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive cut-offs, not {self.ks}")
        if 10 not in self.ks:
            raise ConfigError("eval.ks must include 10: models are selected on NDCG@10")
        for name in self.baselines:
            _one_of("eval.baselines", name, ("MostPop", "ItemKNN", "EASE"))
        if any(lam <= 0 for lam in self.ease_lambdas):
            raise ConfigError("eval.ease_lambdas must be positive")
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size must be at least 1")


@dataclass
class RecfmConfig:
    name: str = "demo"
    run_dir: str | None = None  # default: runs/<name>-<time>
    threads: int = 0  # torch intra-op threads; 0 = all cores
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        for f in fields(self):
            section = getattr(self, f.name)
            if is_dataclass(section):
                section.validate()
        if self.threads < 0:
            raise ConfigError("threads must be 0 (all cores) or more")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RecfmConfig:
    """Defaults, then the YAML file at `path`, then `key=value` overrides; resolved and validated."""
    try:
        merged = OmegaConf.structured(RecfmConfig)
        if path is not None:
            path = Path(path)
            if not path.exists():
                raise ConfigError(f"config file {path} not found")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, not {bad[0]!r}")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
        OmegaConf.resolve(merged)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    config.validate()
    return config


def to_yaml(config: RecfmConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _one_of(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def _one_line(err: Exception) -> str:
    """OmegaConf's messages span lines (with full_key and object_type); keep the useful first line + key."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    return f"{key}: {lines[0]}" if key else lines[0]
