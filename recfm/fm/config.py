"""The foundation model's typed configuration: architecture, objectives, and sharding of its tables."""

from __future__ import annotations

from dataclasses import dataclass, field

TIME_FACETS = ("hour", "day", "gap")
COMBINE = ("sum", "concat")
POSITIONS = ("learned", "rope")
USER_REPR = ("last", "layer_mean")
LOSSES = ("full", "sampled")
SHARDING_TYPES = ("row_wise", "table_wise", "column_wise")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam")


class ModelConfigError(ValueError):
    """An invalid model setting; the message names the key."""


@dataclass
class ModelConfig:
    dim: int = 64
    """transformer width (and of every embedding table)"""
    layers: int = 2
    """transformer blocks"""
    heads: int = 2
    """attention heads (dim must be divisible by them)"""
    ffn_mult: int = 4
    """feed-forward width, as a multiple of dim"""
    dropout: float = 0.2
    """on tokens, attention and feed-forward"""
    max_len: int = 100
    """training window; longer histories are cut into windows of this many targets, inference reads the latest"""
    window: int = 0
    """sliding-window attention span (0 = full causal attention); computed blockwise, O(length x window)"""
    freq_mix: float = 0.0
    """weight of a causal frequency filter beside attention in every block (BSARec's low- and high-pass mix, made
    causal: `recfm.fm.transformer`); attention keeps 1 - freq_mix; 0 = attention alone"""
    positions: str = "learned"
    """learned | rope"""
    combine: str = "sum"
    """how facet embeddings merge into one token: sum | concat (then project)"""
    facets: list[str] = field(default_factory=lambda: ["all"])
    """facets used as token inputs; [all] = item + every categorical facet in the data + hour, day, gap (when the data
    has real time) + engagement (when it has values); [item] alone gives an ID-only model"""
    context: list[str] = field(default_factory=list)
    """request context: facets of the predicted event known before its item (hour, day, gap, surface, device),
    mixed into the next-item query (`recfm.fm.context`); [all] = every one the data has; [] = none"""
    context_dropout: float = 0.1
    """training: share of context facet ids hidden, so that an unknown context is the average one"""
    engagement_buckets: int = 8
    """value quantile buckets for the engagement facet"""
    gap_buckets: int = 32
    """log2-spaced buckets of seconds since the previous event"""
    user_repr: str = "last"
    """last (the last hidden state) | layer_mean (its mean over layers)"""
    item_init_std: float = 0.02
    """standard deviation of the item table's initial rows"""
    content: bool = True
    """each item vector adds a projection of its text vector (`recfm content embed`, and its semantic-ID code
    embeddings) to its ID embedding; data with no item text (Amazon Beauty's sequence file) needs false"""
    content_dim: int = 384
    """the text encoder's width"""
    id_dropout: float = 0.2
    """training: share of item ID embeddings dropped (and borrowed from text neighbours)"""
    semantic_levels: int = 0
    """residual k-means levels of semantic IDs (0 = none; needs content)"""
    semantic_codes: int = 64
    """codes per semantic-ID level"""
    new_item_neighbours: int = 10
    """scoring and serving: an item with no trained ID borrows the softmax(cos / T)-weighted mean of the IDs of this
    many items with the nearest text (0 = one learned "no ID" vector instead)"""
    new_item_temperature: float = 0.05
    """T of that softmax over cosine similarities"""

    def validate(self) -> None:
        if self.dim % self.heads:
            raise ModelConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.positions == "rope" and (self.dim // self.heads) % 2:
            raise ModelConfigError("model.positions=rope needs an even head dimension")
        for key, value, allowed in (("model.combine", self.combine, COMBINE),
                                    ("model.positions", self.positions, POSITIONS),
                                    ("model.user_repr", self.user_repr, USER_REPR)):
            if value not in allowed:
                raise ModelConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
        if self.max_len < 2 or self.layers < 1 or self.window < 0 or not 0 <= self.dropout < 1:
            raise ModelConfigError("model: max_len >= 2, layers >= 1, window >= 0, 0 <= dropout < 1")
        if not 0 <= self.freq_mix <= 1:
            raise ModelConfigError("model.freq_mix must be in [0, 1]")
        if not 0 <= self.id_dropout < 1 or self.semantic_levels < 0 or self.semantic_codes < 2:
            raise ModelConfigError("model: 0 <= id_dropout < 1, semantic_levels >= 0, semantic_codes >= 2")
        if not 0 <= self.context_dropout < 1:
            raise ModelConfigError("model.context_dropout must be in [0, 1)")
        if self.new_item_neighbours < 0 or not self.new_item_temperature > 0:
            raise ModelConfigError("model: new_item_neighbours >= 0, new_item_temperature > 0")
        if self.semantic_levels and not self.content:
            raise ModelConfigError("model.semantic_levels needs model.content=true (codes come from content)")
        if "item" not in self.facets and "all" not in self.facets:
            raise ModelConfigError("model.facets must include item (or be [all])")


@dataclass
class ObjectiveConfig:
    loss: str = "full"
    """full (softmax over the catalog) | sampled (softmax over in-batch + uniform negatives)"""
    negatives: int = 1024
    """uniform negatives per step for the sampled softmax"""
    logq: bool = True
    """sampled softmax: correct logits by the log sampling probability"""
    mtp: int = 1
    """multi-token prediction: predict the next K items"""
    mtp_weights: list[float] = field(default_factory=list)
    """per offset; default 1, 1/2, 1/3, ..."""
    action_weight: float = 0.0
    """auxiliary loss: next action"""
    gap_weight: float = 0.0
    """auxiliary loss: next gap bucket"""
    temperature: float = 1.0
    """softmax temperature"""
    label_smoothing: float = 0.0
    """share of each next-item target's mass spread evenly over the candidates"""

    def offset_weights(self) -> list[float]:
        return list(self.mtp_weights) or [1.0 / k for k in range(1, self.mtp + 1)]

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ModelConfigError(f"objective.loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.mtp < 1:
            raise ModelConfigError("objective.mtp must be at least 1")
        if self.mtp_weights and len(self.mtp_weights) != self.mtp:
            raise ModelConfigError(f"objective.mtp_weights needs {self.mtp} weights, got {len(self.mtp_weights)}")
        if self.negatives < 1 or self.temperature <= 0:
            raise ModelConfigError("objective: negatives >= 1 and temperature > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ModelConfigError("objective.label_smoothing must be in [0, 1)")


@dataclass
class ShardingConfig:
    item: str = "row_wise"
    """TorchRec sharding type of the item table: row_wise | table_wise | column_wise"""
    other: str = "table_wise"
    """of every other facet table"""
    sparse_optimizer: str = "rowwise_adagrad"
    """fused into the backward pass: rowwise_adagrad (one accumulator per row) | adagrad (one per element: twice the
    table's memory) | adam (CUDA only)"""
    sparse_lr: float = 0.05
    """the tables' learning rate"""

    def validate(self) -> None:
        for key, value in (("sharding.item", self.item), ("sharding.other", self.other)):
            if value not in SHARDING_TYPES:
                raise ModelConfigError(f"{key} must be one of {', '.join(SHARDING_TYPES)} (data_parallel does "
                                       f"not run for EmbeddingCollection on CPU), not {value!r}")
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ModelConfigError(f"sharding.sparse_optimizer must be one of {', '.join(SPARSE_OPTIMIZERS)}")
