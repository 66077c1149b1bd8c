"""The embedding store's backends, chosen by URI (each imports its client library only when opened)."""

from __future__ import annotations

from recfm.serving_exports.store import DEFAULT_COLLECTION, EmbeddingStore, StoreError, check_collection


def open_store(uri: str, collection: str = DEFAULT_COLLECTION) -> EmbeddingStore:
    """`postgresql://…` (or `postgres://…`): PostgreSQL with pgvector; `lancedb://PATH` or a plain path: the
    embedded LanceDB store in that directory."""
    check_collection(collection)
    if uri.startswith(("postgresql://", "postgres://")):
        from recfm.serving_exports.pg_store import PostgresStore

        return PostgresStore(uri, collection)
    if uri.startswith("lancedb://"):
        uri = uri[len("lancedb://"):]
    elif "://" in uri:
        raise StoreError(f"store URI {uri!r}: the scheme must be postgresql:// or lancedb:// (or give a path)")
    from recfm.serving_exports.lance_store import LanceStore

    return LanceStore(uri, collection)
