"""What a caller can tell a run: ``RunOptions``.

The fields are flat (``RunOptions(budget_micros=..., concurrency=...)``) and each one says in
its metadata which group it belongs to:

- ``spending``: what may be paid and resent (budget, retries of doubtful or failed items, the
  pilot selection ``steps``/``limit``, the preflight check of input URLs);
- ``tuning``: how hard and how fast to drive the gateway (concurrency, rate, polling, timeouts);
- ``process``: where things live and how this process behaves (state file, key, signals).

``recorded`` is derived from that metadata: every field not marked ``record=False`` is written
to ``runs.options``, so a new option cannot silently drop out of the audit record. The API key
is never recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..gateway import DEFAULT_BASE_URL

SPENDING, TUNING, PROCESS = "spending", "tuning", "process"


def _opt(default: Any, group: str, *, record: bool = True) -> Any:
    return field(default=default, metadata={"group": group, "record": record})


@dataclass(frozen=True)
class RunOptions:
    # -- spending policy
    budget_micros: int | None = _opt(None, SPENDING)  # default: the manifest's budget (None: no cap)
    retry_ambiguous: bool = _opt(False, SPENDING)  # resend items whose outcome is unknown (may pay twice)
    retry_errors: bool = _opt(False, SPENDING)  # resend items that ended ERROR (the gateway did not charge them)
    retry_failed: bool = _opt(False, SPENDING)  # resend items that ended FAILED (charged: pays again for those only)
    # redo finished items (pays again): True for every step, or the ids of the steps to redo
    force: bool | tuple[str, ...] = _opt(False, SPENDING)
    steps: tuple[str, ...] | None = _opt(None, SPENDING)  # send only these steps' items (None: every step)
    limit: int | None = _opt(None, SPENDING)  # send only the first N items of each (selected) step
    # check every input URL (a small ranged GET, cached in the state file) before an item's first
    # send: an unreachable or non-image input leaves its items BAD_INPUT, unsent and not charged
    preflight: bool = _opt(True, SPENDING)
    # -- tuning
    concurrency: int = _opt(16, TUNING)  # items in flight
    max_rps: float | None = _opt(None, TUNING)
    timeout: float = _opt(30.0, TUNING)
    poll_initial: float = _opt(2.0, TUNING)  # first poll delay before anything has been learned
    poll_max_interval: float = _opt(10.0, TUNING)
    status_interval: float = _opt(1.0, TUNING)  # seconds between status-file (and progress) refreshes
    preflight_concurrency: int = _opt(16, TUNING)  # input URLs checked at once
    preflight_timeout: float = _opt(10.0, TUNING)  # seconds allowed per input URL check
    webhook_grace: float = _opt(30.0, TUNING)  # webhook mode: how long the end of a run waits for callbacks
    # that can settle the items it left AMBIGUOUS
    # unique items per write while a fresh run streams its expansion in (runner/stream.py); the
    # first batch, written before anything is sent, is at most prepare.FIRST_BATCH
    ingest_batch: int = _opt(10_000, TUNING)
    # -- process
    state_path: Path | None = _opt(None, PROCESS, record=False)  # default: the manifest's state path
    base_url: str = _opt(DEFAULT_BASE_URL, PROCESS)
    api_key: str | None = _opt(None, PROCESS, record=False)  # default: $PIXAZO_API_KEY (never stored)
    download: bool = _opt(True, PROCESS)
    pricing_path: Path | None = _opt(None, PROCESS)
    handle_signals: bool = _opt(False, PROCESS, record=False)  # install SIGINT/SIGTERM handlers (the CLI does)
    # webhook mode: the gateway POSTs terminal statuses to webhook_url (which must reach
    # webhook_listen, "host:port", default: the URL's own host and port). A callback only
    # wakes the item up: its status is then read once from the gateway (callbacks are not
    # authenticated), and items poll as usual if no callback comes in time.
    webhook_url: str | None = _opt(None, PROCESS)
    webhook_listen: str | None = _opt(None, PROCESS)
    # seconds to wait for the state file while another process holds it: a `status` or a
    # `report` holds it for a moment; another run holds it to the end (then StateLocked)
    lock_wait: float = _opt(3.0, PROCESS, record=False)

    def check(self, manifest: Any) -> None:
        """``OptionError`` when an option does not fit ``manifest`` (an unknown step, a negative limit)."""
        from ..errors import OptionError
        from ..manifest.problems import suggest

        known = [s.id for s in manifest.steps]
        for flag, names in (("--force", self.force if isinstance(self.force, tuple) else ()),
                            ("--steps", self.steps or ())):
            for name in names:
                if name not in known:
                    hint = suggest(name, known)
                    raise OptionError(f"{flag}: the manifest has no step {name!r}"
                                      + (f" (did you mean {hint!r}?)" if hint else "")
                                      + f"; its steps are {', '.join(known)}.")
        if self.steps is not None and not self.steps:
            raise OptionError("--steps: name at least one step.")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"--limit must be at least 1 (got {self.limit}).")

    def group(self, name: str) -> dict[str, Any]:
        """The fields of one group (``spending``, ``tuning``, ``process``) as a dict."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("group") == name}

    def recorded(self) -> dict[str, Any]:
        """The options as recorded in runs.options (JSON-ready; never the key)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.metadata.get("record", True):
                v = getattr(self, f.name)
                out[f.name] = str(v) if isinstance(v, Path) else v
        return out

    public = recorded  # the older name


def default(name: str) -> Any:
    """A field's library default (the CLI shows and uses these rather than restating them)."""
    for f in fields(RunOptions):
        if f.name == name:
            return f.default
    raise KeyError(name)
