"""Opening a state file: attached with this version's row group size, migrated, and refused when
it is not a pixbatch state file (another DuckDB database, a SQLite file, a newer schema, a damaged
file) or is held by another process.

``connect(path)`` opens (creating if needed) a state file and migrates it
(``migrations.migrate``); ``cursor(db)`` is another connection to it for another thread;
``reading(path)`` turns a damaged file found out by a read into a ``StateError`` that says so.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from ..errors import StateError, StateLocked
from .memory import retry_roomier
from .migrations import MIGRATIONS, applied, migrate


#: rows per row group written (DuckDB's default: 122,880; groups already in a file keep theirs). A
#: transaction's full row groups go straight into the file, compressed once, the rest through the
#: WAL: of the ingest's 50,000-row commits 49,152 rows go straight in, at the default none (1M rows
#: beside the walk: 121,000 -> 155,000 rows/s, commits 3.3 -> 0.2 s)
ROW_GROUP_SIZE = 24_576
#: the name a state file is attached under (``USE``d: queries name its tables unqualified)
ALIAS = "state"


def _attach(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection to ``path`` (attached to an in-memory DuckDB, the only way to give it a row
    group size), used as the default database."""
    db = duckdb.connect(":memory:")
    try:
        quoted = str(path).replace("'", "''")
        db.execute(f"ATTACH '{quoted}' AS {ALIAS} (ROW_GROUP_SIZE {ROW_GROUP_SIZE}{', READ_ONLY' if read_only else ''})")
        db.execute(f"USE {ALIAS}")
        # where DuckDB spills beyond its memory limit: beside the file, as when it is opened directly
        # (an in-memory database's default is ./.tmp, in whatever directory the user is in)
        db.execute(f"SET temp_directory = '{quoted}.tmp'")
    except BaseException:
        db.close()
        raise
    return db


#: DuckDB's memory limit while migrations run: a migration that rebuilds the items table (m008,
#: m009) of a million-item file otherwise caches what it reads and writes up to 80 % of the
#: machine (m009 at 1M: 1,304 MB peak with an ORDER BY, 413 MB without; 207 MB at 128 MB, +1 s)
MIGRATION_MEMORY_LIMIT = "128MB"


def _migrate_small(db: duckdb.DuckDBPyConnection) -> None:
    """``migrate`` within ``MIGRATION_MEMORY_LIMIT`` (spilling beside the file); a migration that
    cannot is rolled back whole, and tried again with room (``memory.retry_roomier``)."""
    before = db.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    db.execute(f"SET memory_limit = '{MIGRATION_MEMORY_LIMIT}'")
    try:
        retry_roomier(lambda: migrate(db), db)
    finally:
        db.execute(f"SET memory_limit = '{before}'")


def cursor(db: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Another connection to the state file of ``db`` (for another thread), with the file as its default."""
    c = db.cursor()
    c.execute(f"USE {ALIAS}")
    return c


def connect(path: str | Path, *, read_only: bool = False, wait: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Open a state file, migrated to the latest schema (read-only files are not migrated).

    ``wait``: seconds to keep trying while another process holds the file (a `status` or
    `report` holds it for a fraction of a second); then ``StateLocked``.
    """
    import time

    path = Path(path)
    if read_only and not path.exists():
        raise StateError(f"state file {path} does not exist; run `pixbatch run` (or `estimate`) first, or pass --state.")
    deadline = time.monotonic() + wait
    other = _sniff(path)
    if other:  # DuckDB would open a SQLite file by downloading its sqlite scanner
        raise damaged(path, other)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the directory of state file {path}: {exc.strerror or exc}; "
                             "pass a --state file in a writable directory.") from None
        while True:
            try:
                db = _attach(path, read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
    except duckdb.IOException as exc:
        msg = str(exc)
        if "lock" in msg.lower():
            raise StateLocked(
                f"state file {path} is in use by another pixbatch process ({_holder(msg)}). "
                "Wait for it to finish, stop it, or use another --state file."
            ) from None
        raise damaged(path, exc) from exc
    except duckdb.Error as exc:
        if is_damage(exc):
            raise damaged(path, exc) from exc
        raise StateError(f"cannot open state file {path}: {_reason(exc)}") from exc
    try:
        # DuckDB draws a progress bar on stdout for queries over 2 s (an export of 1M items, an
        # ingest): that would corrupt `--json` output and the live display
        db.execute("SET enable_progress_bar = false")
        _identify(db, path, read_only)
        if not read_only:
            try:
                _migrate_small(db)
            except duckdb.Error as exc:
                raise StateError(f"cannot migrate state file {path}: {_reason(exc)}") from exc
        _check_schema(db, path, read_only)
    except BaseException as exc:
        db.close()
        if isinstance(exc, duckdb.Error):
            raise damaged(path, exc) from exc
        raise
    return db


# -- what a file must be to be read as a state file ---------------------------------------

#: DuckDB errors that mean the file (not the query) is broken: it cannot be read, its
#: checksums do not match, its storage cannot be deserialized
_DAMAGE: tuple[type[duckdb.Error], ...] = (duckdb.IOException, duckdb.InternalException, duckdb.FatalException,
                                           duckdb.SerializationException)


def is_damage(exc: BaseException) -> bool:
    """Whether a DuckDB error says the file is damaged (rather than that a query is wrong)."""
    return isinstance(exc, duckdb.Error) and (
        isinstance(exc, _DAMAGE) or type(exc) is duckdb.Error or "corrupt" in str(exc).lower())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def damaged(path: str | Path, exc: BaseException | str) -> StateError:
    """The StateError for a state file that cannot be read as one (``raise damaged(path, exc) from exc``)."""
    reason = exc if isinstance(exc, str) else _reason(exc)
    return StateError(f"state file {path} is damaged or not a pixbatch state file ({reason}). Restore it from a "
                      "backup, or pass another --state file (a new state file does not know what was already paid for).")


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Around reads of an open state file: a DuckDB error that says the file is damaged
    (a truncated file is found out only when a missing block is read) becomes ``damaged``."""
    try:
        yield
    except duckdb.Error as exc:
        if is_damage(exc):
            raise damaged(path, exc) from exc
        raise


def _sniff(path: Path) -> str | None:
    """What a file is when its first bytes say it cannot be a state file. A SQLite file must
    never reach DuckDB, which would download (or load) its sqlite scanner to open it."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:  # absent (a new state file), or unreadable: DuckDB says why
        return None
    if not head:
        return "the file is empty"
    if head.startswith(b"SQLite format 3"):
        return "it is a SQLite database"
    return None


def _names(db: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in db.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT temporary "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal AND NOT temporary"
    ).fetchall()}


def _identify(db: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
    """Refuse a DuckDB file of something else (never migrate it) or of a newer pixbatch."""
    names = _names(db)
    if not names:
        if read_only:
            raise damaged(path, "it holds no tables")
        return  # a new file
    if "schema_migrations" not in names:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise damaged(path, f"a DuckDB database of something else: it holds {shown} and no schema_migrations")
    known = {name for name, _ in MIGRATIONS}
    newer = [n for n in applied(db) if n not in known]
    if newer:
        raise StateError(f"state file {path} was written by a newer pixbatch (schema migration {newer[0]}); "
                         "upgrade pixbatch to read it.")


@functools.cache
def _expected() -> dict[str, frozenset[str]]:
    """Table (and view) -> columns of a state file migrated by this version (built once, in memory)."""
    db = duckdb.connect(":memory:")
    try:
        migrate(db)
        return _columns(db)
    finally:
        db.close()


def _columns(db: duckdb.DuckDBPyConnection) -> dict[str, frozenset[str]]:
    cols: dict[str, set[str]] = {}
    for table, column in db.execute("SELECT table_name, column_name FROM duckdb_columns() "
                                    "WHERE schema_name = 'main' AND NOT internal").fetchall():
        cols.setdefault(table, set()).add(column)
    return {t: frozenset(c) for t, c in cols.items()}


def _check_schema(db: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
    """Every table and column this version reads is there (a file whose tables were dropped or
    altered is damaged: said here, once, instead of as a failing query later)."""
    if read_only and len(applied(db)) < len(MIGRATIONS):
        return  # an older file opened read-only keeps the schema of its version
    have = _columns(db)
    for table, columns in _expected().items():
        if table not in have:
            raise damaged(path, f"it has no {table} table")
        missing = sorted(columns - have[table])
        if missing:
            raise damaged(path, f"its {table} table has no column {missing[0]}")


def _holder(msg: str) -> str:
    import re

    m = re.search(r"PID (\d+)", msg)
    return f"PID {m.group(1)}" if m else "another process"
