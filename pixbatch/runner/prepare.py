"""Before anything is sent: bring the state file up to this manifest's expansion.

``prepare(db, ...)`` runs on the store's writer thread. It decides whether the expansion in
the state file is this manifest's (the *fingerprint*: a digest of the manifest, its input
files, the probed sizes, the pricing file and the code that expands), ingests the items when
it is not, records the run, recovers what a killed run left in flight, applies the spending
options that reset items (``force``, ``retry_errors``, ``retry_ambiguous``), blocks what
waits on failures, and returns what the run loop needs to start.

The fingerprint hashes the source of every pixbatch module the expansion can reach
(``expansion_modules``: the import closure of the expansion's roots, found by reading the
package), so moving or adding a module can never leave a stale scope in use.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import state as st
from ..pricing import PriceTable
from .options import RunOptions

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# what an expansion's items depend on: the expansion, the manifest model it reads, the prices it stores
EXPANSION_ROOTS = ("pixbatch.expand", "pixbatch.manifest", "pixbatch.pricing")


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for p in (PACKAGE_DIR / rel / "__init__.py", (PACKAGE_DIR / rel).with_suffix(".py")):
        if p.is_file():
            return p
    return None


def _imports(name: str, path: Path) -> Iterator[str]:
    """The pixbatch modules ``name`` (at ``path``) imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "pixbatch":
                continue
            yield mod
            for alias in node.names:  # `from . import state` names a module
                yield f"{mod}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "pixbatch")


@lru_cache(maxsize=1)
def expansion_modules(roots: tuple[str, ...] = EXPANSION_ROOTS) -> tuple[Path, ...]:
    """Every module file reachable by import from ``roots`` (a package includes its modules), sorted."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue  # a name imported from a module, not a module
        seen[name] = path
        todo.extend(_imports(name, path))
        if path.name == "__init__.py" and name in roots:
            todo.extend(f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__")
        parent = name.rpartition(".")[0]
        if parent and parent != "pixbatch":
            todo.append(parent)  # importing a submodule runs its package's __init__
    return tuple(sorted(seen.values()))


def expansion_fingerprint(db: Any, manifest: Any, pricing_path: Path | None) -> str | None:
    """A digest of everything the expansion depends on, or None when it cannot be known.

    The manifest as loaded (its repr: steps, defaults, inline inputs, paths), the bytes of
    its ``from:`` files, the probed sizes in the state file, the pricing file and the code
    that expands. Equal fingerprints give equal expansions, so a resume of an unchanged
    manifest reuses the last run's scope instead of walking a million items again.
    """
    h = hashlib.sha256(b"pixbatch-expansion-1\n")
    try:
        h.update(repr(manifest).encode())
        for src in manifest.sources:
            path = getattr(src, "path", None)
            if path is not None:
                h.update(f"\nfile {path}\n".encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        for module in expansion_modules():
            h.update(f"\nmodule {module.relative_to(PACKAGE_DIR)}\n".encode() + module.read_bytes())
        if pricing_path is not None:
            h.update(b"\npricing\n" + Path(pricing_path).read_bytes())
    except (OSError, ValueError):
        return None
    n, digest = db.execute("SELECT count(*), coalesce(sum(hash(url, width, height)::HUGEINT), 0)::VARCHAR FROM probes "
                           "WHERE error IS NULL AND width IS NOT NULL").fetchone()
    h.update(f"\nprobes {n} {digest}\n".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Position:
    """Where the money stands before sending: what is charged, and what the rest will cost at least."""

    totals: st.Totals
    pending: int  # PENDING items of this expansion
    pending_low: int
    pending_high: int
    in_flight: int  # items of any run left SUBMITTING or SUBMITTED (paid for or being paid for)
    in_flight_low: int


def position(db: Any, scope: str) -> Position:
    low, high, n_left = db.execute(
        "SELECT coalesce(sum(est_low_micros), 0), coalesce(sum(est_high_micros), 0), count(*) FROM items "
        "WHERE scope = ? AND state = 'PENDING'", [scope]).fetchone()
    n_flight, flight_low = db.execute("SELECT count(*), coalesce(sum(est_low_micros), 0) FROM items WHERE state IN "
                                      "('SUBMITTING', 'SUBMITTED')").fetchone()
    return Position(st.totals(db), int(n_left), int(low), int(high), int(n_flight), int(flight_low))


@dataclass(frozen=True)
class Prepared:
    scope: str
    position: Position
    ambiguous_now: int  # items a killed run left in doubt, found now
    estimate: tuple[int, int]  # low, high of the whole expansion
    aliases: dict[str, list[str]]  # key -> further output names of identical requests


def prepare(db: Any, *, manifest: Any, options: RunOptions, run_id: str, budget: int | None, table: PriceTable,
            expand: Callable[[Callable[[str], Any] | None], Iterable[Any]], check_names: bool) -> Prepared:
    """On the writer thread, before anything is sent: ingest, record the run, recover, reset, totals."""
    steps_order = [s.id for s in manifest.steps]
    fingerprint = expansion_fingerprint(db, manifest, options.pricing_path)
    last = db.execute("SELECT json_extract_string(options, '$.scope'), json_extract_string(options, "
                      "'$.fingerprint') FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    scope = None
    if fingerprint is not None and last and last[0] and last[1] == fingerprint:
        # same manifest, input files, probed sizes and code as the last run, whose row is
        # written only after its ingest committed: its scope is this expansion's
        if db.execute("SELECT count(*) FROM items WHERE scope = ?", [last[0]]).fetchone()[0]:
            scope = last[0]
    if scope is None:
        from ..manifest.names import NameCheck

        probes = {u: (w, h) for u, w, h in db.execute(
            "SELECT url, width, height FROM probes WHERE error IS NULL AND width IS NOT NULL").fetchall()}
        sizes = probes.get if probes else None
        # output names are checked on the first walk of the expansion (not one of their own)
        names = NameCheck(manifest) if check_names or not manifest.names_checked else None
        first_walk = names.wrap(expand(sizes)) if names else expand(sizes)

        def check() -> None:
            if names:
                names.verify()

        if last is None and fingerprint is not None:
            # a fresh state file: one walk (ingest). The fingerprint names the expansion as
            # well as its digest would (equal fingerprints, equal expansions); a later run
            # whose fingerprint differs computes the digest, which differs, and ingests again
            scope = "f" + fingerprint[:31]
            st.ingest(db, first_walk, scope, table, steps_order, before_commit=check)
        else:
            scope, _n = st.expansion_scope(first_walk)
            check()
            have = db.execute("SELECT count(*) FROM items WHERE scope = ?", [scope]).fetchone()[0]
            if not (last and last[0] == scope and have):
                st.ingest(db, expand(sizes), scope, table, steps_order)
    path = Path(manifest.path)
    manifest_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    db.execute("INSERT INTO runs (run_id, manifest_path, manifest_sha256, base_url, budget_micros, outcome, pid, "
               "options) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
               [run_id, str(manifest.path), manifest_sha, options.base_url, budget, os.getpid(),
                json.dumps({**options.recorded(), "scope": scope, "fingerprint": fingerprint})])
    ambiguous_now = st.recover(db, run_id)
    _reset(db, options, scope, run_id)
    st.block_downstream(db, scope, run_id)
    est = db.execute("SELECT coalesce(sum(est_low_micros), 0), coalesce(sum(est_high_micros), 0) FROM items "
                     "WHERE scope = ?", [scope]).fetchone()
    db.execute("UPDATE runs SET estimate_low_micros = ?, estimate_high_micros = ? WHERE run_id = ?",
               [est[0], est[1], run_id])
    aliases: dict[str, list[str]] = {}
    for k, name in db.execute("SELECT key, output_name FROM aliases WHERE list_contains(?::VARCHAR[], step) "
                              "ORDER BY step, idx", [steps_order]).fetchall():
        aliases.setdefault(k, []).append(name)
    return Prepared(scope=scope, position=position(db, scope), ambiguous_now=ambiguous_now,
                    estimate=(int(est[0]), int(est[1])), aliases=aliases)


def _reset(db: Any, options: RunOptions, scope: str, run_id: str) -> None:
    """The spending options that send finished or doubtful items again, in one transaction."""
    db.execute("BEGIN TRANSACTION")
    if options.force:
        db.execute("UPDATE items SET state = 'PENDING', request_id = NULL, gateway_status = NULL, error = NULL, "
                   "media_url = NULL, media_type = NULL, polling_path = NULL, run_id = ? WHERE scope = ? AND "
                   "state IN ('COMPLETED', 'FAILED', 'ERROR', 'FAILED_VALIDATION', 'BLOCKED')",
                   [run_id, scope])
    if options.retry_errors and not options.force:
        # ERROR is the gateway's own failure and is not charged: sending again costs nothing extra
        db.execute("UPDATE items SET state = 'PENDING', request_id = NULL, gateway_status = NULL, error = NULL, "
                   "media_url = NULL, media_type = NULL, polling_path = NULL, run_id = ? WHERE scope = ? AND "
                   "state = 'ERROR'", [run_id, scope])
    if options.retry_ambiguous or options.retry_errors:
        db.execute("UPDATE items SET state = 'PENDING', error = NULL WHERE scope = ? AND state = 'BLOCKED'", [scope])
    if options.retry_ambiguous:
        keys = [r[0] for r in db.execute("SELECT key FROM items WHERE scope = ? AND state = 'AMBIGUOUS'",
                                         [scope]).fetchall()]
        if keys:
            # the old attempt's reservation stays counted (it may have been charged)
            st.abandon(db, keys, run_id)
            db.execute("UPDATE items SET state = 'PENDING', reserved_micros = 0, error = NULL, run_id = ? "
                       "WHERE list_contains(?::VARCHAR[], key)", [run_id, keys])
    db.execute("COMMIT")
