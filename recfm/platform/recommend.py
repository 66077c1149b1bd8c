"""Serving the heads of a trained run: `recfm recommend homepage | search | similars`.

A served request sees everything the run's data holds: the user's whole history, signals fitted on every
event and tag. Requests go through the same `resolve` + `impute` as training examples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recfm.heads.batch import EventLog, heads_batch
from recfm.heads.context import Request, impute, resolve
from recfm.heads.model import HeadsModel, HeadsSpec
from recfm.heads.page import Row, compose_page
from recfm.heads.signals import CatalogSignals
from recfm.heads.text import text_features
from recfm.platform.config import HeadsConfig
from recfm.platform.trained import TrainedRun
from recfm.run.files import HEADS_DIR, HEADS_SIGNALS_FILE, HEADS_SPEC_FILE, HEADS_WEIGHTS_FILE


@dataclass
class Recommendation:
    request: Request
    items: list[dict]  # item_id, title, score
    notes: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # homepage page rows: title, engagement, items


class Recommender:
    def __init__(self, run_dir: Path | None = None):
        self.run = TrainedRun.open(run_dir)
        heads = self.run.directory / HEADS_DIR
        if not (heads / HEADS_WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{self.run.directory} has no trained heads: run `recfm heads train "
                                    f"{self.run.directory}` (needs data.split=time)")
        saved = json.loads((heads / HEADS_SPEC_FILE).read_text())
        self.spec, self.hc = HeadsSpec(**saved["spec"]), HeadsConfig(**saved["heads"])
        self.model = HeadsModel(self.run.foundation_model(), self.spec)
        self.model.load_head_state(torch.load(heads / HEADS_WEIGHTS_FILE, weights_only=True))
        self.model.eval()
        seqs, catalog = self.run.sequences, self.run.catalog
        self.log = EventLog(seqs.offsets, seqs.events)
        self.signals = CatalogSignals.load(heads / HEADS_SIGNALS_FILE)
        self.item_text = text_features(self.signals.documents, self.spec.word_buckets, self.spec.trigram_buckets)
        self.item_index = catalog.index()
        vocab = seqs.vocab
        self.codes = {name: {v: i for i, v in enumerate(vocab.get(name, [])) if v is not None}
                      for name in ("surface", "device")}

    def scores(self, request: Request) -> tuple[torch.Tensor, list[str]]:
        """The head's scores of every item for one request (-inf = excluded), and what was imputed."""
        seqs, catalog = self.run.sequences, self.run.catalog
        row, notes = resolve(request, self.run.users, self.item_index, seqs.lengths, self.codes["surface"],
                             self.codes["device"])
        row = impute(row, seqs.offsets, seqs.events["item"], catalog.text)
        fm = self.model.fm
        batch = heads_batch(row, self.log, self.signals, fm.tokenizer, fm.cfg.max_len, self.spec.word_buckets,
                            self.spec.trigram_buckets)
        with torch.no_grad():
            return self.model(batch, self.item_text)[0], notes

    def recommend(self, request: Request, k: int = 10) -> Recommendation:
        scores, notes = self.scores(request)
        return Recommendation(request, self._items(scores, k), notes)

    def homepage(self, user: str, hour: int | None = None, recent: int = 2) -> Recommendation:
        """The page of rows for a user (the flat list is its "Top picks" ranking)."""
        request = Request("homepage", user=user, hour=hour)
        home, notes = self.scores(request)
        seqs, catalog = self.run.sequences, self.run.catalog
        u = self.run.users.get(str(user))
        history = seqs.events["item"][seqs.offsets[u]:seqs.offsets[u + 1]] if u is not None else np.zeros(0, int)
        latest = list(dict.fromkeys(history[::-1].tolist()))[:recent]
        because = [(catalog.label(i), self.scores(Request("similars", user=user, item=str(catalog.item_ids[i]),
                                                          hour=hour))[0]) for i in latest]
        rows = compose_page(home, because, catalog.genres, self.hc.page_rows, self.hc.row_length, self.hc.genre_cap)
        return Recommendation(request, self._items(home, self.hc.row_length), notes,
                              [self._row(r) for r in rows])

    def _items(self, scores: torch.Tensor, k: int) -> list[dict]:
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        return [self._item(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)]

    def _item(self, i: int, score: float) -> dict:
        catalog = self.run.catalog
        return {"item_id": catalog.item_ids[i].item(), "title": catalog.label(i), "score": round(score, 4),
                "genres": catalog.genres[i]}

    def _row(self, row: Row) -> dict:
        return {"title": row.title, "engagement": round(row.engagement, 4),
                "items": [self._item(i, s) for i, s in zip(row.items, row.scores, strict=True)]}


def format_text(rec: Recommendation) -> str:
    lines = [f"note: {n}" for n in rec.notes]
    if rec.rows:
        for row in rec.rows:
            lines.append(f"\n{row['title']}  (expected engagement {row['engagement']:.3f})")
            lines += [f"  {it['score']:8.3f}  {it['title']}  [{', '.join(it['genres'])}]" for it in row["items"]]
    else:
        lines += [f"{n + 1:>3}. {it['score']:8.3f}  {it['title']}  [{', '.join(it['genres'])}]  (id {it['item_id']})"
                  for n, it in enumerate(rec.items)]
    return "\n".join(lines)


def format_json(rec: Recommendation) -> str:
    payload = {"task": rec.request.task, "request": {k: v for k, v in vars(rec.request).items() if v is not None},
               "notes": rec.notes, "items": rec.items}
    if rec.rows:
        payload["rows"] = rec.rows
    return json.dumps(payload, indent=1)
