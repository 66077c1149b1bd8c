"""A separate process for the store tests: a pusher (to be killed mid-push) or a reader (one of eight).

    python tests/store_worker.py push URI COLLECTION VERSION MARKER USERS ITEMS CHUNK_ROWS DELAY
    python tests/store_worker.py read URI COLLECTION STOP_FILE READY_FILE USERS ITEMS

Every vector of version MARKER has MARKER in its first component, so a reader can tell which version each
row it got came from.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from recfm.serving_exports.backends import open_store
from recfm.serving_exports.store import StoreError, chunked


def vectors(marker: int, kind: str, n: int, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(marker * 2 + (kind == "item"))
    out = rng.standard_normal((n, dim)).astype(np.float32)
    out[:, 0] = marker
    return out


def ids(kind: str, n: int) -> list[str]:
    return [f"{kind[0]}{i}" for i in range(n)]


def push(uri: str, collection: str, version: str, marker: int, users: int, items: int, rows: int,
         delay: float) -> None:
    def source(done: set):
        for kind, n in (("item", items), ("user", users)):
            for chunk in chunked(kind, ids(kind, n), vectors(marker, kind, n), rows, skip=done):
                time.sleep(delay)  # a slow producer: the test kills or reads in the middle
                yield chunk
                print(f"wrote {kind} {chunk.chunk}", flush=True)

    with open_store(uri, collection) as store:
        store.publish(version, chunk_source=source, dim=16, meta={"marker": marker},
                      expected={"user": users, "item": items}, keep=10, log=lambda m: print(m, flush=True))
    print("published", flush=True)


def read(uri: str, collection: str, stop: Path, ready: Path, users: int, items: int) -> None:
    seen: dict[str, int] = {}
    bad: list[str] = []
    rng = np.random.default_rng()
    with open_store(uri, collection) as store:
        while not stop.exists():
            try:
                snap = store.snapshot()
                marker = snap.info.meta["marker"]
                got = [snap.get("user", ids("user", users)[:: max(1, users // 25)]),
                       snap.get("item", rng.choice(ids("item", items), 25).tolist())]
                near = snap.nearest("item", vectors(marker, "user", 1)[0], k=5)
                counts = (snap.count("user"), snap.count("item"))
            except StoreError as err:
                bad.append(f"error: {err}")
                continue
            markers = {float(v) for rows in [*got, near] for v in rows.vectors[:, 0]}
            if markers != {float(marker)} or any(r.missing for r in got) or len(near.ids) != 5:
                bad.append(f"{snap.info.name}: markers {sorted(markers)}, missing {[r.missing[:3] for r in got]}")
            if counts != (users, items):
                bad.append(f"{snap.info.name}: counts {counts}, expected {(users, items)}")
            seen[snap.info.name] = seen.get(snap.info.name, 0) + 1
            ready.write_text(snap.info.name)  # the test waits until every reader has read the last version
    print(json.dumps({"seen": seen, "bad": bad[:20], "bad_count": len(bad)}))


if __name__ == "__main__":
    action, *rest = sys.argv[1:]
    if action == "push":
        uri, collection, version, marker, users, items, rows, delay = rest
        push(uri, collection, version, int(marker), int(users), int(items), int(rows), float(delay))
    else:
        uri, collection, stop, ready, users, items = rest
        read(uri, collection, Path(stop), Path(ready), int(users), int(items))
