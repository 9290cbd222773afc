"""Numbered, transactional schema migrations for the DuckDB state file.

``connect(path)`` opens (creating if needed) a state file and applies, once each and in
order, every migration it has not seen. Each migration runs in one transaction together
with its row in ``schema_migrations``: a migration that fails leaves the file as it was.
This is the only place that changes the schema. Append new migrations at the end; never
edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from .errors import StateError, StateLocked

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_probe_cache(db: duckdb.DuckDBPyConnection) -> None:
    # estimate probes image sizes over HTTP; caching them makes a second estimate free.
    # A failed probe is cached too (error set), so one bad URL is reported, not refetched
    # every time; `estimate --refresh-probes` retries them.
    db.execute(
        """
        CREATE TABLE probes (
            url        VARCHAR PRIMARY KEY,
            width      INTEGER,
            height     INTEGER,
            format     VARCHAR,
            bytes_read INTEGER,
            error      VARCHAR,
            probed_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
        )
        """
    )


def applied(db: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY id").fetchall()]


def migrate(db: duckdb.DuckDBPyConnection, migrations: list[tuple[str, Migration]] | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    migrations = MIGRATIONS if migrations is None else migrations
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    done = set(applied(db))
    now: list[str] = []
    for i, (name, fn) in enumerate(migrations, start=1):
        if name in done:
            continue
        db.execute("BEGIN TRANSACTION")
        try:
            fn(db)
            db.execute("INSERT INTO schema_migrations (id, name) VALUES (?, ?)", [i, name])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        now.append(name)
    return now


def connect(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a state file, migrated to the latest schema (read-only files are not migrated)."""
    path = Path(path)
    if read_only and not path.exists():
        raise StateError(f"state file {path} does not exist; run `pixbatch run` (or `estimate`) first, or pass --state.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        msg = str(exc)
        if "lock" in msg.lower():
            raise StateLocked(
                f"state file {path} is in use by another pixbatch process ({_holder(msg)}). "
                "Wait for it to finish, stop it, or use another --state file."
            ) from None
        raise StateError(f"cannot open state file {path}: {msg}") from None
    except duckdb.Error as exc:
        raise StateError(f"{path} is not a usable pixbatch state file: {exc}") from None
    if not read_only:
        try:
            migrate(db)
        except duckdb.Error as exc:
            db.close()
            raise StateError(f"cannot migrate state file {path}: {exc}") from None
    return db


def _holder(msg: str) -> str:
    import re

    m = re.search(r"PID (\d+)", msg)
    return f"PID {m.group(1)}" if m else "another process"
