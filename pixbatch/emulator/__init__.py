"""A faithful local emulator of the Pixazo P-Image gateway.

It speaks the documented contract (``pixbatch.contract``), does the real image work
with Pillow (or draws placeholders lazily, for benchmarks), keeps a wallet and a ledger
priced by pixbatch's own price table, and injects faults on demand, deterministically
under a seed. It can also be told to differ from pixbatch's assumptions: an API-Management
front door with its own limits, another size rule, a misbehaving gateway or CDN
(``docs/emulator.md`` lists every setting). Layout:

    config.py      EmulatorConfig (frozen), Dist (durations)
    app.py         assembles the Starlette app; the script's vocabulary
    routes.py      the gateway routes: submit, status, strays
    frontdoor.py   API Management: keys, quota, fixed window, token bucket, throttling
    answers.py     the shapes of answers: queue JSON, API-Management JSON, HTML pages, garbage
    cdn.py         media: the output files, or the broken ways of serving them
    faults.py      named gateway/CDN faults; script entry checks
    admin.py       the /_emulator control routes
    jobs.py        job lifecycle, scheduler heap, settlement (charge exactly once)
    work.py        the image work behind a job (fetch, render, measure)
    sizing.py      the gateway's size rule: output sizes, MP, rounding, tiers
    imaging.py     Pillow work: upscale, edit, placeholders
    wallet.py      balance, reservations, ledger
    requestlog.py  every submit received and its answer; stray requests
    webhooks.py    callback targets and delivery
    asgi.py        dropping a connection; TCP_NODELAY
    control.py     start_emulator() -> RunningEmulator (in a thread or a subprocess)

    with start_emulator(EmulatorConfig(balance_micros=1_000_000, fail_rate=0.1)) as emu:
        httpx.post(emu.url + ENDPOINTS["upscale"], json={...}, headers=emu.headers)
        emu.ledger().charged_micros

    async with emulator_app(config) as app:   # in-process, no server: httpx.ASGITransport(app=app)
        ...
"""

from __future__ import annotations

from .app import create_app, emulator_app
from .config import DEFAULT_API_KEY, KEY_ENV, Dist, EmulatorConfig, fast_test_config
from .control import RunningEmulator, start_emulator
from .faults import FAULTS
from .requestlog import Received, ReceivedLog, Stray
from .sizing import SizeRule
from .wallet import Ledger, LedgerEntry

__all__ = [
    "DEFAULT_API_KEY",
    "Dist",
    "EmulatorConfig",
    "FAULTS",
    "KEY_ENV",
    "Ledger",
    "LedgerEntry",
    "Received",
    "ReceivedLog",
    "RunningEmulator",
    "SizeRule",
    "Stray",
    "create_app",
    "emulator_app",
    "fast_test_config",
    "start_emulator",
]
