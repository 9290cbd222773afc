"""Before anything is sent: bring the state file up to this manifest's expansion.

``prepare(db, ...)`` runs on the store's writer thread. It decides whether the expansion in
the state file is this manifest's (the *fingerprint*: a digest of the manifest, its input
files, the probed sizes, the pricing file and the code that expands), ingests the items when
it is not, records the run, recovers what a killed run left in flight, applies the spending
options that reset items (``force``, ``retry_failed``, ``retry_errors``, ``retry_ambiguous``;
within the pilot selection of ``steps``/``limit`` when given), blocks what waits on failures,
and returns what the run loop needs to start.

The fingerprint hashes the source of every pixbatch module the expansion can reach
(``expansion_modules``: the import closure of the expansion's roots, found by reading the
package), so moving or adding a module can never leave a stale scope in use.
"""

from __future__ import annotations

import ast
import hashlib
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
    h.update(f"\nprobes {st.probes_fingerprint(db)}\n".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Position:
    """Where the money stands before sending: what is charged, and what the rest will cost at least."""

    totals: st.Totals
    pending: st.Cost  # PENDING items of this expansion
    in_flight_low: int  # least cost of the items of any run left SUBMITTING or SUBMITTED
    in_flight: int  # how many there are (paid for, or being paid for)


def position(db: Any, scope: str, sel: st.Selection | None = None) -> Position:
    """The money position before sending; ``sel`` (``--steps``/``--limit``): only the selected items are to send."""
    return Position(st.totals(db), st.pending_cost(db, scope, sel), st.in_flight_low_micros(db), st.in_flight_count(db))


@dataclass(frozen=True)
class Prepared:
    scope: str
    position: Position
    ambiguous_now: int  # items a killed run left in doubt, found now
    estimate: tuple[int, int]  # low, high of the whole expansion
    aliases: dict[str, list[str]]  # key -> further output names of identical requests
    selection: st.Selection | None = None  # the items this run may send (--steps, --limit); None: all
    requeued: st.Requeued | None = None  # what the retry options made PENDING again


def prepare(db: Any, *, manifest: Any, options: RunOptions, run_id: str, budget: int | None, table: PriceTable,
            expand: Callable[[Callable[[str], Any] | None], Iterable[Any]]) -> Prepared:
    """On the writer thread, before anything is sent: ingest, record the run, recover, reset, totals."""
    steps_order = [s.id for s in manifest.steps]
    fingerprint = expansion_fingerprint(db, manifest, options.pricing_path)
    last = st.last_run(db)
    scope = None
    if fingerprint is not None and last and last.scope and last.fingerprint == fingerprint:
        # same manifest, input files, probed sizes and code as the last run, whose row is
        # written only after its ingest committed: its scope is this expansion's
        if st.scope_size(db, last.scope):
            scope = last.scope
    if scope is None:
        from ..manifest.names import NameCheck

        probes = st.probed_sizes(db)
        sizes = probes.get if probes else None
        # output names are checked on the first walk of the expansion (not one of their own)
        # a manifest loaded without its output-name walk (load_manifest_shallow) has its names
        # checked here, on the expansion's first walk, and only when that walk is needed at all
        names = NameCheck(manifest) if not manifest.names_checked else None
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
            if not (last and last.scope == scope and st.scope_size(db, scope)):
                st.ingest(db, expand(sizes), scope, table, steps_order)
    path = Path(manifest.path)
    manifest_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    st.start_run(db, st.RunStart(run_id, str(manifest.path), manifest_sha, options.base_url, budget, os.getpid(),
                                 {**options.recorded(), "scope": scope, "fingerprint": fingerprint}))
    ambiguous_now = st.recover(db, run_id)
    sel = None
    if options.steps is not None or options.limit is not None:
        chosen = [s for s in steps_order if options.steps is None or s in options.steps]
        sel = st.selection(db, scope, chosen, options.limit)
    requeued = st.requeue(db, scope, run_id, force=options.force, retry_failed=options.retry_failed,
                          retry_errors=options.retry_errors, retry_ambiguous=options.retry_ambiguous, sel=sel)
    st.block_downstream(db, scope, run_id)
    est = st.scope_cost(db, scope)
    st.record_estimate(db, run_id, est.low_micros, est.high_micros)
    return Prepared(scope=scope, position=position(db, scope, sel), ambiguous_now=ambiguous_now,
                    estimate=(est.low_micros, est.high_micros), aliases=st.alias_names(db, steps_order),
                    selection=sel, requeued=requeued)
