"""Export the state file's tables to Parquet or CSV, with DuckDB's own ``COPY``.

``export_state(state, out_dir, fmt)`` writes one file per table (``runs``, ``items``,
``aliases``, ``attempts``, ``submit_log``, ``events``, ``outputs``) as
``COPY (SELECT * FROM t ORDER BY ...) TO 'out_dir/t.parquet' (FORMAT parquet)``: DuckDB
streams the rows itself, so a state file of millions of items never passes through
Python. The rows are in a stable order (by key columns), the columns are the state
schema's, and nothing else is added. The state file is opened read-only.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .errors import OptionError, PixbatchError, StateError, StateLocked
from .state import open_for_reading, table_names
from .state.connection import reading

FORMATS = ("parquet", "csv")
EXPORT_MEMORY_LIMIT = "512MB"
#: table -> ORDER BY, in the order they are written
TABLES: dict[str, str] = {
    "runs": "started_at, run_id",
    "items": "step, idx, key",
    "aliases": "step, idx",
    "attempts": "key, n",  # a view of submit_log: one row per submit, intent and outcome side by side
    "submit_log": "ts, key, n, event",
    "events": "seq",
    "outputs": "path, key",
}


@dataclass(frozen=True, slots=True)
class Exported:
    table: str
    path: Path
    rows: int


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_db(db: duckdb.DuckDBPyConnection, out_dir: str | Path, fmt: str = "parquet",
              tables: tuple[str, ...] | None = None) -> tuple[Exported, ...]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    names = tables or tuple(TABLES)
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        raise ValueError(f"cannot export {', '.join(unknown)}; tables: {', '.join(TABLES)}")
    present = table_names(db)
    missing = [t for t in names if t not in present]
    if missing:
        raise StateError(f"the state file has no {', '.join(missing)} table yet; run `pixbatch run` first.")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create the export directory {out}: {exc.strerror or exc}; "
                          "choose a writable -o directory.") from None
    options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER true"
    written = []
    for t in names:
        target = out / f"{t}.{fmt}"
        try:
            db.execute(f"COPY (SELECT * FROM {t} ORDER BY {TABLES[t]}) TO {_literal(target)} ({options})")
        except duckdb.IOException as exc:  # a full disk, a read-only file system, a directory in the way
            if target.name not in str(exc):
                raise  # reading the state file failed (it is damaged): export_state says so
            with contextlib.suppress(OSError):
                if target.is_file():
                    target.unlink()  # no half-written file left behind
            raise PixbatchError(f"cannot write {target}: {_first_line(exc)}. Free some space or choose another "
                                f"-o directory; {len(written)} of {len(names)} tables were written.") from exc
        rows = db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        written.append(Exported(t, target, rows))
    return tuple(written)


def _first_line(exc: BaseException) -> str:
    """DuckDB's message, without the JSON it sometimes wraps the operating system's reason in."""
    text = str(exc)
    m = re.search(r'"exception_message":"((?:[^"\\]|\\.)*)"', text)
    if m:
        text = m.group(1).replace('\\"', '"')
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__


def export_state(state: str | Path, out_dir: str | Path, fmt: str = "parquet",
                 tables: tuple[str, ...] | None = None) -> tuple[Exported, ...]:
    """Write each table of the state file to ``out_dir/<table>.<fmt>``; returns what was written."""
    try:
        db = open_for_reading(state)
    except StateLocked as exc:
        raise StateLocked(f"{exc} Export after the run ends.") from None
    try:
        # DuckDB may use 80 % of the RAM by default, and a sorted COPY of a million items takes
        # well over a gigabyte of it. Bounded, it spills to a temp directory instead (slower)
        import tempfile

        db.execute(f"SET memory_limit = '{EXPORT_MEMORY_LIMIT}'")
        db.execute("SET temp_directory = ?", [str(Path(tempfile.gettempdir()) / "pixbatch-export-spill")])
        with reading(state):
            return export_db(db, out_dir, fmt, tables)
    finally:
        db.close()
