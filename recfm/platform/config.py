"""Typed configuration: dataclass defaults <- YAML file <- `key=value` overrides, validated once.

The defaults are the embedded demo (the bundled ml-latest-small), so every command runs with no config
file. `load_config` returns a plain dataclass tree; `to_yaml` is what runs print and save.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recfm.fm.config import ModelConfig, ModelConfigError, ObjectiveConfig, ShardingConfig

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data" / "ml-latest-small"
FORMATS = ("movielens", "sequences", "events", "imported")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass
class DataConfig:
    source: str = str(DEMO_DATA)  # a MovieLens folder, a sequence file, or event file(s)
    format: str = "movielens"  # movielens | sequences | events | imported (a `recfm data import/synth` output)
    mode: str = "strict"  # strict: stop at the first bad row; lenient: quarantine bad rows
    id_type: str = "int"  # sequences and events: int or str ids
    mapping: dict[str, str] = field(default_factory=dict)  # events: schema field -> source column
    ts_unit: str = "s"  # events: s | ms | us | ns | iso
    items: str | None = None  # events: an item catalog file (CSV or Parquet)
    split: str = "time"  # loo | time (the demo: the heads are trained and tested across time)
    val_cutoff: float | None = 0.7  # time split: a timestamp, or a quantile of event times in (0, 1)
    test_cutoff: float | None = 0.9
    actions: list[str] | None = None  # which actions are interactions; default: the importer's choice
    cold_items: float = 0.0  # time split: hold out this share of items, drawn at random, from everything before
    cold_seed: int = 0  # the test cutoff (the cold-start evaluation); their test events stay
    cache_dir: str = ".cache/data"  # imported and prepared data, reused while source and settings match

    def validate(self) -> None:
        _one_of("data.format", self.format, FORMATS)
        _one_of("data.mode", self.mode, ("strict", "lenient"))
        _one_of("data.split", self.split, ("loo", "time"))
        _one_of("data.id_type", self.id_type, ("int", "str"))
        _one_of("data.ts_unit", self.ts_unit, ("s", "ms", "us", "ns", "iso"))
        if not 0 <= self.cold_items < 1:
            raise ConfigError("data.cold_items must be in [0, 1)")
        if not Path(self.source).exists():
            raise ConfigError(f"data.source: {self.source} does not exist")
        # absolute, so that processes started elsewhere (Ray workers) read the same files
        self.source = str(Path(self.source).resolve())
        self.cache_dir = str(Path(self.cache_dir).resolve())
        if self.items:
            self.items = str(Path(self.items).resolve())


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 200])
    baselines: list[str] = field(default_factory=lambda: ["MostPop", "ItemKNN", "EASE"])
    ease_lambdas: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0])
    ease_max_items: int = 40_000  # EASE inverts an items x items matrix: past this it is skipped, and said so
    knn_neighbors: list[int] = field(default_factory=lambda: [20, 50, 100, 200])
    knn_shrinks: list[float] = field(default_factory=lambda: [0.0, 10.0, 100.0])
    batch_size: int = 1024
    val_targets: int = 5000  # validation targets the grids are tuned on (a fixed random subset; 0 = all)
    # added to the FM's score of items it has no trained ID for (new titles, placed by their content): the
    # largest of these at which the FM's validation NDCG@10 on known items stays >= the best baseline's there
    # (with no baselines: costs at most new_item_cost, relative, against no boost)
    new_item_boosts: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0])
    new_item_cost: float = 0.02
    seed: int = 0  # tie-breaking order of the ranking

    def validate(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive cut-offs, not {self.ks}")
        if 10 not in self.ks:
            raise ConfigError("eval.ks must include 10: models are selected on NDCG@10")
        for name in self.baselines:
            _one_of("eval.baselines", name, ("MostPop", "ItemKNN", "EASE", "ContentKNN"))
        if any(lam <= 0 for lam in self.ease_lambdas):
            raise ConfigError("eval.ease_lambdas must be positive")
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size must be at least 1")
        if not self.new_item_boosts or not 0 <= self.new_item_cost < 1:
            raise ConfigError("eval.new_item_boosts needs at least one value, and eval.new_item_cost must be in [0, 1)")


@dataclass
class TrainConfig:
    workers: int = 2  # Ray Train workers (processes); the tables are sharded across them
    cpus_per_worker: float = 1.0
    use_gpu: bool = False  # NCCL + CUDA + fbgemm GPU kernels when the cluster has GPUs
    epochs: int = 200
    batch_size: int = 64  # training windows per worker per step
    lr: float = 1e-3  # dense AdamW; sparse tables use sharding.sparse_lr
    weight_decay: float = 0.0
    warmup_steps: int = 50
    val_every: int = 2  # epochs between validations (and checkpoints)
    val_users: int = 0  # validation targets per validation (0 = all): a fixed random subset
    patience: int = 5  # validations without a better NDCG@10 before stopping
    max_minutes: float = 4.0  # stop (and test the best model) after this long; 0 = no limit (the demo's 4 keeps
    # `make demo` within 10 minutes on 2 cores)
    refit_epochs: int = 3  # time split: before testing, continue the best checkpoint on every event before the
    # test cutoff for this many epochs (the baselines are refitted on those events too); 0 = test it as it is
    max_failures: int = 2  # worker failures Ray Train recovers from (restarting from the latest checkpoint)
    bf16: bool = False  # bf16 autocast of the training forward (CPUs with AVX-512 BF16, or CUDA); the softmax and
    # the loss stay float32, validation and the test run in float32
    stream_data: bool = False  # read training windows from the Parquet shards through Ray Data every epoch
    # (bounded memory, for data larger than memory) instead of from one in-memory table (faster for small data)
    seed: int = 0

    def validate(self) -> None:
        if self.workers < 1 or self.batch_size < 1 or self.epochs < 1 or self.val_every < 1:
            raise ConfigError("train: workers, batch_size, epochs and val_every must be at least 1")
        if self.lr <= 0:
            raise ConfigError("train: lr must be > 0")


@dataclass
class HeadsConfig:
    """The task heads (`recfm.heads`), trained after the FM on requests the FM never saw (time split only)."""

    enabled: bool = True  # `recfm train` and `recfm demo` train the heads when the split is time
    mode: str = "unified"  # unified (one ranker, task embedding) | separate (one ranker per task)
    fm: str = "frozen"  # frozen (FM outputs are inputs) | finetune (FM trained with the heads at fm_lr)
    text_dim: int = 32
    hidden: int = 64
    dropout: float = 0.1
    weight_decay: float = 0.01
    word_buckets: int = 32768  # hashed query words ...
    trigram_buckets: int = 32768  # ... and character trigrams
    epochs: int = 30
    patience: int = 4  # epochs without a better holdout NDCG@10
    batch_size: int = 64  # requests per worker per step
    lr: float = 3e-3
    fm_lr: float = 1e-4  # finetune only
    holdout: float = 0.2  # the latest share of training requests (per task), for model selection
    user_weighting: float = 0.0  # a request of a user with n of its task's requests weighs n^-this (0: all alike)
    session_gap_minutes: float = 60.0  # homepage: a session starts after this long without an interaction
    max_train_per_task: int = 6000  # random subset (seeded) when a task has more requests; counts are printed
    max_test_per_task: int = 3000
    neighbours: int = 100  # co-occurrence neighbours per item (the source_cooc and history_cooc signals)
    trend_days: float = 365.0  # the trending signal counts the interactions of this many days before its cutoff
    signal_refits: int = 4  # training requests read signals refitted at this many cutoffs across their span
    page_rows: int = 6  # homepage page: rows ...
    row_length: int = 8  # ... of this many items ...
    genre_cap: int = 3  # ... with at most this many of one genre in a row

    def validate(self) -> None:
        _one_of("heads.mode", self.mode, ("unified", "separate"))
        _one_of("heads.fm", self.fm, ("frozen", "finetune"))
        if not 0 < self.holdout < 1:
            raise ConfigError("heads.holdout must be in (0, 1)")
        if self.trend_days <= 0:
            raise ConfigError("heads.trend_days must be positive")
        if not 0 <= self.user_weighting <= 1:
            raise ConfigError("heads.user_weighting must be in [0, 1]")
        if min(self.epochs, self.signal_refits, self.batch_size, self.text_dim, self.hidden, self.word_buckets,
               self.trigram_buckets, self.max_train_per_task, self.max_test_per_task, self.page_rows, self.row_length,
               self.genre_cap) < 1:
            raise ConfigError("heads: sizes, counts and epochs must be at least 1")


@dataclass
class DistillConfig:
    """`recfm distill RUN`: a small student (plain embeddings, fewer layers and dimensions) learns the run's FM."""

    enabled: bool = True  # `recfm demo` distils and exports the demo run
    dim: int = 32
    layers: int = 1
    heads: int = 1
    ffn_mult: int = 2
    dropout: float = 0.1
    temperature: float = 2.0  # of the KL between teacher and student catalog softmaxes (scaled by T^2)
    hard_weight: float = 0.5  # the next-item cross-entropy's weight beside the KL's 1
    repr_weight: float = 0.0  # MSE between the teacher's user vectors and the student's, projected (0 = off)
    candidates: int = 0  # 0 = the KL over the whole catalog; else over this many shared sampled items per step
    epochs: int = 40
    patience: int = 6  # validations without a better validation NDCG@10
    batch_size: int = 16  # training windows per worker per step (small: the demo data has under 1,000 windows)
    lr: float = 5e-3
    weight_decay: float = 0.01

    def validate(self) -> None:
        if min(self.dim, self.layers, self.heads, self.ffn_mult, self.epochs, self.patience, self.batch_size) < 1:
            raise ConfigError("distill: sizes, epochs, patience and batch_size must be at least 1")
        if self.dim % self.heads:
            raise ConfigError(f"distill.dim ({self.dim}) must be divisible by distill.heads ({self.heads})")
        if self.temperature <= 0 or self.hard_weight < 0 or self.repr_weight < 0 or self.candidates < 0:
            raise ConfigError("distill: temperature > 0; hard_weight, repr_weight and candidates >= 0")


@dataclass
class StoreConfig:
    """`recfm push-embeddings RUN`: the run's user and item vectors into the embedding store, as one version."""

    push: bool = True  # `recfm demo` pushes its run's embeddings
    uri: str = "runs/embedding-store"  # a directory (the embedded LanceDB store) or postgresql://user@host/db
    collection: str = "recfm"  # a store holds collections; tables are named after it
    model: str = "teacher"  # teacher (the run's final FM) | student (its distilled student)
    keep: int = 3  # published versions kept (at least 2; the current one is never dropped)
    chunk_rows: int = 4096  # rows per atomic write: a killed push loses at most one chunk's work
    workers: int = 2  # Ray actors computing user vectors

    def validate(self) -> None:
        from recfm.serving_exports.store import COLLECTION_NAME

        _one_of("store.model", self.model, ("teacher", "student"))
        if not COLLECTION_NAME.fullmatch(self.collection):
            raise ConfigError(f"store.collection {self.collection!r}: use 1-31 of a-z, 0-9 and _, starting with a "
                              f"letter")
        if self.keep < 2 or self.chunk_rows < 1 or self.workers < 1:
            raise ConfigError("store: keep must be at least 2, chunk_rows and workers at least 1")


@dataclass
class ContentConfig:
    """`recfm content embed`: item text through the offline sentence encoder (used when model.content=true)."""

    cache_dir: str = ".cache/content"  # vectors by text hash, shared by every dataset and run
    batch_size: int = 128

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("content.batch_size must be at least 1")
        self.cache_dir = str(Path(self.cache_dir).resolve())


@dataclass
class RecfmConfig:
    name: str = "demo"
    run_dir: str | None = None  # default: runs/<name>-<time>
    threads: int = 0  # torch intra-op threads; 0 = all cores
    data: DataConfig = field(default_factory=DataConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def validate(self) -> None:
        for f in fields(self):
            section = getattr(self, f.name)
            if is_dataclass(section):
                section.validate()
        if self.threads < 0:
            raise ConfigError("threads must be 0 (all cores) or more")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RecfmConfig:
    """Defaults (or `base`), then the YAML file at `path`, then `key=value` overrides; resolved, validated."""
    try:
        merged = OmegaConf.structured(RecfmConfig)
        if base is not None:
            merged = OmegaConf.merge(merged, base)
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
    try:
        config.validate()
    except ModelConfigError as err:
        raise ConfigError(str(err)) from None
    return config


def config_from_dict(raw: dict) -> RecfmConfig:
    """The typed config back from `asdict` (as sent to Ray workers), validated again."""
    return load_config(None, None, base=raw)


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
