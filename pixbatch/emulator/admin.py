"""The control routes (no key; for tests, benchmarks and ``RunningEmulator``'s helpers).

    GET  /_emulator/ledger[?since=N]    settles due jobs, then every charge + balance + totals
    GET  /_emulator/requests[?since=N]  every submit received (refused ones too) with its answer
                                        and how its job settled; stray requests (requestlog.py)
    POST /_emulator/topup               {"amount_micros": N}
    GET  /_emulator/config              the running config
    POST /_emulator/config              {setting: value, ...}: change faults at runtime
    POST /_emulator/script              [outcome, ...]: answers for the next submits
    DELETE /_emulator/script            forget queued outcomes
    GET  /_emulator/stats               counters (submits, polls, 429s, webhooks, ...)
    POST /_emulator/advance             {"seconds": N}: move the job clock forward (no waiting)
    POST /_emulator/quota/reset         {} or {"key": K}: forget the quota used (all keys, or one)
"""

from __future__ import annotations

import json
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .faults import check_script_entry
from .frontdoor import FrontDoor
from .jobs import Engine


def _bad(message: str) -> Response:
    return JSONResponse({"error": "Bad Request", "message": message}, 400)


class ControlRoutes:
    def __init__(self, engine: Engine, door: FrontDoor, enter: Callable[[Request], Any]):
        self.e = engine
        self.door = door
        self.enter = enter  # starts the scheduler, notes the base URL (as every route does)

    def _since(self, request: Request) -> int | None:
        try:
            return max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return None

    async def ledger(self, request: Request) -> Response:
        self.enter(request)
        self.e.settle_due()
        since = self._since(request)
        if since is None:
            return _bad("since must be an integer")
        return JSONResponse(self.e.wallet.to_dict(since))

    async def requests(self, request: Request) -> Response:
        self.enter(request)
        self.e.settle_due()
        since = self._since(request)
        if since is None:
            return _bad("since must be an integer")
        settled = {x.request_id: (x.status, x.amount_micros) for x in self.e.wallet.entries}
        return JSONResponse(self.e.received.to_dict(since, settled))

    async def topup(self, request: Request) -> Response:
        self.enter(request)
        try:
            data = await request.json()
            amount = data["amount_micros"]
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            return _bad('send {"amount_micros": <integer micro-dollars>}')
        self.e.wallet.topup(amount)
        return JSONResponse({"balance_micros": self.e.wallet.balance_micros})

    async def config(self, request: Request) -> Response:
        self.enter(request)
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("send a JSON object of settings")
                self.e.config = self.e.config.runtime_replace(changes)
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                return _bad(str(exc))
        return JSONResponse(self.e.config.to_dict())

    async def script(self, request: Request) -> Response:
        self.enter(request)
        if request.method == "DELETE":
            self.e.script.clear()
            return JSONResponse({"queued": 0})
        try:
            data = await request.json()
            entries = data.get("outcomes") if isinstance(data, dict) else data
            if not isinstance(entries, list):
                raise TypeError
            problems = [p for i, entry in enumerate(entries) for p in check_script_entry(i, entry)]
        except (json.JSONDecodeError, TypeError, AttributeError):
            return _bad("send a JSON array of outcomes")
        if problems:
            return _bad("; ".join(problems))
        self.e.script.extend(entries)
        return JSONResponse({"queued": len(self.e.script)})

    async def advance(self, request: Request) -> Response:
        self.enter(request)
        try:
            data = await request.json()
            seconds = data["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            return _bad('send {"seconds": <number >= 0>}')
        self.e.advance(float(seconds))
        return JSONResponse({"offset_seconds": self.e.offset})

    async def reset_quota(self, request: Request) -> Response:
        self.enter(request)
        raw = await request.body()
        try:
            data: Any = json.loads(raw) if raw.strip() else {}
            key = data.get("key")
            if key is not None and not isinstance(key, str):
                raise TypeError
        except (json.JSONDecodeError, AttributeError, TypeError):
            return _bad('send {} (every key) or {"key": "<subscription key>"}')
        self.door.reset_quota(key)
        return JSONResponse({"reset": key or "all"})

    async def stats(self, request: Request) -> Response:
        self.enter(request)
        self.e.settle_due()
        out = dict(self.e.stats)
        out["balance_micros"] = self.e.wallet.balance_micros
        out["charged_micros"] = self.e.wallet.charged_micros
        out["script_queued"] = len(self.e.script)
        return JSONResponse(out)
