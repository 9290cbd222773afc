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
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import state as st
from ..expand_columns import column_walk
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

    The manifest as loaded (its repr: steps, defaults, inline inputs, paths; not its budget or
    output directory, which no item holds: raising the budget after a run stopped at it must
    not walk a million items again), the bytes of its ``from:`` files, the probed sizes in the
    state file, the pricing file and the code that expands. Equal fingerprints give equal
    expansions, so a resume of an unchanged manifest reuses the last run's scope instead of
    walking a million items again.
    """
    h = hashlib.sha256(b"pixbatch-expansion-1\n")
    try:
        h.update(repr(dataclasses.replace(manifest, budget_micros=None, output_dir=Path("/"))).encode())
        for src in manifest.sources:
            path = getattr(src, "path", None)
            if path is not None and getattr(src, "kind", None) != "dir":  # a folder's files: below
                h.update(f"\nfile {path}\n".encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        if manifest.has_local_inputs():  # local files: their content hashes are in the items
            from ..storage.phase import local_inputs_digest

            h.update(b"\nlocal\n" + local_inputs_digest(manifest))
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
    estimate: tuple[int, int]  # low, high of the expansion (of what is in the file so far, while ``ingest`` goes on)
    aliases: dict[str, list[str]]  # key -> further output names of identical requests
    ingest: st.Ingest | None = None  # the rest of the expansion, to stream in while the run works (None: all in)
    selection: st.Selection | None = None  # the items this run may send (--steps, --limit); None: all
    requeued: st.Requeued | None = None  # what the retry options made PENDING again
    plan: Any = None  # estimate.Estimate: paid, in flight, at risk, still to pay (what `pixbatch estimate` says)
    knowledge: Any = None  # knowledge.Knowledge: what completed items taught about sizes


#: items ingested before anything can be sent: an expansion that fits is checked (output names,
#: budget) and written whole first, exactly as without streaming; a larger one streams the rest
FIRST_BATCH = 10_000


def prepare(db: Any, *, manifest: Any, options: RunOptions, run_id: str, budget: int | None, table: PriceTable,
            expand: Callable[[Callable[[str], Any] | None], Iterable[Any]]) -> Prepared:
    """On the writer thread, before anything is sent: ingest (or its first batch), record the run,
    recover, reset, totals.

    Streaming: a fresh state file (no run yet), a changed expansion (another fingerprint), or a
    run whose expansion was not all read in when it stopped (same fingerprint, ``ingest``
    "partial"), ingests the first ``FIRST_BATCH``
    unique items here and hands the rest back (``Prepared.ingest``) to be streamed while the
    run sends. Options that reset items (``force``, ``retry_failed``, ``retry_errors``,
    ``retry_ambiguous``) read the whole expansion in first, so the reset sees every item it
    applies to; within the pilot selection of ``steps``/``limit`` when given.
    """
    steps_order = [s.id for s in manifest.steps]
    fingerprint = expansion_fingerprint(db, manifest, options.pricing_path)
    last = st.last_run(db)
    resets = options.force or options.retry_failed or options.retry_errors or options.retry_ambiguous
    scope = None
    ingest: st.Ingest | None = None
    if fingerprint is not None and last and last.scope and last.fingerprint == fingerprint:
        # same manifest, input files, probed sizes and code as the last run, whose row is
        # written only after its first batch committed: its scope is this expansion's
        if last.ingested and st.scope_size(db, last.scope):
            scope = last.scope
        elif not last.ingested:
            # that run stopped while reading its expansion in: walk it again from the start
            # (items already in the file keep their row and state; the rest are added)
            from ..manifest.names import NameCheck

            scope = last.scope
            probes = st.probed_sizes(db)
            names = NameCheck(manifest) if not manifest.names_checked else None
            walk = expand(probes.get if probes else None)
            ingest = st.Ingest(names.wrap(walk) if names else walk, scope, table, steps_order, names=names,
                               columns=column_walk(manifest, probes.get if probes else None, names))
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

        if fingerprint is not None:
            # a fresh state file, or a manifest (its files, the code) changed since the last run:
            # one walk (ingest), streamed. The fingerprint names the expansion as well as its
            # digest would (equal fingerprints, equal expansions). Keys already in the file keep
            # their row and state and take this scope as the walk passes them: at a million items
            # the run sends within seconds instead of after two walks and a one-transaction ingest
            scope = "f" + fingerprint[:31]
            ingest = st.Ingest(first_walk, scope, table, steps_order, names=names,
                               columns=column_walk(manifest, sizes, names))
        else:  # the fingerprint could not be computed (a file unreadable): the expansion's digest
            scope, _n = st.expansion_scope(first_walk)
            check()
            if not (last and last.scope == scope and st.scope_size(db, scope)):
                # one transaction (rolled back whole on failure): at a million items it can outgrow
                # the small buffer pool, and is then walked again with a roomier one
                st.retry_roomier(lambda: st.ingest(db, expand(sizes), scope, table, steps_order), db)
    if ingest is not None:
        # the first batch: checked whole (names, as each passes) before it is written
        ingest.write(db, ingest.take(max(1, min(FIRST_BATCH, options.ingest_batch))))
        while resets and not ingest.done:
            ingest.write(db, ingest.take(max(1, options.ingest_batch)))
    streaming = ingest is not None and not ingest.done
    path = Path(manifest.path)
    manifest_sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    st.start_run(db, st.RunStart(run_id, str(manifest.path), manifest_sha, options.base_url, budget, os.getpid(),
                                 {**options.recorded(), "scope": scope, "fingerprint": fingerprint,
                                  "ingest": "partial" if streaming else "complete"}))
    ambiguous_now = st.recover(db, run_id)
    sel = selection_of(options, steps_order)
    requeued = st.requeue(db, scope, run_id, force=options.force, retry_failed=options.retry_failed,
                          retry_errors=options.retry_errors, retry_ambiguous=options.retry_ambiguous, sel=sel)
    st.block_downstream(db, scope, run_id)
    est = st.scope_cost(db, scope)
    st.record_estimate(db, run_id, est.low_micros, est.high_micros)
    knowledge, plan = run_plan(db, scope, table, options.state_path or manifest.state_path, partial=streaming)
    pos = position(db, scope, sel)
    if sel is None:  # what is left to pay, as the plan prices it (a pilot's selection: its items' estimates)
        pos = Position(pos.totals, st.Cost(plan.to_pay_count, plan.low_micros, plan.high_micros), pos.in_flight_low,
                       pos.in_flight)
    return Prepared(scope=scope, position=pos, ambiguous_now=ambiguous_now,
                    estimate=(est.low_micros, est.high_micros), aliases=st.alias_names(db, steps_order),
                    ingest=ingest if streaming else None, plan=plan, knowledge=knowledge, selection=sel,
                    requeued=requeued)


def selection_of(options: RunOptions, steps_order: list[str]) -> st.Selection | None:
    """The pilot selection of ``--steps``/``--limit``: the first ``limit`` places of each selected
    step's expansion (an item's ``idx``), so it is known before the expansion is all read in."""
    if options.steps is None and options.limit is None:
        return None
    chosen = [s for s in steps_order if options.steps is None or s in options.steps]
    return st.Selection(tuple((s, None if options.limit is None else options.limit - 1) for s in chosen))


def run_plan(db: Any, scope: str, table: PriceTable, state_path: Any, *, partial: bool = False) -> tuple[Any, Any]:
    """(what completed items taught, the plan of ``scope``): the numbers `pixbatch estimate` gives for it.

    ``partial``: the expansion is still streaming in, so the plan covers what is in the file so far.
    """
    from dataclasses import replace

    from ..estimate import plan_from_groups
    from ..knowledge import learn

    knowledge = learn(st.size_observations(db), table)
    plan = plan_from_groups(st.plan_groups(db, scope), table, knowledge, state_path=str(state_path))
    if partial:
        plan = replace(plan, state_note=f"This plan covers the first {plan.item_count:,} items read; the rest of "
                                        "the manifest is read in while the run sends (`pixbatch estimate` prices "
                                        "all of it).")
    return knowledge, plan


def finish_ingest(db: Any, *, run_id: str, scope: str, steps: list[str]) -> tuple[tuple[int, int], dict[str, list[str]]]:
    """The streamed expansion is all in: record it (a resume reuses it), block what waits on
    failures, and return the expansion's estimate and aliases."""
    st.mark_ingested(db, run_id)
    db.execute("CHECKPOINT")  # the last batches, out of the small pool: the queries below need room
    st.block_downstream(db, scope, run_id)
    est = st.scope_cost(db, scope)
    st.record_estimate(db, run_id, est.low_micros, est.high_micros)
    return (est.low_micros, est.high_micros), st.alias_names(db, steps)
