"""Writes an imported dataset's events as Parquet shards, streaming, in the order given."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recfm.data.schema import EVENTS_DIR


class EventShardWriter:
    """Appends event tables to `out/events/part-NNNNN.parquet`, starting a new shard every `shard_rows`.

    Shards are numbered in write order, so reading them in name order gives the source order back.
    """

    def __init__(self, out: Path, schema: pa.Schema, shard_rows: int = 2_000_000, row_group_rows: int = 250_000):
        self.dir = Path(out) / EVENTS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("part-*.parquet"):
            stale.unlink()
        self.schema = schema
        self.shard_rows = shard_rows
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._shards = 0
        self._in_shard = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._in_shard >= self.shard_rows:
                self._open_next()
            take = min(table.num_rows - start, self.shard_rows - self._in_shard)
            self._writer.write_table(table.slice(start, take), row_group_size=self.row_group_rows)
            self._in_shard += take
            self.rows += take
            start += take

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.dir / f"part-{self._shards:05d}.parquet"
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self._shards += 1
        self._in_shard = 0

    def close(self) -> None:
        if self._writer is None:  # an empty dataset still gets one (empty) shard with the schema
            self._open_next()
        self._writer.close()
        self._writer = None

    def __enter__(self) -> EventShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
