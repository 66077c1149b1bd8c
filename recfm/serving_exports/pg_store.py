"""The shared store: PostgreSQL with pgvector (an HNSW index per version and kind).

Tables, for a collection C (created on first use; C is checked against a strict pattern and passed as
`psycopg.sql.Identifier`, never formatted into SQL text):

    C_versions          one row per version: name, status, dim, metric, normalized, meta, stats, times
    C_current           one row: the current version's number (changed by promotion, in one transaction)
    C_chunks            (version, kind, chunk): which chunks a version holds, inserted in the same transaction as
                        the chunk's rows, so that a killed push leaves whole chunks and a re-run skips exactly them
    C_<number>_<kind>   a version's vectors: id text primary key, label, vec vector(dim)

Every value goes in as a query parameter. A pushing process holds a session advisory lock on its version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from recfm.serving_exports.store import STAGING, EmbeddingStore, StoreError, VersionInfo, check_version_name, now

EF_SEARCH = 200  # HNSW candidates per query (pgvector's default is 40; 100 gave recall@10 0.92 at 1M)
OPS = {"dot": ("vector_ip_ops", "<#>"), "cosine": ("vector_cosine_ops", "<=>")}


class PostgresStore(EmbeddingStore):
    def __init__(self, uri: str, collection: str):
        import psycopg
        from pgvector.psycopg import register_vector

        self.uri, self.collection = _redacted(uri), collection
        self._dsn = uri
        try:
            self.conn = psycopg.connect(uri, autocommit=True)
        except psycopg.OperationalError as err:
            raise StoreError(f"cannot connect to PostgreSQL at {self.uri}: {str(err).strip()}") from None
        self._ensure_schema()
        register_vector(self.conn)

    def close(self) -> None:
        self.conn.close()

    def _id(self, suffix: str):
        from psycopg import sql

        return sql.Identifier(f"{self.collection}_{suffix}")

    def _sql(self, text: str, **tables: str):
        """`text` with {name} placeholders filled by this collection's table identifiers."""
        from psycopg import sql

        return sql.SQL(text).format(**{k: self._id(v) for k, v in tables.items()})

    def _ensure_schema(self) -> None:
        import psycopg

        with self.conn.transaction():
            # Two processes creating the schema at once would race on the catalog: serialise them.
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recfm-schema:{self.collection}",))
            try:
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.FeatureNotSupported as err:
                raise StoreError(f"PostgreSQL at {self.uri} has no pgvector extension: {err}") from None
            self.conn.execute(self._sql(
                "CREATE TABLE IF NOT EXISTS {v} (number serial PRIMARY KEY, name text UNIQUE NOT NULL, "
                "status text NOT NULL, dim int NOT NULL, metric text NOT NULL, normalized boolean NOT NULL, "
                "meta jsonb NOT NULL, stats jsonb NOT NULL DEFAULT '{{}}', created text NOT NULL, promoted text)",
                v="versions"))
            self.conn.execute(self._sql(
                "CREATE TABLE IF NOT EXISTS {c} (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
                "number int NOT NULL REFERENCES {v} (number))", c="current", v="versions"))
            self.conn.execute(self._sql(
                "CREATE TABLE IF NOT EXISTS {k} (number int NOT NULL REFERENCES {v} (number) ON DELETE CASCADE, "
                "kind text NOT NULL, chunk int NOT NULL, rows int NOT NULL, PRIMARY KEY (number, kind, chunk))",
                k="chunks", v="versions"))

    # --- registry -------------------------------------------------------------------------------------------

    _COLUMNS = "name, number, status, dim, metric, normalized, meta, created, promoted, stats"

    def versions(self) -> list[VersionInfo]:
        rows = self.conn.execute(self._sql(f"SELECT {self._COLUMNS} FROM {{v}} ORDER BY number",
                                           v="versions")).fetchall()
        return [VersionInfo(*row) for row in rows]

    def current(self) -> VersionInfo | None:
        row = self.conn.execute(self._sql(f"SELECT {', '.join('v.' + c for c in self._COLUMNS.split(', '))} "
                                          "FROM {c} JOIN {v} v USING (number)", c="current", v="versions")).fetchone()
        return VersionInfo(*row) if row else None

    @contextmanager
    def writer(self, name: str) -> Iterator[None]:
        import psycopg

        key = f"recfm-push:{self.collection}:{check_version_name(name)}"
        with psycopg.connect(self._dsn, autocommit=True) as lock:  # the lock lives as long as this session
            if not lock.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:
                raise StoreError(f"version {name!r} is being pushed by another process")
            yield

    # --- writing --------------------------------------------------------------------------------------------

    def _vectors_table(self, info: VersionInfo, kind: str):
        return self._id(f"{info.number}_{kind}")

    def _create(self, name: str, dim: int, metric: str, normalized: bool, meta: dict) -> VersionInfo:
        from psycopg import sql
        from psycopg.types.json import Jsonb

        with self.conn.transaction():
            number = self.conn.execute(self._sql(
                "INSERT INTO {v} (name, status, dim, metric, normalized, meta, created) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING number", v="versions"),
                (name, STAGING, dim, metric, normalized, Jsonb(meta), now())).fetchone()
            if number is None:  # created by another process meanwhile
                return self.version(name)
            info = self.version(name)
            for kind in ("user", "item"):
                self.conn.execute(sql.SQL("CREATE TABLE {t} (id text PRIMARY KEY, label text, vec vector({d}) "
                                          "NOT NULL)").format(t=self._vectors_table(info, kind),
                                                              d=sql.Literal(int(dim))))
        return info

    def _written(self, info: VersionInfo, kind: str) -> set[int]:
        rows = self.conn.execute(self._sql("SELECT chunk FROM {k} WHERE number = %s AND kind = %s", k="chunks"),
                                 (info.number, kind)).fetchall()
        return {r[0] for r in rows}

    def _append(self, info: VersionInfo, kind: str, chunk: int, ids: list[str], vectors: np.ndarray,
                labels: list[str | None]) -> None:
        import psycopg

        try:
            self._copy(info, kind, chunk, ids, vectors, labels)
        except psycopg.errors.UniqueViolation:
            raise StoreError(f"version {info.name!r}, {kind} chunk {chunk}: duplicate ids (an id of this chunk is "
                             f"already stored by another chunk)") from None

    def _copy(self, info: VersionInfo, kind: str, chunk: int, ids: list[str], vectors: np.ndarray,
              labels: list[str | None]) -> None:
        from psycopg import sql

        with self.conn.transaction():
            with self.conn.cursor() as cur:
                copy_sql = sql.SQL("COPY {t} (id, label, vec) FROM STDIN WITH (FORMAT BINARY)").format(
                    t=self._vectors_table(info, kind))
                with cur.copy(copy_sql) as copy:
                    copy.set_types(["text", "text", "vector"])
                    for row in zip(ids, labels, vectors, strict=True):
                        copy.write_row(row)
            self.conn.execute(self._sql("INSERT INTO {k} (number, kind, chunk, rows) VALUES (%s, %s, %s, %s)",
                                        k="chunks"), (info.number, kind, chunk, len(ids)))

    def _stats(self, info: VersionInfo, kind: str) -> dict:
        from psycopg import sql

        rows, distinct, low, high = self.conn.execute(sql.SQL(
            "SELECT count(*), count(DISTINCT id), min(vector_norm(vec)), max(vector_norm(vec)) FROM {t}").format(
            t=self._vectors_table(info, kind))).fetchone()
        return {"rows": rows, "distinct": distinct, "min_norm": low or 0.0, "max_norm": high or 0.0}

    def _build_index(self, info: VersionInfo, kind: str) -> None:
        from psycopg import sql

        ops = sql.SQL(OPS[info.metric][0])
        with self.conn.transaction():
            # A big build needs the graph in memory; pgvector warns and slows down ~10x when it spills.
            self.conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
            self.conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (vec {ops})").format(
                i=self._id(f"{info.number}_{kind}_hnsw"), t=self._vectors_table(info, kind), ops=ops))

    def _set_current(self, info: VersionInfo) -> None:
        from psycopg.types.json import Jsonb

        with self.conn.transaction():  # readers see the old pointer or the new one
            self.conn.execute(self._sql("UPDATE {v} SET status = %s, stats = %s, promoted = %s WHERE number = %s",
                                        v="versions"), (info.status, Jsonb(info.stats), info.promoted, info.number))
            self.conn.execute(self._sql("INSERT INTO {c} (one, number) VALUES (true, %s) ON CONFLICT (one) DO UPDATE "
                                        "SET number = EXCLUDED.number", c="current"), (info.number,))

    def _drop(self, info: VersionInfo) -> None:
        from psycopg import sql

        with self.conn.transaction():
            current = self.conn.execute(self._sql("SELECT number FROM {c} FOR UPDATE", c="current")).fetchone()
            if current and current[0] == info.number:
                raise StoreError(f"version {info.name!r} is current and cannot be dropped")
            self.conn.execute(self._sql("DELETE FROM {v} WHERE number = %s", v="versions"), (info.number,))
            for kind in ("user", "item"):
                self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=self._vectors_table(info, kind)))

    # --- reading --------------------------------------------------------------------------------------------

    def _take(self, info: VersionInfo, kind: str, ids: list[str]) -> tuple[list[str], list, np.ndarray]:
        from psycopg import sql

        rows = self.conn.execute(sql.SQL("SELECT id, label, vec FROM {t} WHERE id = ANY(%s)").format(
            t=self._vectors_table(info, kind)), (ids,)).fetchall()
        return _columns(rows, info.dim)

    def _search(self, info: VersionInfo, kind: str, vector: np.ndarray, k: int) -> tuple[list[str], list, np.ndarray]:
        from psycopg import sql

        operator = sql.SQL(OPS[info.metric][1])
        with self.conn.transaction():
            self.conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {n}").format(n=sql.Literal(max(EF_SEARCH, k))))
            rows = self.conn.execute(sql.SQL("SELECT id, label, vec FROM {t} ORDER BY vec {op} %s LIMIT %s").format(
                t=self._vectors_table(info, kind), op=operator), (vector, k)).fetchall()
        return _columns(rows, info.dim)

    def _count(self, info: VersionInfo, kind: str) -> int:
        from psycopg import sql

        return self.conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(
            t=self._vectors_table(info, kind))).fetchone()[0]


def _columns(rows: list[tuple], dim: int) -> tuple[list[str], list, np.ndarray]:
    if not rows:
        return [], [], np.zeros((0, dim), np.float32)
    return [r[0] for r in rows], [r[1] for r in rows], np.stack([_array(r[2]) for r in rows])


def _array(value) -> np.ndarray:
    # pgvector's loader gives a `Vector` (or, registered for numpy, an array)
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def _redacted(uri: str) -> str:
    """The URI without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    return urlunsplit(parts)

