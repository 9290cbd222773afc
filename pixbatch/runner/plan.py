"""What a run is about to send again, known before anything is sent.

``resends(manifest, options)`` reads the state file (nothing is written, nothing is sent) and
says, for each option that sends finished items again (``--force [STEPS]``,
``--retry-failed``, ``--retry-errors``, ``--retry-ambiguous``), how many items it will send,
what they were charged so far and what they can cost again. The CLI prints it and, above
``CONFIRM_MICROS`` or ``CONFIRM_ITEMS``, asks before ``--force`` pays again (``--yes`` skips
the question).

The items are those of the manifest's expansion: the last run's when the manifest, its input
files, the probed sizes and the code are unchanged (the same fingerprint as ``prepare``),
otherwise the keys of a fresh walk of the expansion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import state as st
from .options import RunOptions
from .prepare import expansion_fingerprint, selection_of

#: ``run --force`` asks (or needs ``--yes``) when redoing costs more than this, or more items than
CONFIRM_MICROS = 1_000_000
CONFIRM_ITEMS = 100


@dataclass(frozen=True)
class Resend:
    """Finished items one option sends again."""

    option: str  # "--force", "--force hires", "--retry-failed", ...
    states: tuple[str, ...]
    items: int
    charged_micros: int  # what they were charged so far
    cost_micros: int  # what sending them again costs at most (their estimate's upper bound)
    unblocked: int = 0  # BLOCKED items downstream of them, sent too once they complete

    @property
    def pays_again(self) -> bool:
        """Whether the gateway charged these items before (sending them again pays again)."""
        return self.charged_micros > 0

    def text(self) -> str:
        """What the option will do, in one line, said before anything is sent."""
        from ..money import format_usd

        if not self.items:
            return f"{self.option}: nothing to send again."
        money = (f"they were charged {format_usd(self.charged_micros)} and cost up to "
                 f"{format_usd(self.cost_micros)} again" if self.pays_again else f"up to {format_usd(self.cost_micros)}")
        down = f", then the {self.unblocked} item(s) they blocked" if self.unblocked else ""
        return f"{self.option}: sends {self.items} finished item(s) again ({money}){down}."

    def question(self) -> str:
        from ..money import format_usd

        return f"Send these {self.items} item(s) again and pay up to {format_usd(self.cost_micros)}?"

    @property
    def needs_confirmation(self) -> bool:
        return self.option.startswith("--force") and (
            self.cost_micros > CONFIRM_MICROS or self.items > CONFIRM_ITEMS)


def _asked(options: RunOptions) -> list[tuple[str, tuple[str, ...], tuple[str, ...] | None]]:
    """(option as typed, states it resends, steps it is limited to)."""
    out: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = []
    if options.force:
        steps = options.force if isinstance(options.force, tuple) else None
        out.append(("--force" + (f" {','.join(steps)}" if steps else ""), tuple(sorted(st.TERMINAL)), steps))
    if options.retry_failed and not options.force:
        out.append(("--retry-failed", (st.FAILED,), None))
    if options.retry_errors and not options.force:
        out.append(("--retry-errors", (st.ERROR,), None))
    if options.retry_ambiguous:
        out.append(("--retry-ambiguous", (st.AMBIGUOUS,), None))
    return out


def resends(manifest: Any, options: RunOptions) -> tuple[Resend, ...]:
    """What each of ``options``' retry options will send again (empty for a fresh state file).

    ``StateLocked`` when another run holds the state file (the run would refuse to start too).
    """
    asked = _asked(options)
    path = Path(options.state_path or manifest.state_path)
    if not asked or not path.exists():
        return ()
    db = st.open_for_reading(path)
    try:
        if "items" not in st.table_names(db):
            return ()
        last = st.last_run(db)
        fp = expansion_fingerprint(db, manifest, options.pricing_path)
        if last is not None and last.scope and fp is not None and last.fingerprint == fp:
            return tuple(_in_scope(db, last.scope, manifest, options, asked))
        return tuple(_by_keys(db, manifest, options, asked))
    finally:
        db.close()


def _in_scope(db: Any, scope: str, manifest: Any, options: RunOptions, asked: list) -> Iterable[Resend]:
    sel = selection_of(options, [s.id for s in manifest.steps])
    for option, states, steps in asked:
        r = st.redo_cost(db, scope, states, steps=steps, sel=sel)
        down = st.upstream_blocked(db, scope, states, steps=steps, sel=sel) if st.BLOCKED not in states else 0
        yield Resend(option, states, r.items, r.charged_micros, r.est_high_micros, down)


def _by_keys(db: Any, manifest: Any, options: RunOptions, asked: list) -> Iterable[Resend]:
    """The manifest changed since the last run: find its items in the file by key."""
    from ..expand import expand

    keys: list[tuple[str, str]] = []  # (key, step) of the items the run may send, first occurrence only
    for it in expand(manifest, unique=True):
        if not it.first or (options.steps is not None and it.step not in options.steps):
            continue
        if options.limit is None or it.index < options.limit:  # the first places of the step (selection_of)
            keys.append((it.key, it.step))
    for option, states, steps in asked:
        want = [k for k, s in keys if steps is None or s in steps]
        r, down = st.redo_cost_of_keys(db, want, states)
        yield Resend(option, states, r.items, r.charged_micros, r.est_high_micros,
                     down if st.BLOCKED not in states else 0)
