"""How a run ends: why it stopped, its outcome and exit code, and what the user is told.

``StopReason`` ranks the reasons a run stops submitting: a later reason replaces an earlier
one only when it ranks higher (a refused key outranks an empty wallet, which outranks an
interruption, which outranks the budget). ``conclude`` turns the stop reason and the final
counts into the outcome, the exit code and the summary's messages: a pure function.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import state as st
from ..errors import ExitCode
from ..money import format_usd



class StopReason(enum.Enum):
    # value: (rank, outcome, exit code)
    BUDGET = (0, "budget", ExitCode.BUDGET)
    INTERRUPT = (1, "interrupted", ExitCode.INTERRUPTED)
    QUOTA = (2, "quota", ExitCode.QUOTA)
    UNREACHABLE = (3, "unreachable", ExitCode.UNREACHABLE)
    BALANCE = (4, "balance", ExitCode.BALANCE)
    AUTH = (5, "auth", ExitCode.AUTH)

    @property
    def rank(self) -> int:
        return self.value[0]

    @property
    def outcome(self) -> str:
        return self.value[1]

    @property
    def exit_code(self) -> int:
        return int(self.value[2])

    def replaces(self, current: StopReason | None) -> bool:
        """Whether this reason takes the place of ``current`` (the first of equal rank stays)."""
        return current is None or self.rank > current.rank


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    outcome: str  # completed|incomplete|budget|quota|unreachable|balance|auth|interrupted
    exit_code: int
    state_path: str
    output_dir: str
    steps: dict[str, dict[str, int]]  # step -> state -> count (this manifest's items)
    counts: dict[str, int]  # state -> count
    charged_run_micros: int  # charged by items settled in this run
    charged_total_micros: int  # everything charged in this state file
    reserved_micros: int  # still reserved (in flight + AMBIGUOUS)
    at_risk_micros: int  # AMBIGUOUS reservations
    peak_committed_micros: int  # highest charged+reserved seen during the run
    budget_micros: int | None
    left_items: int  # PENDING items not submitted
    left_low_micros: int
    left_high_micros: int
    submits: int
    polls: int
    downloads: int
    output_problems: int
    duration_s: float
    messages: tuple[str, ...] = ()
    http: dict[str, int] = field(default_factory=dict)  # "POST 202" -> exchanges this run ("GET none": no answer)

    @property
    def ambiguous(self) -> int:
        return self.counts.get(st.AMBIGUOUS, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Conclusion:
    outcome: str
    exit_code: int
    messages: tuple[str, ...]


def conclude(stop: StopReason | None, stop_message: str | None, counts: dict[str, int], *,
             left: tuple[int, int, int], budget: int | None, at_risk: int, output_problems: int,
             missing_outputs: dict[str, str] | None = None, unselected: int = 0,
             last_error: str | None = None) -> Conclusion:
    """The outcome, exit code and messages of a run that stopped for ``stop`` (None: it ran out of work).

    Every hint names the narrowest option that does what it says: ``--retry-failed`` pays again
    for the FAILED items only, ``--retry-errors`` resends what the gateway did not charge,
    ``--force STEPS`` redoes whole steps. ``unselected``: PENDING items outside a pilot run's
    ``--steps``/``--limit`` (the run is complete when everything it selected is). ``last_error``:
    the latest failed exchange with the gateway, named when items were left unsent.
    """
    n_left, lo, hi = left
    msgs: list[str] = []
    if stop is StopReason.AUTH:
        msgs.append(f"Stopped: {stop_message}")
    elif stop is StopReason.BALANCE:
        msgs.append("The gateway answered 402 Insufficient Balance: top up the Pixazo wallet, then run the same "
                    f"command again to resume ({n_left} item(s) not submitted yet).")
    elif stop in (StopReason.QUOTA, StopReason.UNREACHABLE):
        msgs.append(f"Stopped: {stop_message}")
    elif stop is StopReason.INTERRUPT:
        msgs.append("Interrupted: run the same command again to resume; submitted items will be polled, "
                    "not resent.")
    elif stop is StopReason.BUDGET:
        cost = format_usd(lo) if lo == hi else f"{format_usd(lo)} to {format_usd(hi)}"
        msgs.append(f"Stopped at the budget ({format_usd(budget or 0)}): {n_left} item(s) left, which would "
                    f"cost {cost}. Raise --budget and run again to continue.")
    if stop is not None:
        outcome, code = stop.outcome, stop.exit_code
    else:
        # COMPLETED is not done when its output is not on disk: the user asked for files
        done = counts.get(st.COMPLETED, 0) == sum(counts.values()) - unselected and not missing_outputs
        outcome, code = ("completed", int(ExitCode.OK)) if done else ("incomplete", int(ExitCode.INCOMPLETE))
    amb = counts.get(st.AMBIGUOUS, 0)
    if amb:
        msgs.append(f"{amb} AMBIGUOUS item(s) ({format_usd(at_risk)} at risk): the gateway may have "
                    "accepted and charged them. Re-run with --retry-ambiguous to resubmit them.")
    msgs += _failure_hints(counts)
    inflight = counts.get(st.SUBMITTED, 0)
    if inflight and outcome != "interrupted":
        msgs.append(f"{inflight} submitted item(s) not finished yet: run again to collect them.")
    if n_left and outcome in ("completed", "incomplete"):
        latest = f"; the latest gateway error: {last_error[:200]}" if last_error else ""
        msgs.append(f"{n_left} item(s) not submitted (gateway errors, or waiting on items this run did not "
                    f"send{latest}): run again to retry them.")
    if unselected:
        msgs.append(f"Pilot run: {unselected} item(s) outside --steps/--limit were not sent; run without them "
                    "to do the rest.")
    if missing_outputs:
        example = next(iter(missing_outputs.values()))
        msgs.append(f"{len(missing_outputs)} completed item(s) have no output on disk (e.g. {example[:160]}): they "
                    "are paid; run the same command again to fetch them (never resent); `pixbatch report` lists them.")
    if output_problems:
        msgs.append(f"{output_problems} output(s) failed their checks: `pixbatch failures` lists them.")
    return Conclusion(outcome, code, tuple(msgs))


#: what to do about each kind of failure, naming the narrowest option ({n}: how many items)
FAILURE_HINTS: tuple[tuple[str, str], ...] = (
    (st.FAILED, "{n} FAILED item(s) (the gateway charges failures): re-run with --retry-failed to send those "
                "again (and the items they blocked); only they are paid again."),
    (st.ERROR, "{n} ERROR item(s) were not charged: re-run with --retry-errors to resubmit them (and what they "
               "blocked)."),
    (st.FAILED_VALIDATION, "{n} FAILED_VALIDATION item(s): the gateway refused the request (not charged); fix the "
                           "step's parameters in the manifest and run again."),
    (st.BAD_INPUT, "{n} BAD_INPUT item(s): an input URL could not be fetched or is not an image, so they were not "
                   "sent (not charged). Fix the URLs and run again (every run checks them again); --no-preflight "
                   "sends them unchecked."),
    (st.BLOCKED, "{n} BLOCKED item(s) wait on an upstream item that did not complete; they go with the option "
                 "that retries it."),
)


def _failure_hints(counts: dict[str, int]) -> list[str]:
    """What to do about each kind of failure (``FAILURE_HINTS``), then where to see them all."""
    out = [hint.format(n=counts[state]) for state, hint in FAILURE_HINTS if counts.get(state)]
    if out:
        out.append("`pixbatch failures MANIFEST` lists every item that did not complete, with its input and error.")
    return out


def budget_refusal(budget: int | None, position: Any) -> str | None:
    """Why the run cannot go on within ``budget`` (None: it can): what is already charged plus the
    least that the remaining and in-flight items can cost exceeds it."""
    if budget is None:
        return None
    t, pending = position.totals, position.pending
    least = pending.low_micros + position.in_flight_low
    if t.charged_micros + t.abandoned_micros + least <= budget:
        return None
    return (f"the budget {format_usd(budget)} cannot cover this run: already charged "
            f"{format_usd(t.charged_micros)}, and the {pending.items} remaining item(s) cost at least "
            f"{format_usd(least)}. Raise --budget (or budget_usd in the manifest), or trim the manifest; "
            "`pixbatch estimate` shows the breakdown.")


def summarize(c: Conclusion, snap: Any, *, run_id: str, output_dir: str, charged_run: int, peak: int,
              left: tuple[int, int, int], submits: int, polls: int, downloads: int, output_problems: int,
              duration_s: float, http: dict[str, int]) -> RunSummary:
    """The run's summary from its conclusion and its final status snapshot."""
    n_left, lo, hi = left
    return RunSummary(
        run_id=run_id, outcome=c.outcome, exit_code=c.exit_code, state_path=snap.state_path, output_dir=output_dir,
        steps=snap.steps, counts=snap.totals(), charged_run_micros=charged_run, charged_total_micros=snap.charged_micros,
        reserved_micros=snap.reserved_micros, at_risk_micros=snap.at_risk_micros, peak_committed_micros=peak,
        budget_micros=snap.budget_micros, left_items=n_left, left_low_micros=lo, left_high_micros=hi, submits=submits,
        polls=polls, downloads=downloads, output_problems=output_problems, duration_s=duration_s,
        messages=c.messages, http=dict(http))


def unreachable(base_url: str, cause: str) -> str:
    """Why a run stops when the gateway cannot be reached at all."""
    return (f"cannot reach the gateway at {base_url} ({cause}). Check --base-url (or PIXBATCH_BASE_URL) and "
            "the network; nothing was sent, nothing is in doubt.")
