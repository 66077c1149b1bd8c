"""Typed configuration: dataclass defaults <- YAML file <- `key=value` overrides, validated once.

The defaults are the embedded demo (the bundled ml-latest-small), so every command runs with no config
file. `load_config` returns a plain dataclass tree; `to_yaml` is what runs print and save.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recfm.data.config import DataConfig, DataConfigError
from recfm.fm.config import ModelConfig, ModelConfigError, ObjectiveConfig, ShardingConfig


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 200])
    """ranking cut-offs of the metrics (must include 10: models are selected on NDCG@10)"""
    baselines: list[str] = field(default_factory=lambda: ["MostPop", "ItemKNN", "EASE"])
    """which baselines run: MostPop, ItemKNN, EASE (and ContentKNN, on data with item text)"""
    ease_lambdas: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0])
    """EASE's L2 grid, chosen on validation"""
    ease_max_items: int = 40_000
    """EASE inverts an items x items matrix: past this it is skipped, and said so"""
    knn_neighbors: list[int] = field(default_factory=lambda: [20, 50, 100, 200])
    """ItemKNN's grid of neighbours per item"""
    knn_shrinks: list[float] = field(default_factory=lambda: [0.0, 10.0, 100.0])
    """ItemKNN's grid of similarity shrinkage"""
    batch_size: int = 1024
    """users scored at once"""
    val_targets: int = 5000
    """validation targets the grids are tuned on (a fixed random subset; 0 = all)"""
    new_item_boosts: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0])
    """added to the FM's score of items it has no trained ID for (new titles, placed by their content): the largest of
    these at which the FM's validation NDCG@10 on known items stays >= the best baseline's there (with no baselines:
    costs at most new_item_cost, relative, against no boost)"""
    new_item_cost: float = 0.02
    """with no baselines: the relative validation NDCG@10 a new-item boost may cost"""
    blend_weights: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0,
                                                                  5.0, 10.0])
    """a "recfm-FM + EASE" row: z(FM) + w * z(EASE) per request, w chosen on validation among these (0 = the FM alone is
    always a candidate); [] = no such row. Weights above 1 let files where co-occurrence carries more than order lean on
    EASE (w = 10 is EASE's order with the FM breaking its near-ties)"""
    seed: int = 0
    """tie-breaking order of the ranking"""

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
        if any(w < 0 for w in self.blend_weights):
            raise ConfigError("eval.blend_weights must be >= 0")
        if not self.new_item_boosts or not 0 <= self.new_item_cost < 1:
            raise ConfigError("eval.new_item_boosts needs at least one value, and eval.new_item_cost must be in [0, 1)")


@dataclass
class TrainConfig:
    workers: int = 2
    """Ray Train workers (processes); the tables are sharded across them"""
    cpus_per_worker: float = 1.0
    """CPUs each worker reserves"""
    use_gpu: bool = False
    """NCCL + CUDA + fbgemm GPU kernels when the cluster has GPUs"""
    epochs: int = 200
    """epochs at most"""
    batch_size: int = 64
    """training windows per worker per step"""
    lr: float = 1e-3
    """dense AdamW, linear warm-up then constant; sparse tables use sharding.sparse_lr"""
    weight_decay: float = 0.0
    """dense AdamW's weight decay"""
    warmup_steps: int = 50
    """steps of linear learning-rate warm-up"""
    val_every: int = 2
    """epochs between validations (and checkpoints)"""
    val_users: int = 0
    """validation targets per validation (0 = all): a fixed random subset"""
    patience: int = 5
    """validations without a better NDCG@10 before stopping"""
    max_minutes: float = 4.0
    """stop (and test the best model) after this long; 0 = no limit"""
    refit_epochs: int = 3
    """before testing, continue the best checkpoint on every event before the test cutoff (time split), or on every
    event before the test target (leave-one-out: train + validation), for this many epochs (the baselines are refitted
    on those events too); 0 = test it as it is"""
    refit_decay: bool = False
    """the refit's learning rate falls linearly from train.lr to 0 (a cooldown)"""
    cooldown_epochs: int = 0
    """after training stops, continue its best checkpoint for this many epochs with every learning rate falling
    linearly to 0, validating each one; the best checkpoint is the best of both phases (the constant rate finds
    the region, the cooldown settles in it), and the refit then falls to 0 as well (train.refit_decay)"""
    max_failures: int = 2
    """worker failures Ray Train recovers from (restarting from the latest checkpoint)"""
    bf16: bool = False
    """bf16 autocast of the training forward (CPUs with AVX-512 BF16, or CUDA); the softmax and the loss stay float32,
    validation and the test run in float32"""
    stream_data: bool = False
    """read training windows from the Parquet shards through Ray Data every epoch (bounded memory, for data larger than
    memory) instead of from one in-memory table (faster for small data)"""
    seed: int = 0
    """weights, window order, sampling"""

    def validate(self) -> None:
        if self.workers < 1 or self.batch_size < 1 or self.epochs < 1 or self.val_every < 1:
            raise ConfigError("train: workers, batch_size, epochs and val_every must be at least 1")
        if self.lr <= 0:
            raise ConfigError("train: lr must be > 0")
        if self.cooldown_epochs < 0:
            raise ConfigError("train.cooldown_epochs must be >= 0")


@dataclass
class HeadsConfig:
    """The task heads (`recfm.heads`), trained after the FM on requests the FM never saw (time split only)."""

    mode: str = "unified"
    """unified (one ranker, task embedding) | separate (one ranker per task)"""
    fm: str = "frozen"
    """frozen (FM outputs are inputs) | finetune (FM trained with the heads at fm_lr)"""
    text_dim: int = 32
    """width of the query encoder"""
    hidden: int = 64
    """width of the context MLP"""
    dropout: float = 0.1
    """the heads' dropout"""
    weight_decay: float = 0.01
    """AdamW's weight decay for the heads"""
    word_buckets: int = 32768
    """hashed query words of the query encoder"""
    trigram_buckets: int = 32768
    """hashed character trigrams of the query encoder"""
    epochs: int = 30
    """epochs at most"""
    patience: int = 4
    """epochs without a better holdout NDCG@10"""
    batch_size: int = 64
    """requests per worker per step"""
    lr: float = 3e-3
    """AdamW for the heads"""
    fm_lr: float = 1e-4
    """AdamW for the FM when fine-tuned"""
    holdout: float = 0.2
    """the latest share of training requests (per task), for model selection"""
    user_weighting: float = 0.0
    """a request of a user with n of its task's requests weighs n^-this (0: every request alike, 1: every user alike)"""
    session_gap_minutes: float = 60.0
    """homepage: a session starts after this long without an interaction"""
    max_train_per_task: int = 6000
    """random subset (seeded) when a task has more training requests; counts are printed"""
    max_test_per_task: int = 3000
    """random subset (seeded) when a task has more test requests"""
    neighbours: int = 100
    """co-occurrence neighbours per item (the source_cooc and history_cooc signals)"""
    trend_days: float = 365.0
    """the trending signal counts the interactions of this many days before its cutoff"""
    signal_refits: int = 4
    """training requests read signals refitted at this many cutoffs across their span"""
    page_rows: int = 6
    """homepage page: rows"""
    row_length: int = 8
    """homepage page: items per row"""
    genre_cap: int = 3
    """homepage page: at most this many of one genre in a row"""

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

    dim: int = 32
    """the student's width (plain embedding tables, summed facets)"""
    layers: int = 1
    """the student's transformer layers"""
    heads: int = 1
    """the student's attention heads"""
    ffn_mult: int = 2
    """the student's feed-forward width, as a multiple of dim"""
    dropout: float = 0.1
    """the student's dropout"""
    temperature: float = 2.0
    """of the KL between teacher and student catalog softmaxes (scaled by T^2)"""
    hard_weight: float = 0.5
    """the next-item cross-entropy's weight beside the KL's 1"""
    repr_weight: float = 0.0
    """MSE between the teacher's user vectors and the student's, projected (0 = off)"""
    candidates: int = 0
    """0 = the KL over the whole catalog; else over this many shared sampled items per step"""
    epochs: int = 40
    """epochs at most"""
    patience: int = 6
    """validations without a better validation NDCG@10"""
    batch_size: int = 16
    """training windows per worker per step (small: the demo data has under 1,000 windows)"""
    lr: float = 5e-3
    """AdamW's learning rate"""
    weight_decay: float = 0.01
    """AdamW's weight decay"""

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

    uri: str = "runs/embedding-store"
    """a directory (the embedded LanceDB store) or postgresql://user@host/db"""
    collection: str = "recfm"
    """a store holds collections; tables are named after it"""
    model: str = "teacher"
    """teacher (the run's final FM) | student (its distilled student)"""
    keep: int = 3
    """published versions kept (at least 2; the current one is never dropped)"""
    chunk_rows: int = 4096
    """rows per atomic write: a killed push loses at most one chunk's work"""
    workers: int = 2
    """Ray actors computing user vectors"""

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

    cache_dir: str = ".cache/content"
    """vectors by text hash, shared by every dataset and run"""
    batch_size: int = 128
    """texts per encoder batch"""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("content.batch_size must be at least 1")
        self.cache_dir = str(Path(self.cache_dir).resolve())


TUNABLE = ("model", "objective", "sharding", "train")  # the sections whose settings `recfm tune` may vary
PER_TRIAL_RESOURCES = ("train.workers", "train.cpus_per_worker", "train.use_gpu")  # the same for every trial
_RANGE_KEYS = {"low", "high", "log"}


@dataclass
class TuneConfig:
    """`recfm tune`: a search over the FM's training settings on Ray Tune, each trial a training run on train +
    validation data only, selected on validation NDCG@10; the best one alone is tested (docs/tuning.md)."""

    space: dict[str, Any] = field(default_factory=dict)
    """dotted config key -> a list of choices, or {low, high, log}: a uniform range (log-uniform with log: true;
    integers when both ends are). Nested keys (model: {dropout: [...]}) mean the same as dotted ones"""
    trials: int = 8
    """configurations sampled from the space"""
    max_minutes: float = 60.0
    """the whole search's time budget (Tune's time_budget_s); 0 = none"""
    scheduler: str = "asha"
    """asha (stops weak trials early, by epoch) | fifo (every trial runs to its own end)"""
    grace_epochs: int = 2
    """asha: epochs every trial trains before it can be stopped"""
    reduction_factor: int = 2
    """asha: about 1 trial in this many goes on at each rung"""
    concurrent: int = 1
    """trials at once: each takes train.workers workers and 1 CPU for its driver"""
    seed: int = 0
    """of the sampling"""
    start_with_base: bool = True
    """the first trial runs the config's own values of the tuned keys (the hand-set recipe), so the search is measured
    against it under the same budget; the other trials are sampled"""

    def validate(self) -> None:
        if not isinstance(self.space, dict):
            raise ConfigError("tune.space must map dotted config keys to a list of choices or {low, high, log}")
        self.space = _flat_space(self.space)
        for key, spec in self.space.items():
            if "." not in key or key.split(".", 1)[0] not in TUNABLE:
                raise ConfigError(f"tune.space.{key}: only settings of {', '.join(TUNABLE)} can be tuned, by "
                                  f"their dotted key (e.g. model.dropout)")
            if key in PER_TRIAL_RESOURCES:
                raise ConfigError(f"tune.space.{key}: every trial takes the same resources; set it outside the "
                                  f"space")
            space_values(key, spec)
        _one_of("tune.scheduler", self.scheduler, ("asha", "fifo"))
        if min(self.trials, self.concurrent, self.grace_epochs) < 1 or self.reduction_factor < 2:
            raise ConfigError("tune: trials, concurrent and grace_epochs must be at least 1, reduction_factor at "
                              "least 2")
        if self.max_minutes < 0:
            raise ConfigError("tune.max_minutes must be 0 (no budget) or more")


def _flat_space(space: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and not _RANGE_KEYS & set(spec):
            flat |= _flat_space(spec, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = spec
    return flat


def space_values(key: str, spec: Any) -> list:
    """The values a `tune.space` spec can take that a check should try: every choice, or both ends of a range."""
    if isinstance(spec, list | tuple):
        if not spec:
            raise ConfigError(f"tune.space.{key}: an empty list of choices")
        return list(spec)
    if isinstance(spec, dict):
        if set(spec) - _RANGE_KEYS or not {"low", "high"} <= set(spec):
            raise ConfigError(f"tune.space.{key}: a range is {{low, high, log}}, not {spec}")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (low, high)) or not low < high:
            raise ConfigError(f"tune.space.{key}: a range needs numbers low < high, not {low!r} and {high!r}")
        if not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"tune.space.{key}: log must be true or false, and a log range needs low > 0")
        return [low, high]
    raise ConfigError(f"tune.space.{key}: a spec is a list of choices or {{low, high, log}}, not {spec!r}")


STAGES = ("prepare", "fm", "refit", "evaluate", "heads", "distill", "export", "push")  # recfm.platform.pipeline

# `recfm demo`: every stage, sized down for 2 cores (a config file or KEY=VALUE overrides given to `recfm demo`
# still win). Its catalog is the bundled data's 3,650 titles with at least 5 ratings (90% of the ratings; the
# 6,074 others have 1-4 each): every full-ranking step (the FM's softmax, EASE's solve, each signal) scales with the
# catalog. `recfm train` with no config file trains on every title with the plain defaults.
DEMO = {
    "stages": list(STAGES),
    "data": {"min_item_events": 5},
    # 16 epochs, not a time budget: the same run on any machine (validation NDCG@10 peaks at epoch 15 on this data)
    "train": {"epochs": 16, "max_minutes": 0.0, "val_every": 1, "val_users": 2500, "refit_epochs": 2},
    "eval": {"ease_lambdas": [30.0, 100.0, 300.0], "knn_neighbors": [50, 200], "knn_shrinks": [10.0, 100.0]},
    "heads": {"max_train_per_task": 1000, "epochs": 4, "patience": 2, "signal_refits": 2},
    "distill": {"epochs": 5, "patience": 2, "candidates": 1024},
}


@dataclass
class RecfmConfig:
    name: str = "demo"
    """run name (the run directory's prefix)"""
    run_dir: str | None = None
    """where the run writes; default: runs/<name>-<time>"""
    threads: int = 0
    """torch intra-op threads; 0 = all cores"""
    stages: list[str] = field(default_factory=lambda: ["prepare", "fm", "refit", "evaluate"])
    """what `recfm train` runs, always in pipeline order: prepare, fm, refit, evaluate, heads, distill, export, push
    (`recfm demo` runs them all; docs/training.md)"""
    data: DataConfig = field(default_factory=DataConfig)
    """the events: source, format, validation and split"""
    content: ContentConfig = field(default_factory=ContentConfig)
    """item text through the offline sentence encoder"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """the baselines, metrics and choices made on validation"""
    model: ModelConfig = field(default_factory=ModelConfig)
    """the foundation model's architecture"""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """its training objectives"""
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    """how its embedding tables are sharded, and their optimiser"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Ray Train: workers, schedule, early stopping, refit"""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    """the task heads"""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """the distilled student"""
    store: StoreConfig = field(default_factory=StoreConfig)
    """the embedding store"""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """`recfm tune`'s search"""

    def validate(self, source_needed: bool = True) -> None:
        for f in fields(self):
            section = getattr(self, f.name)
            if isinstance(section, DataConfig):
                section.validate(source_needed)
            elif is_dataclass(section):
                section.validate()
        if self.threads < 0:
            raise ConfigError("threads must be 0 (all cores) or more")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError(f"stages: {', '.join(map(repr, unknown)) or 'none given'}; the stages are "
                              f"{', '.join(STAGES)}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None, source_needed: bool = True) -> RecfmConfig:
    """Defaults (or `base`), then the YAML file at `path`, then `key=value` overrides; resolved, validated.
    `source_needed=False` reads a finished run's config, which serves from its own copy of the data."""
    try:
        merged = OmegaConf.structured(RecfmConfig)
        if base is not None:
            merged = OmegaConf.merge(merged, base)
        if path is not None:
            merged = OmegaConf.merge(merged, _load_yaml(Path(path)))
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, not {bad[0]!r}")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
        OmegaConf.resolve(merged)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    try:
        config.validate(source_needed)
    except (ModelConfigError, DataConfigError) as err:
        raise ConfigError(str(err)) from None
    return config


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()):
    """A config file, over the file its `base:` key names (relative to it), and so on: a recipe (e.g.
    configs/sequences.yaml) and the data-specific files built on it."""
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path}: its base: chain comes back to itself")
    raw = OmegaConf.load(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return OmegaConf.merge(_load_yaml(path.parent / str(base), (*seen, path.resolve())), raw)


def config_from_dict(raw: dict) -> RecfmConfig:
    """The typed config back from `asdict` (as sent to Ray workers), validated again."""
    return load_config(None, None, base=raw)


def to_yaml(config: RecfmConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def with_overrides(config: RecfmConfig, values: dict[str, Any]) -> RecfmConfig:
    """`config` with dotted keys set to `values` (as `key=value` overrides would set them), validated again."""
    raw = asdict(config)
    for key, value in values.items():
        node, *path = raw, *key.split(".")
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is a setting, not a section")
        node[path[-1]] = value
    return config_from_dict(raw)


def check_tune_space(config: RecfmConfig) -> None:
    """Every `tune.space` key names an existing setting, and each of its choices (of a range: both ends) gives a
    valid config on its own."""
    t = config.tune
    if not t.space:
        raise ConfigError("tune.space is empty: nothing to tune (see configs/tune-beauty.yaml)")
    for key, spec in t.space.items():
        for value in space_values(key, spec):
            try:
                with_overrides(config, {key: value})
            except ConfigError as err:
                text = str(err).removeprefix(f"{key}: ")
                raise ConfigError(f"tune.space.{key}: {text}") from None
    if t.scheduler == "asha" and t.grace_epochs < config.train.val_every:
        raise ConfigError(f"tune.grace_epochs ({t.grace_epochs}) must be at least train.val_every "
                          f"({config.train.val_every}): ASHA compares trials on validation NDCG@10")


def tuned_values(config: RecfmConfig) -> dict[str, Any]:
    """The config's own value of each `tune.space` key (what `tune.start_with_base` runs first)."""
    values = {}
    for key in config.tune.space:
        value = asdict(config)
        for part in key.split("."):
            value = value[part]
        values[key] = value
    return values


def _one_of(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def _one_line(err: Exception) -> str:
    """OmegaConf's messages span lines (with full_key and object_type); keep the useful first line + key."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    return f"{key}: {lines[0]}" if key else lines[0]
