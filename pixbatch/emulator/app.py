"""The HTTP face of the emulator: a Starlette app with the gateway's routes.

Gateway routes (as documented in ``shared/reference/p-image-api.txt``; paths and
parameters from ``pixbatch.contract``):

    POST /p-image-upscale/v1/p-image-upscale/generate   202 {request_id, status: QUEUED, polling_url}
    POST /p-image/v1/p-image-edit/generate              202 (same)
    GET  /v2/requests/status/{request_id}               200 the status document
    GET  /media/{request_id}/output.{ext}               the output file (no key, like the CDN)

What each does, in order, is in ``routes.py`` (and ``frontdoor.py`` for the API-Management
policies, ``cdn.py`` for media); the control routes (``/_emulator/...``) are in
``admin.py``. Any other path is logged as a stray request and answered 404.

Script entries (``POST /_emulator/script``) are consumed one per submit, in order.
``{"submit": 503}`` (any 4xx/5xx, optional ``"body"``, ``"retry_after"``: seconds, a string
such as an HTTP date, or null for no header, 1 s by default for 429; ``"html": true`` for
an HTML page) answers that submit without creating a job; it is taken after the front
door and before validation. Any other entry is taken by the next submit that creates a
job and shapes it: ``"status"`` (COMPLETED/FAILED/ERROR) and ``"error"``,
``"queue_time"``/``"processing_time"`` (seconds), ``"drop_after_accept": true``,
``"garbage": true`` (202 with a body that is not JSON), ``"polls": [500, "garbage", "drop",
"html", {"code": 503, "html": true, "retry_after": 2}, 200, ...]`` (answers for that job's
next polls, 200 meaning a normal answer), ``"faults": [name, ...]`` (``faults.py``),
``"input_size": [w, h]`` (lazy mode: the input size assumed for this job). A scripted
entry replaces the random faults for that submit.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from ..contract import ENDPOINTS, STATUS_PATH
from .admin import ControlRoutes
from .answers import Answers
from .asgi import ConnectionDropped, EmulatorApp, install_log_filter
from .config import EmulatorConfig
from .frontdoor import FrontDoor
from .jobs import Engine
from .routes import GatewayRoutes

__all__ = ["ConnectionDropped", "create_app", "emulator_app"]


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app; ``app.state.engine`` is its state (for in-process tests)."""
    engine = Engine(config or EmulatorConfig())
    answers = Answers(engine.stats, lambda: engine.config)
    door = FrontDoor(engine, answers)
    gw = GatewayRoutes(engine, answers, door)
    ctl = ControlRoutes(engine, door, gw.enter)
    install_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        engine.ensure_started()
        try:
            yield
        finally:
            await engine.aclose()

    def route(op: str):
        async def endpoint(request: Request) -> Any:
            return await gw.submit(request, op)
        endpoint.__name__ = f"submit_{op}"
        return endpoint

    routes = [
        Route(ENDPOINTS["upscale"], route("upscale"), methods=["POST"]),
        Route(ENDPOINTS["edit"], route("edit"), methods=["POST"]),
        Route("/{service}/v1/{model}/generate", gw.unknown_model, methods=["POST"]),
        Route(STATUS_PATH, gw.status, methods=["GET"]),
        Route("/media/{request_id}/{name}", gw.media, methods=["GET"]),
        Route("/_emulator/ledger", ctl.ledger, methods=["GET"]),
        Route("/_emulator/requests", ctl.requests, methods=["GET"]),
        Route("/_emulator/topup", ctl.topup, methods=["POST"]),
        Route("/_emulator/config", ctl.config, methods=["GET", "POST"]),
        Route("/_emulator/script", ctl.script, methods=["POST", "DELETE"]),
        Route("/_emulator/stats", ctl.stats, methods=["GET"]),
        Route("/_emulator/advance", ctl.advance, methods=["POST"]),
        Route("/_emulator/quota/reset", ctl.reset_quota, methods=["POST"]),
    ]
    app = EmulatorApp(routes=routes, lifespan=lifespan, exception_handlers={404: gw.stray})
    app.state.engine = engine
    app.state.front_door = door
    return app


@contextlib.asynccontextmanager
async def emulator_app(config: EmulatorConfig | None = None) -> AsyncIterator[Starlette]:
    """``create_app`` with its lifespan run, for in-process use without a server::

        async with emulator_app(cfg) as app:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emulator")

    On exit the scheduler stops and the emulator's own HTTP clients and temporary files
    are closed (httpx's ASGITransport does not run lifespans by itself).
    """
    app = create_app(config)
    async with app.router.lifespan_context(app):
        yield app
