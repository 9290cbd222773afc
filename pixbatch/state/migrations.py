"""Numbered, transactional schema migrations for the DuckDB state file.

``migrate(db)`` (which ``connection.connect`` calls when it opens a file) applies, once each
and in order, every migration the file has not seen. Each migration runs in one transaction
together with its row in ``schema_migrations``: a migration that fails leaves the file as it
was. This is the only place that changes the schema. Append new migrations at the end; never
edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from ..errors import StateError

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



@migration
def m002_run_state(db: duckdb.DuckDBPyConnection) -> None:
    # What makes `run` resumable: one row per unique request (items, keyed by the item
    # key), every submit attempt with its request_id (attempts), an append-only log of
    # every state change and HTTP exchange (events), and the files written (outputs).
    # Money columns are integer micro-dollars.
    #
    # items.state, pixbatch's own lifecycle of a request:
    #   PENDING -> SUBMITTING (intent + reservation committed before the POST)
    #           -> SUBMITTED  (request_id committed on 202; gateway_status QUEUED/PROCESSING)
    #           -> COMPLETED | FAILED | ERROR   (the gateway's terminal status)
    #   SUBMITTING found on resume       -> AMBIGUOUS (may have been accepted and charged)
    #   400 from the gateway             -> FAILED_VALIDATION (not charged)
    #   upstream item FAILED/ERROR/...   -> BLOCKED (error says why)
    db.execute(
        """
        CREATE TABLE runs (
            run_id               VARCHAR PRIMARY KEY,
            started_at           TIMESTAMP NOT NULL DEFAULT current_timestamp,
            finished_at          TIMESTAMP,
            manifest_path        VARCHAR,
            manifest_sha256      VARCHAR,
            base_url             VARCHAR,
            budget_micros        BIGINT,
            estimate_low_micros  BIGINT,
            estimate_high_micros BIGINT,
            outcome              VARCHAR,   -- running|completed|interrupted|budget|balance|auth|failed
            pid                  INTEGER,
            options              JSON
        )
        """
    )
    db.execute(
        """
        CREATE TABLE items (
            key             VARCHAR PRIMARY KEY,
            step            VARCHAR NOT NULL,
            op              VARCHAR NOT NULL,
            idx             BIGINT NOT NULL,      -- position in its step's expansion
            body            JSON NOT NULL,        -- canonical body (upstream placeholders kept)
            input_id        VARCHAR,
            output_name     VARCHAR,
            upstream        VARCHAR,              -- key of the item feeding this one
            input_width     INTEGER,
            input_height    INTEGER,
            est_low_micros  BIGINT NOT NULL,
            est_high_micros BIGINT NOT NULL,
            tier            VARCHAR,              -- price tier name (estimated, then actual)
            state           VARCHAR NOT NULL DEFAULT 'PENDING',
            request_id      VARCHAR,
            gateway_status  VARCHAR,
            error           VARCHAR,
            reserved_micros BIGINT NOT NULL DEFAULT 0,
            charged_micros  BIGINT,               -- set at a terminal status
            media_url       VARCHAR,
            media_type      VARCHAR,
            output_width    INTEGER,
            output_height   INTEGER,
            polls           INTEGER NOT NULL DEFAULT 0,
            submitted_at    TIMESTAMP,            -- 202 received
            started_at      TIMESTAMP,            -- first seen PROCESSING (or terminal)
            finished_at     TIMESTAMP,            -- terminal status seen
            updated_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
            run_id          VARCHAR               -- last run that changed it
        )
        """
    )
    db.execute("CREATE INDEX items_step ON items (step)")
    db.execute("CREATE INDEX items_state ON items (state)")
    db.execute(
        """
        CREATE TABLE aliases (          -- the same request appearing again (another step or place)
            key         VARCHAR NOT NULL,
            step        VARCHAR NOT NULL,
            idx         BIGINT NOT NULL,
            output_name VARCHAR NOT NULL,
            PRIMARY KEY (step, idx)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE attempts (
            key             VARCHAR NOT NULL,
            n               INTEGER NOT NULL,     -- 1, 2, ... per key
            run_id          VARCHAR NOT NULL,
            intent_at       TIMESTAMP NOT NULL,   -- committed before the POST left
            reserved_micros BIGINT NOT NULL,
            request_id      VARCHAR,              -- committed when the 202 arrived
            accepted_at     TIMESTAMP,
            http_status     INTEGER,
            outcome         VARCHAR,              -- accepted|rejected|ambiguous|...
            PRIMARY KEY (key, n)
        )
        """
    )
    db.execute("CREATE SEQUENCE events_seq")
    db.execute(
        """
        CREATE TABLE events (             -- append-only; never updated or deleted
            seq    BIGINT PRIMARY KEY DEFAULT nextval('events_seq'),
            ts     TIMESTAMP NOT NULL DEFAULT current_timestamp,
            run_id VARCHAR,
            key    VARCHAR,
            kind   VARCHAR NOT NULL,        -- state|http|budget|run|download|...
            detail JSON                     -- never holds the API key
        )
        """
    )
    db.execute(
        """
        CREATE TABLE outputs (
            key           VARCHAR NOT NULL,
            path          VARCHAR NOT NULL,   -- relative to the output directory
            sha256        VARCHAR NOT NULL,
            bytes         BIGINT NOT NULL,
            width         INTEGER,
            height        INTEGER,
            media_type    VARCHAR,
            downloaded_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (key, path)
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


@migration
def m003_item_scope_attempts(db: duckdb.DuckDBPyConnection) -> None:
    # items.scope: digest of the expansion (manifest) an item was last part of, so `run` and
    # `status` work on what the current manifest asks for, not on items a previous version
    # of it had (a state file outlives manifest edits; completed keys are still reused).
    # items.attempts: submit attempts so far (the next attempts.n), without scanning attempts.
    # items.polling_path: the path of the polling_url the 202 gave (polled under base_url).
    # (DuckDB cannot add a NOT NULL column to an indexed table: these are nullable.)
    # items_state goes: DuckDB rewrites an ART index entry on every update of an indexed
    # column, which made each group commit of state changes several times slower (measured when
    # this shipped: 256 row updates 39 ms with the index, 6 ms without); filters on state are
    # column scans anyway.
    db.execute("DROP INDEX items_state")
    db.execute("ALTER TABLE items ADD COLUMN scope VARCHAR")
    db.execute("ALTER TABLE items ADD COLUMN attempts INTEGER DEFAULT 0")
    db.execute("ALTER TABLE items ADD COLUMN polling_path VARCHAR")


@migration
def m004_submit_log(db: duckdb.DuckDBPyConnection) -> None:
    # The two facts a crash must never lose become rows of one append-only log, each batch
    # of them committed by a single INSERT before the runner goes on (see pixbatch/state/
    # __init__.py, "What makes a run resumable"):
    #   intent:  a submit about to be sent (before the POST leaves), with its reservation;
    #   accepted | rejected | ambiguous: its outcome, as soon as it is known;
    #   abandoned: an ambiguous attempt given up by --retry-ambiguous (its reservation stays
    #   counted: it may have been charged).
    # items is the materialized state, committed in bulk a fraction of a second later;
    # state.recover() rebuilds in-flight items from the log after a crash. attempts, the
    # table of m002 (an INSERT OR REPLACE at every intent and again at every outcome, on a
    # primary key: a quarter of the state writer's time), becomes a view of the log with
    # the same columns (plus polling_path); its rows move into the log.
    # runs.outcome gains "killed": a run that never finished, as the next run's recover() finds it.
    db.execute(
        """
        CREATE TABLE submit_log (
            key             VARCHAR NOT NULL,
            n               INTEGER NOT NULL,     -- 1, 2, ... per key (items.attempts)
            run_id          VARCHAR NOT NULL,
            ts              TIMESTAMP NOT NULL,
            event           VARCHAR NOT NULL,     -- intent|accepted|rejected|ambiguous|abandoned
            reserved_micros BIGINT NOT NULL,      -- the submit's budget reservation
            request_id      VARCHAR,              -- accepted: the 202's request_id
            http_status     INTEGER,
            polling_path    VARCHAR               -- accepted: the path of the 202's polling_url
        )
        """
    )
    db.execute("INSERT INTO submit_log SELECT key, n, run_id, intent_at, 'intent', reserved_micros, NULL, NULL, NULL "
               "FROM attempts")
    db.execute("INSERT INTO submit_log SELECT key, n, run_id, coalesce(accepted_at, intent_at), "
               "CASE WHEN outcome = 'abandoned' THEN 'ambiguous' ELSE outcome END, reserved_micros, request_id, "
               "http_status, NULL FROM attempts WHERE outcome IN ('accepted', 'rejected', 'ambiguous', 'abandoned')")
    db.execute("INSERT INTO submit_log SELECT key, n, run_id, intent_at, 'abandoned', reserved_micros, NULL, NULL, "
               "NULL FROM attempts WHERE outcome = 'abandoned'")
    db.execute("DROP TABLE attempts")
    db.execute(
        """
        CREATE VIEW attempts AS
        SELECT i.key, i.n, i.run_id, i.ts AS intent_at, i.reserved_micros, o.request_id,
               CASE WHEN o.event = 'accepted' THEN o.ts END AS accepted_at, o.http_status,
               CASE WHEN ab.key IS NOT NULL THEN 'abandoned' ELSE coalesce(o.event, 'pending') END AS outcome,
               o.polling_path
        FROM submit_log i
        LEFT JOIN (SELECT * FROM submit_log WHERE event IN ('accepted', 'rejected', 'ambiguous')) o
               ON o.key = i.key AND o.n = i.n
        LEFT JOIN (SELECT DISTINCT key, n FROM submit_log WHERE event = 'abandoned') ab
               ON ab.key = i.key AND ab.n = i.n
        WHERE i.event = 'intent'
        """
    )


@migration
def m005_object_storage(db: duckdb.DuckDBPyConnection) -> None:
    # Local input files reach the gateway through an S3-compatible bucket (pixbatch.storage):
    # uploads records each object pixbatch put there (or found already there), named by the
    # sha256 of the file's bytes, so identical files upload once and a re-run uploads
    # nothing. No URL is stored: a presigned URL carries a signature (and, with temporary
    # credentials, a session token), so it is signed again at send time, never persisted.
    # outputs.etag: the ETag of an output written to a bucket (output_dir: s3://...; then
    # outputs.path is the object's full s3:// URI); one LIST of the prefix tells a resume
    # which outputs are missing or changed without reading them. NULL for local files.
    db.execute(
        """
        CREATE TABLE uploads (
            object      VARCHAR PRIMARY KEY,  -- s3://bucket/<prefix><sha256>.<ext>
            sha256      VARCHAR NOT NULL,     -- of the file's bytes (the items' pixbatch://file/<sha256>)
            bytes       BIGINT NOT NULL,
            media_type  VARCHAR,
            etag        VARCHAR,
            how         VARCHAR NOT NULL,     -- put | found (already in the bucket: not uploaded again)
            uploaded_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )
        """
    )
    db.execute("ALTER TABLE outputs ADD COLUMN etag VARCHAR")


@migration
def m006_secrets(db: duckdb.DuckDBPyConnection) -> None:
    # Secrets of the state file (never exported, printed or logged): "webhook" signs the
    # callback URL of each submit (runner/callbacks.py), so that a callback can be trusted to
    # come from a request this state file sent, across runs.
    db.execute("CREATE TABLE secrets (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")


@migration
def m007_item_vars(db: duckdb.DuckDBPyConnection) -> None:
    # items.vars: the matrix values (and inherited template variables) an item was made with, as
    # JSON, so that a report can caption an output with what was asked ("color: red, seed: 2")
    # without the manifest. Items ingested before this migration have none (NULL).
    db.execute("ALTER TABLE items ADD COLUMN vars JSON")


@migration
def m008_items_unindexed(db: duckdb.DuckDBPyConnection) -> None:
    # items loses its two ART indexes: the primary key on key, and items_step. An ART index
    # lives in memory whenever rows go in (about 70 bytes a key: 69 MB at a million items, more
    # than half of a run's 128 MB buffer pool, ~700 MB at ten million), and it cost a third of
    # the ingest's write time (1M rows in batches of 25,000: 70,000 rows/s with it, 106,000
    # without). Nothing needs it: every write goes by rowid or by a join (a hash join on the
    # few rows written); keys are unique because the ingest writes each one once (a KeySet of
    # the keys walked, or an ANTI JOIN against the file; the kill-during-ingest test checks it).
    # items_step indexed a column with a handful of values (a scan with zonemaps does better).
    sql = db.execute("SELECT sql FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = 'items'").fetchone()
    pk = '"key" VARCHAR PRIMARY KEY'
    if sql is None or pk not in sql[0]:
        raise StateError(f"the items table has an unexpected shape: {sql[0] if sql else 'missing'}")
    db.execute("DROP INDEX IF EXISTS items_step")
    db.execute(sql[0].replace("CREATE TABLE items(", "CREATE TABLE items_m008(", 1).replace(pk, '"key" VARCHAR NOT NULL', 1))
    db.execute("INSERT INTO items_m008 SELECT * FROM items ORDER BY rowid")
    db.execute("DROP TABLE items")
    db.execute("ALTER TABLE items_m008 RENAME TO items")


#: the items' columns m009 redefines: long, distinct strings (written once by the ingest, read a page
#: at a time) with zstd; the JSON columns as VARCHAR (DuckDB parses every JSON value it stores)
M009_COLUMNS = (('"key" VARCHAR', "\"key\" VARCHAR USING COMPRESSION 'zstd'"),
                ("body JSON", "body VARCHAR USING COMPRESSION 'zstd'"),
                ("input_id VARCHAR", "input_id VARCHAR USING COMPRESSION 'zstd'"),
                ("output_name VARCHAR", "output_name VARCHAR USING COMPRESSION 'zstd'"),
                ("upstream VARCHAR", "upstream VARCHAR USING COMPRESSION 'zstd'"),
                ("vars JSON", "vars VARCHAR"))


@migration
def m009_items_compact(db: duckdb.DuckDBPyConnection) -> None:
    # The ingest's write time, 1M rows in transactions of 50,000 beside a busy Python thread:
    # - key, body, input_id, output_name and upstream stored with zstd instead of DuckDB's default
    #   choice (dictionary + FSST, which spent most of the time compressing them): in batches of
    #   10,000, 88,500 -> 104,600 rows/s, and the file 95 -> 66 MB;
    # - body and vars as VARCHAR, not JSON: DuckDB parses every value it stores in a JSON column
    #   (pixbatch writes them, canonical; json_extract reads VARCHAR alike): 151,000 -> 159,000 rows/s.
    # A DuckDB that refuses zstd for a string column keeps the table as it is.
    sql = db.execute("SELECT sql FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = 'items'").fetchone()
    if sql is None or not sql[0].startswith("CREATE TABLE items("):
        raise StateError(f"the items table has an unexpected shape: {sql[0] if sql else 'missing'}")
    if not _zstd_columns():
        return  # no per-column compression in this DuckDB: the default choice stays
    new = sql[0].replace("CREATE TABLE items(", "CREATE TABLE items_m009(", 1)
    for old, col in M009_COLUMNS:
        for end in (" NOT NULL,", ",", ");"):
            if f"{old}{end}" in new:
                new = new.replace(f"{old}{end}", f"{col}{end}", 1)
                break
        else:
            raise StateError(f"the items table has an unexpected shape (no {old}): {sql[0]}")
    db.execute(new)
    db.execute("INSERT INTO items_m009 SELECT * FROM items")  # in order: a scan keeps it (preserve_insertion_order)
    db.execute("DROP TABLE items")
    db.execute("ALTER TABLE items_m009 RENAME TO items")


def _zstd_columns() -> bool:
    """Whether this DuckDB takes ``USING COMPRESSION 'zstd'`` on a string column (asked of a
    throwaway database: a refusal inside a migration's transaction would abort it)."""
    probe = duckdb.connect(":memory:")
    try:
        probe.execute("CREATE TABLE t (s VARCHAR USING COMPRESSION 'zstd')")
        return True
    except duckdb.Error:
        return False
    finally:
        probe.close()
