"""A faithful local emulator of the Pixazo P-Image gateway.

It speaks the documented contract (``pixbatch.contract``), does the real image work
with Pillow (or draws placeholders lazily, for benchmarks), keeps a wallet and a ledger
priced by pixbatch's own price table, and injects faults on demand, deterministically
under a seed. Layout:

    config.py    EmulatorConfig (frozen), Dist (durations)
    app.py       the Starlette routes: gateway contract + /_emulator control routes
    jobs.py      job lifecycle, scheduler heap, settlement (charge exactly once)
    imaging.py   Pillow work: upscale, edit, placeholders
    wallet.py    balance, reservations, ledger
    webhooks.py  callback targets and delivery
    control.py   start_emulator() -> RunningEmulator (in a thread or a subprocess)

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
from .wallet import Ledger, LedgerEntry

__all__ = [
    "DEFAULT_API_KEY",
    "Dist",
    "EmulatorConfig",
    "KEY_ENV",
    "Ledger",
    "LedgerEntry",
    "RunningEmulator",
    "create_app",
    "emulator_app",
    "fast_test_config",
    "start_emulator",
]
