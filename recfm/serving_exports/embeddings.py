"""What a trained run publishes to the embedding store: one model's item table and its users' vectors.

Both kinds come from the same model (the run's final FM, or its distilled student), so a consumer can score
a user against items with a dot product and get that model's next-item ranking. A user's vector is the model's
representation of their events up to the data cutoff: the test cutoff on a time split (the final FM was
refitted up to there), otherwise each user's events before their held-out last one.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from recfm.data.content import ContentCache
from recfm.data.dataset import Sequences
from recfm.fm.batching import inference_batch, rows_from_arrays
from recfm.fm.load import foundation_model
from recfm.fm.model import UserFoundationModel
from recfm.run.files import FINAL_LINK
from recfm.run.run import Run
from recfm.serving_exports.dense import DenseSequenceModel
from recfm.serving_exports.student import load_student

MODELS = ("teacher", "student")


@dataclass
class RunEmbeddings:
    run: Run
    model_kind: str
    model: DenseSequenceModel
    weights: Path  # the checkpoint the model was loaded from
    foundation: UserFoundationModel | None = None  # the teacher's FM, for its content path (new titles)

    @classmethod
    def load(cls, run_dir: Path, model_kind: str = "teacher") -> RunEmbeddings:
        from recfm.run.files import DISTILL_DIR, STUDENT_FILE

        run = Run.open(run_dir)
        fm = None
        if model_kind == "teacher":
            checkpoint = run.checkpoint(FINAL_LINK)
            fm = foundation_model(run)
            model = DenseSequenceModel.from_foundation(fm)
        elif model_kind == "student":
            model, checkpoint = load_student(run.directory), run.directory / DISTILL_DIR / STUDENT_FILE
        else:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {model_kind!r}")
        return cls(run, model_kind, model.eval(), checkpoint, fm)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the weights the vectors come from (read once, and only by whoever needs it)."""
        return _sha256(self.weights)

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    def users(self) -> tuple[np.ndarray, list[str]]:
        """Dense indices and source ids of the users with events before the cutoff (the others have no vector)."""
        seqs = self.run.sequences
        users = np.flatnonzero(seqs.n_fit > 0)
        names = list(self.run.users)
        return users, [names[u] for u in users]

    @torch.no_grad()
    def user_vectors(self, users: np.ndarray, batch: int = 512) -> np.ndarray:
        """float32 [len(users), dim]: each user's representation after their events up to the cutoff."""
        seqs = self.run.sequences
        out = np.zeros((len(users), self.dim), dtype=np.float32)
        for s in range(0, len(users), batch):
            u = users[s:s + batch]
            rows = rows_from_arrays(seqs.offsets, seqs.events, u)
            out[s:s + len(u)] = self.model(inference_batch(rows, seqs.n_fit[u], self.model.tokenizer,
                                                           self.model.cfg.max_len)).numpy()
        return out

    def items(self) -> tuple[list[str], np.ndarray, list[str | None]]:
        """Every catalog item: source ids, vectors (the model's item table) and labels (title and year)."""
        catalog = self.run.catalog
        labels = [catalog.label(i) if catalog.titles[i] else None for i in range(len(catalog))]
        return ([str(i) for i in catalog.item_ids], self.model.item_table().detach().float().numpy().copy(), labels)

    @torch.no_grad()
    def content_item_vectors(self, texts: list[str], cache_dir: Path) -> np.ndarray:
        """Vectors of items the run never trained on, from their text alone (the FM's content path): what a cold
        item of the catalog gets too."""
        if self.foundation is None or self.foundation.content is None:
            raise ValueError(f"new items need the content path: {self.model_kind} of {self.run.directory.name} "
                             f"has none (train with model.content=true, and push the teacher)")
        vectors, _ = ContentCache(cache_dir).encode(texts, progress=False)
        return self.foundation.items_from_content(torch.from_numpy(vectors)).float().numpy()

    def metadata(self, chunk_rows: int) -> dict:
        """What identifies a version's content: a resumed push must agree on all of it."""
        return {"model": self.model_kind, "run_id": self.run.directory.name, "weights_sha256": self.fingerprint,
                "data_cutoff": data_cutoff(self.run.sequences), "chunk_rows": chunk_rows,
                "user_repr": self.model.cfg.user_repr, "score": "dot product of user and item vectors"}


def data_cutoff(seqs: Sequences) -> str | None:
    """When the data the served model saw ends: the test cutoff, or else the last event before it."""
    cutoff = getattr(seqs.info, "test_cutoff", None)
    if not cutoff and "ts" in seqs.events:
        known = seqs.known_mask("test")
        cutoff = float(seqs.events["ts"][known].max()) if known.any() else None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(cutoff))) if cutoff else None


def _sha256(path: Path) -> str:
    """Of a file, or of a checkpoint directory's files (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
