"""From the gateway's answer to a submit, to what happens to the item: one table.

Each row says, for one kind of answer: the item's next state, whether its budget
reservation is released (the request was definitely not accepted), whether the item is
left for a later run (``skip``), what the submit log records (``attempt``), and whether the
whole run stops (and why). The first row whose exception type matches wins, so the more
specific types come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import state as st
from ..errors import (AuthError, BadRequest, GatewayError, InsufficientBalance, NotFound, QuotaExceeded,
                      SubmitUnknown)
from ..gateway import Gateway
from ..items import resolve_urls
from .budget import BudgetLedger
from .outcome import StopReason


@dataclass(frozen=True)
class SubmitRule:
    state: str  # the item's next state
    release: bool  # give the reservation back: the gateway did not accept the request
    skip: bool  # leave the item for a later run (this run does not send it again)
    attempt: str  # the submit log's outcome: accepted | ambiguous | rejected
    finished: bool = False  # a terminal answer: the item is done (and not charged)
    stop: StopReason | None = None  # the whole run stops submitting


ACCEPTED = SubmitRule(st.SUBMITTED, release=False, skip=False, attempt="accepted")

SUBMIT_TABLE: tuple[tuple[type[BaseException], SubmitRule], ...] = (
    # sent, and no answer that says whether it was accepted: it may have been charged
    (SubmitUnknown, SubmitRule(st.AMBIGUOUS, release=False, skip=False, attempt="ambiguous")),
    # the gateway refused this request's content: sending it again would be refused again
    (BadRequest, SubmitRule(st.FAILED_VALIDATION, release=True, skip=False, attempt="rejected", finished=True)),
    (NotFound, SubmitRule(st.FAILED_VALIDATION, release=True, skip=False, attempt="rejected", finished=True)),
    # the key's call quota is used up: nothing more can be sent until it comes back; nothing failed
    (QuotaExceeded, SubmitRule(st.PENDING, release=True, skip=True, attempt="rejected", stop=StopReason.QUOTA)),
    # the wallet or the key: nothing more can be sent by this run
    (InsufficientBalance, SubmitRule(st.PENDING, release=True, skip=True, attempt="rejected",
                                     stop=StopReason.BALANCE)),
    (AuthError, SubmitRule(st.PENDING, release=True, skip=True, attempt="rejected", stop=StopReason.AUTH)),
    # definite refusals that outlasted the retries, or never sent: a later run tries again
    (GatewayError, SubmitRule(st.PENDING, release=True, skip=True, attempt="rejected")),
)


def rule_for(exc: BaseException) -> SubmitRule:
    """The row for a submit that raised ``exc``; anything unlisted is a bug and propagates."""
    for kind, rule in SUBMIT_TABLE:
        if isinstance(exc, kind):
            return rule
    raise exc


def _durable(fut: Any) -> Any:
    return fut if isinstance(fut, asyncio.Future) else asyncio.wrap_future(fut)


class Reachability:
    """Whether the gateway can be reached at all: sends that never connected, while nothing has
    answered since the run started, for ``after`` seconds, mean a wrong base URL or no network:
    ``on_cause`` is then told the latest connection error (once, within a timer's precision)."""

    def __init__(self, *, answered: Callable[[], int], on_cause: Callable[[str], None], after: float = 8.0,
                 clock: Callable[[], float] = time.monotonic):
        self.answered, self.on_cause, self.after, self.clock = answered, on_cause, after, clock
        self.since: float | None = None  # the first send that could not connect, while none did
        self.reason = ""
        self.told = False

    def refused(self, status: int | None, reason: str) -> None:
        """A refused send (``status`` None: it never connected)."""
        if status is not None or self.answered():
            self.since = None
            return
        self.reason = reason
        if self.since is None:
            self.since = self.clock()
            with contextlib.suppress(RuntimeError):  # no running loop: checked at the next refusal
                asyncio.get_running_loop().call_later(self.after, self.check)
        self.check()

    def check(self) -> None:
        if self.since is None or self.told or self.answered() or self.clock() - self.since < self.after:
            return
        self.told = True
        self.on_cause(self.reason)


class SendLog:
    """The submit log of one item's sends: one intent per HTTP send, each closed by its own answer.

    ``sending()`` runs once the rate limiter has granted a token, immediately before the request
    is written: it commits an intent (with the item's reservation) and waits for the commit.
    ``refused()`` closes that intent at once when the gateway definitely did not accept the send
    (a 429, a 500/503, a connection never made): a crash while the item waits for its next try
    leaves it PENDING, never AMBIGUOUS. ``in_flight`` is true only between the two, so a stop
    can cancel every item that is not in the middle of a send.
    """

    def __init__(self, row: st.ItemRow, put: Callable[..., Any], run_id: str,
                 on_refused: Callable[[int | None, str], None] | None = None):
        self.row, self.put, self.run_id = row, put, run_id
        self.on_refused = on_refused  # told of each refused send (the run watches for a gateway it cannot reach)
        self.intent: st.Intent | None = None
        self.in_flight = False

    async def sending(self) -> None:
        row = self.row
        row.attempts += 1
        row.state = st.SUBMITTING
        row.error = None
        self.intent = st.Intent(row.key, row.attempts, self.run_id, st.utcnow(), row.reserved_micros)
        self.in_flight = True
        await _durable(self.put(row, wait=True, intent=self.intent, reserved=row.reserved_micros))

    def refused(self, status: int | None, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(status, reason)
        if not self.in_flight or self.intent is None:
            self.row.error = f"not sent ({status or 'no connection'}): {reason}"  # kept if the item stays unsent
            return  # no connection was ever made for this try: no intent, nothing to close
        self.in_flight = False
        self.row.state = st.PENDING
        self.row.error = f"refused ({status or 'not sent'}): {reason}; trying again"
        self.put(self.row, attempt=st.Attempt.of(self.intent, "rejected", http_status=status), reason=self.row.error)

    def close(self, outcome: str, **kw: Any) -> st.Attempt | None:
        """The attempt that closes the open intent (None: no send is open, nothing to log)."""
        if not self.in_flight or self.intent is None:
            return None
        self.in_flight = False
        return st.Attempt.of(self.intent, outcome, **kw)


async def submit_item(row: st.ItemRow, up: st.ItemRow | None, *, gateway: Gateway, ledger: BudgetLedger,
                      put: Callable[..., Any], run_id: str, webhook_url: str | None,
                      log: SendLog | None = None, file_url: Callable[[str], str] | None = None) -> SubmitRule:
    """Send the item until accepted or refused for good; returns the rule applied to it
    (``ACCEPTED`` or a row of the table). Each HTTP send has its own intent (``SendLog``); the
    request id after the 202 is queued at once and committed ahead of anything later about
    the item. Cancelled while no send is open (waiting for a token or a retry), the item goes
    back to PENDING with its reservation released."""
    body = row.body_dict
    if up is not None or file_url is not None:  # placeholders -> URLs (a local file's: signed now)
        body = resolve_urls(body, {up.key: up.media_url or ""} if up is not None else {}, file_url)
    log = log or SendLog(row, put, run_id)
    try:
        acc = await gateway.submit(row.op, body, webhook_url=webhook_url, hooks=log)
    except GatewayError as exc:
        rule = rule_for(exc)
        if rule.release:
            ledger.release(row.reserved_micros)
            row.reserved_micros = 0
        row.state = rule.state
        row.error = str(exc)
        if rule.finished:
            row.charged_micros = row.charged_micros or 0
            row.finished_at = st.utcnow()
        put(row, attempt=log.close(rule.attempt, http_status=exc.status_code), reason=str(exc))
        return rule
    except asyncio.CancelledError:
        if not log.in_flight:  # nothing was sent that is not answered: nothing to doubt
            ledger.release(row.reserved_micros)
            row.reserved_micros = 0
            row.state = st.PENDING
            put(row, reason="cancelled before sending")
        raise
    row.state = ACCEPTED.state
    row.request_id = acc.request_id
    row.polling_path = acc.polling_path
    row.gateway_status = acc.status
    row.submitted_at = st.utcnow()
    accepted = log.close(ACCEPTED.attempt, request_id=acc.request_id, accepted_at=row.submitted_at,
                         http_status=202, polling_path=acc.polling_path)
    # (2) the request id: queued at once, committed ahead of anything later about this item;
    # polling (free, no side effects) need not wait for it: a crash before the commit
    # leaves the item AMBIGUOUS whether or not its first poll had gone out
    put(row, attempt=accepted, request_id=acc.request_id)
    return ACCEPTED
