"""Semantic IDs: a short code per item from residual k-means over its content vector.

Level 1 clusters the vectors, level 2 clusters what level 1 left over (vector minus its centroid), and so on, so
items with similar text share a code prefix (TIGER, Rajput et al. 2023, uses an RQ-VAE for the same codes; plain
residual k-means keeps it a batch job with no training loop). Codes are computed for any vector, so a title added
after training gets its code from the same centroids.
"""

from __future__ import annotations

import numpy as np


def fit_residual_kmeans(vectors: np.ndarray, levels: int, codes: int, seed: int = 0) -> np.ndarray:
    """Centroids [levels, codes, dim] (float32); fewer vectors than codes is an error."""
    if len(vectors) < codes:
        raise ValueError(f"semantic IDs: {len(vectors)} items cannot fill {codes} codes per level")
    from sklearn.cluster import KMeans  # here: scikit-learn (1.5 s to import) is not needed to train or serve

    residual = np.asarray(vectors, dtype=np.float32).copy()
    centroids = []
    for level in range(levels):
        kmeans = KMeans(n_clusters=codes, n_init=1, random_state=seed + level).fit(residual)
        centres = kmeans.cluster_centers_.astype(np.float32)
        residual -= centres[kmeans.labels_]
        centroids.append(centres)
    return np.stack(centroids)


def assign_codes(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """int64 [items, levels]: each level's nearest centroid to what the previous levels left."""
    residual = np.asarray(vectors, dtype=np.float32).copy()
    out = np.zeros((len(residual), len(centroids)), dtype=np.int64)
    for level, centres in enumerate(centroids):
        distance = (residual ** 2).sum(1, keepdims=True) - 2 * residual @ centres.T + (centres ** 2).sum(1)
        out[:, level] = distance.argmin(1)
        residual -= centres[out[:, level]]
    return out
