"""Start an emulator and drive it from Python.

``start_emulator`` runs the app either in this process (uvicorn in a daemon thread,
via ``pixbatch.serve.serve_in_thread``) or in a subprocess (``python -m pixbatch
emulator --port 0 --config-json ...``, which prints its URL on the first stdout line),
so that a benchmark's client does not share the GIL with the emulator. Either way the
returned ``RunningEmulator`` talks HTTP to the control routes, so its helpers behave
the same in both modes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..serve import ServedApp, serve_in_thread
from .app import create_app
from .config import KEY_ENV, EmulatorConfig
from .requestlog import ReceivedLog
from .wallet import Ledger


@dataclass
class RunningEmulator:
    """A live emulator: ``url`` is its base URL, ``api_key`` a key it accepts."""

    url: str
    api_key: str
    config: EmulatorConfig
    _served: ServedApp | None = None
    _proc: subprocess.Popen | None = None
    _client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    @property
    def http(self) -> httpx.Client:
        """A plain httpx client (no default headers) for talking to the emulator."""
        return self._client

    @property
    def headers(self) -> dict[str, str]:
        """Headers for a gateway request with this emulator's key."""
        return {"Ocp-Apim-Subscription-Key": self.api_key, "Content-Type": "application/json"}

    def _get(self, path: str, **params: Any) -> Any:
        try:
            r = self._client.get(self.url + path, params=params)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # a kept-alive connection the server closed (uvicorn: after 5 s idle) just as it was
            # reused: a GET of the control API is safe to send again, once, on a new connection
            r = self._client.get(self.url + path, params=params)
        r.raise_for_status()
        return r.json()

    def _post(self, path: str, payload: Any) -> Any:
        r = self._client.post(self.url + path, json=payload)
        if r.status_code == 400:
            raise ValueError(r.json().get("message", r.text))
        r.raise_for_status()
        return r.json()

    def ledger(self) -> Ledger:
        """Every settlement so far (due jobs are settled first), balance and totals."""
        return Ledger.from_dict(self._get("/_emulator/ledger"))

    def wait_idle(self, timeout: float = 30.0, interval: float = 0.02) -> Ledger:
        """Wait until no job is in flight (every accepted job settled); returns the ledger."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["in_flight"] == 0:
                return self.ledger()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stats['in_flight']} emulator jobs still in flight after {timeout}s")
            time.sleep(interval)

    def ledger_json(self, since: int = 0) -> dict[str, Any]:
        return self._get("/_emulator/ledger", since=since)

    def stats(self) -> dict[str, Any]:
        return self._get("/_emulator/stats")

    def requests(self, since: int = 0) -> ReceivedLog:
        """Every submit received (refused ones too), with its answer and how its job settled; strays."""
        return ReceivedLog.from_dict(self._get("/_emulator/requests", since=since))

    def reset_quota(self, key: str | None = None) -> None:
        """Forget the quota used, for every key or one (as if the quota period had ended)."""
        self._post("/_emulator/quota/reset", {} if key is None else {"key": key})

    def topup(self, micros: int) -> int:
        """Add ``micros`` to the wallet; returns the new balance."""
        return self._post("/_emulator/topup", {"amount_micros": micros})["balance_micros"]

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change faults/timings at runtime (see ``EmulatorConfig.RUNTIME_FIELDS``); returns the config."""
        for k, v in settings.items():
            if hasattr(v, "to_json"):
                settings[k] = v.to_json()
        return self._post("/_emulator/config", settings)

    def script(self, outcomes: list[dict[str, Any]]) -> int:
        """Queue exact outcomes for the next submits; returns how many are queued."""
        return self._post("/_emulator/script", outcomes)["queued"]

    def advance(self, seconds: float) -> None:
        """Move the emulator's job clock forward: queued/processing jobs become due sooner."""
        self._post("/_emulator/advance", {"seconds": seconds})

    def clear_script(self) -> None:
        self._client.delete(self.url + "/_emulator/script").raise_for_status()

    def stop(self) -> None:
        self._client.close()
        if self._served is not None:
            self._served.stop()
            self._served = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
            self._proc = None

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator(config: EmulatorConfig | None = None, *, in_process: bool = True, host: str = "127.0.0.1",
                   port: int = 0, startup_timeout: float = 30.0) -> RunningEmulator:
    """Start an emulator on ``host:port`` (0: a free port) and return once it accepts requests."""
    config = config or EmulatorConfig()
    if in_process:
        served = serve_in_thread(create_app(config), host=host, port=port)
        return RunningEmulator(url=served.url, api_key=config.api_key, config=config, _served=served)
    cmd = [sys.executable, "-m", "pixbatch", "emulator", "--host", host, "--port", str(port),
           "--config-json", json.dumps(config.to_dict())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(KEY_ENV, None)  # the config's keys rule, not the environment's
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(startup_timeout)
    url = first[0].strip() if first else ""
    if not url.startswith("http"):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"the emulator subprocess did not start (exit {proc.returncode}): {err.strip()[-2000:]}")
    # keep draining stdout/stderr so the child never blocks on a full pipe
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=_drain, args=(stream,), daemon=True).start()
    return RunningEmulator(url=url, api_key=config.api_key, config=config, _proc=proc)


def _drain(stream: Any) -> None:
    try:
        for _ in stream:
            pass
    except (ValueError, OSError):
        pass


def check_media_dir(media_dir: str | os.PathLike[str]) -> None:
    """Create ``media_dir`` if needed and check that a file can be written in it (``OptionError`` if not)."""
    import tempfile

    from ..errors import OptionError

    path = Path(media_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise OptionError(f"cannot write to the media directory {path}: {exc.strerror or exc}; "
                          "choose a writable --media-dir (or none: a temporary directory)") from None


def run_foreground(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8787,
                   announce: Any = print, log_level: str = "warning") -> None:
    """Serve until interrupted (SIGINT/SIGTERM). ``announce(url)`` is called once the port is bound.

    A media directory that cannot be written, or an address that cannot be bound (in use,
    not an address of this machine), is an ``OptionError`` before anything is served.
    """
    import socket

    import uvicorn

    from ..errors import OptionError

    if config.media_dir is not None:
        check_media_dir(config.media_dir)
    app = create_app(config)  # before the URL is announced: a bad price table is an error, not a served URL
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue here until uvicorn accepts them
    except (OSError, OverflowError) as exc:
        sock.close()
        why = getattr(exc, "strerror", None) or str(exc)
        hint = ("another process is listening there; choose another --port (0: any free port)"
                if getattr(exc, "errno", None) == errno.EADDRINUSE else
                "give an address of this machine (--host 127.0.0.1) and a port from 0 to 65535")
        raise OptionError(f"cannot listen on {host}:{port}: {why}; {hint}") from None
    url = f"http://{host}:{sock.getsockname()[1]}"
    announce(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                           lifespan="on", backlog=2048))
    server.run(sockets=[sock])
