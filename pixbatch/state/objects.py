"""Named reads and writes for object storage: uploads of local inputs, outputs in a bucket.

``uploads`` and ``outputs.etag`` come from ``migrations.m005_object_storage``. The writes are
SQL statements for the store's bulk queue (``store.put_sql``): an upload recorded a moment
late is found again by the next run's listing of the bucket, never uploaded twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb

from .model import ItemState, utcnow

FILE_RE = r"pixbatch://file/([0-9a-f]{64})"


@dataclass(frozen=True, slots=True)
class UploadRow:
    object: str  # s3://bucket/key
    sha256: str
    bytes: int
    media_type: str | None
    etag: str | None
    how: str  # put | found


def files_to_send(db: duckdb.DuckDBPyConnection, scope: str,
                  states: Iterable[str] = (ItemState.PENDING,)) -> list[str]:
    """The sha256 of every local file a PENDING item of ``scope`` names (main image or reference), sorted."""
    rows = db.execute(
        f"""
        SELECT DISTINCT f FROM (
            SELECT unnest(regexp_extract_all(body::VARCHAR, '{FILE_RE}', 1)) AS f
            FROM items WHERE scope = ? AND list_contains(?::VARCHAR[], state)
        ) WHERE f IS NOT NULL ORDER BY f
        """, [scope, [str(s) for s in states]]).fetchall()
    return [r[0] for r in rows]


def files_in_scope(db: duckdb.DuckDBPyConnection, scope: str) -> list[str]:
    """The sha256 of every local file any item of ``scope`` names."""
    return files_to_send(db, scope, tuple(ItemState))


def recorded_uploads(db: duckdb.DuckDBPyConnection, objects: list[str]) -> dict[str, UploadRow]:
    """The uploads recorded for these objects (s3:// URIs)."""
    if not objects:
        return {}
    rows = db.execute("SELECT object, sha256, bytes, media_type, etag, how FROM uploads "
                      "WHERE list_contains(?::VARCHAR[], object)", [objects]).fetchall()
    return {r[0]: UploadRow(*r) for r in rows}


def record_upload_sql(u: UploadRow) -> tuple[str, list[Any]]:
    return ("INSERT OR REPLACE INTO uploads (object, sha256, bytes, media_type, etag, how, uploaded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [u.object, u.sha256, u.bytes, u.media_type, u.etag, u.how, utcnow()])


@dataclass(frozen=True, slots=True)
class ObjectOutput:
    """An output written to a bucket (``outputs`` with ``path`` the object's s3:// URI)."""

    key: str
    uri: str
    sha256: str
    bytes: int
    width: int | None
    height: int | None
    media_type: str | None
    etag: str | None


def recorded_object_outputs(db: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[tuple[str, str], ObjectOutput]:
    """(key, uri) -> the output recorded for it, for outputs written to a bucket."""
    if not keys:
        return {}
    rows = db.execute("SELECT key, path, sha256, bytes, width, height, media_type, etag FROM outputs "
                      "WHERE list_contains(?::VARCHAR[], key) AND path LIKE 's3://%'", [keys]).fetchall()
    return {(r[0], r[1]): ObjectOutput(*r) for r in rows}


def record_object_output_sql(o: ObjectOutput) -> tuple[str, list[Any]]:
    return ("INSERT OR REPLACE INTO outputs (key, path, sha256, bytes, width, height, media_type, downloaded_at, "
            "etag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [o.key, o.uri, o.sha256, o.bytes, o.width, o.height, o.media_type, utcnow(), o.etag])


def upload_totals(db: duckdb.DuckDBPyConnection, objects: list[str]) -> tuple[int, int]:
    """(count, bytes) of these objects recorded as uploaded."""
    if not objects:
        return 0, 0
    row = db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM uploads WHERE list_contains(?::VARCHAR[], object)",
                     [objects]).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
