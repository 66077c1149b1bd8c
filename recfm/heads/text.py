"""Text for the heads: a hashed query encoder (so unseen queries still encode) and BM25 (the lexical baseline
and the ranker's lexical-match feature).

The encoder hashes each text into word ids and character-trigram ids ("#sci", "sci", "ci-", ...) and mean-pools
their embeddings from a TorchRec EmbeddingBagCollection: a misspelt or new word still shares most trigrams
with known ones. Queries and item texts go through the same encoder, so they meet in one space.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

_WORD = re.compile(r"[a-z0-9]+")
TEXT_FEATURES = ("words", "trigrams")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def trigrams(text: str) -> list[str]:
    return [f"#{w}#"[i:i + 3] for w in words(text) for i in range(len(w))]


def _hashed(tokens: list[str], buckets: int) -> list[int]:
    # crc32, not hash(): Python salts str hashes per process, and ids must match across processes and runs
    return [zlib.crc32(t.encode()) % buckets for t in tokens]


def text_features(texts: list[str], word_buckets: int, trigram_buckets: int) -> KeyedJaggedTensor:
    """One bag of hashed word ids and one of trigram ids per text."""
    per_key = [[_hashed(words(t), word_buckets) for t in texts], [_hashed(trigrams(t), trigram_buckets)
                                                                  for t in texts]]
    values = [i for bags in per_key for bag in bags for i in bag]
    lengths = [len(bag) for bags in per_key for bag in bags]
    return KeyedJaggedTensor(keys=list(TEXT_FEATURES), values=torch.tensor(values, dtype=torch.int64),
                             lengths=torch.tensor(lengths, dtype=torch.int64))


class TextEncoder(nn.Module):
    """Texts (as `text_features`) -> [N, dim]; an empty text encodes to the projection's bias."""

    def __init__(self, dim: int, word_buckets: int, trigram_buckets: int):
        super().__init__()
        self.word_buckets, self.trigram_buckets = word_buckets, trigram_buckets
        tables = [EmbeddingBagConfig(name=f"t_{name}", embedding_dim=dim, num_embeddings=n, feature_names=[name],
                                     pooling=PoolingType.MEAN)
                  for name, n in zip(TEXT_FEATURES, (word_buckets, trigram_buckets), strict=True)]
        self.bags = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
        for table in self.bags.embedding_bags.values():
            nn.init.normal_(table.weight, std=0.1)
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.bags(features)
        return self.project(torch.cat([pooled[name] for name in TEXT_FEATURES], dim=-1))

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self(text_features(texts, self.word_buckets, self.trigram_buckets))


class BM25:
    """Okapi BM25 over item documents, as one sparse [items, terms] weight matrix."""

    def __init__(self, documents: list[str], k1: float = 1.2, b: float = 0.75):
        self.vocab: dict[str, int] = {}
        rows, cols = [], []
        for row, doc in enumerate(documents):
            for w in words(doc):
                rows.append(row)
                cols.append(self.vocab.setdefault(w, len(self.vocab)))
        tf = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                           shape=(len(documents), max(len(self.vocab), 1)))
        tf.sum_duplicates()
        doc_len = np.asarray(tf.sum(1)).ravel()
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        idf = np.log1p((len(documents) - df + 0.5) / (df + 0.5)).astype(np.float32)
        norm = k1 * (1 - b + b * doc_len / max(doc_len.mean(), 1e-9))
        tf = tf.tocoo()
        weights = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + norm[tf.row])
        self.weights = sp.csr_matrix((weights, (tf.row, tf.col)), shape=tf.shape)

    def scores(self, queries: list[str]) -> np.ndarray:
        """[queries, items] BM25 scores; words the documents never use count for nothing."""
        rows, cols = [], []
        for row, query in enumerate(queries):
            for w in set(words(query)):
                if w in self.vocab:
                    rows.append(row)
                    cols.append(self.vocab[w])
        q = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                          shape=(len(queries), self.weights.shape[1]))
        return np.asarray((q @ self.weights.T).todense(), dtype=np.float32)
