"""A homepage page: rows of items rather than one list.

Candidate rows are "Top picks" (the homepage head), "Because you watched X" (the similars head with X as the
source, for the user's latest items) and a row per genre (the homepage head within that genre, for the genres
most present among the user's top picks). Rows are filled in order of their expected engagement, skipping
items an earlier row took (no item appears twice on the page) and items that would put more than `genre_cap`
of one genre into a row (a genre row's own genre is exempt). The filled rows are ordered by expected
engagement: the homepage head's probability mass of the row's items, i.e. the chance the user's next play is
in that row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch


@dataclass
class Row:
    title: str
    items: list[int]
    scores: list[float]  # the row's own ranking scores
    engagement: float  # homepage probability mass of the row's items


def compose_page(home_scores: torch.Tensor, because: list[tuple[str, torch.Tensor]], genres: list[list[str]],
                 rows: int, row_length: int, genre_cap: int) -> list[Row]:
    """`home_scores` [items] from the homepage head (-inf = not rankable); `because` is (title, similars scores)."""
    probability = torch.softmax(home_scores, 0)
    probability = torch.nan_to_num(probability, nan=0.0)
    candidates: list[tuple[str, torch.Tensor, str | None]] = [("Top picks for you", home_scores, None)]
    candidates += [(f"Because you watched {title}", scores, None) for title, scores in because]
    top = torch.topk(home_scores, min(50, len(home_scores))).indices.tolist()
    for genre, _ in Counter(g for i in top for g in genres[i]).most_common(rows):
        in_genre = torch.tensor([genre in g for g in genres])
        candidates.append((f"Top {genre}", home_scores.masked_fill(~in_genre, -torch.inf), genre))

    def expected(scores: torch.Tensor) -> float:
        finite = torch.isfinite(scores)
        best = torch.topk(scores.masked_fill(~finite, -torch.inf), min(row_length, int(finite.sum()))).indices
        return float(probability[best].sum())

    used: set[int] = set()
    page = []
    for title, scores, own_genre in sorted(candidates, key=lambda c: -expected(c[1])):
        items, values, per_genre = [], [], Counter()
        for i in torch.argsort(scores, descending=True).tolist():
            if not torch.isfinite(scores[i]) or len(items) == row_length:
                break
            if i in used or any(per_genre[g] >= genre_cap for g in genres[i] if g != own_genre):
                continue
            items.append(i)
            values.append(float(scores[i]))
            per_genre.update(genres[i])
        if items:
            used.update(items)
            page.append(Row(title, items, values, float(probability[items].sum())))
    return sorted(page, key=lambda r: -r.engagement)[:rows]
