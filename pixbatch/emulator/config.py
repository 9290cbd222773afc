"""What the emulator does, as one frozen value: keys, wallet, timings and faults.

``EmulatorConfig`` is built from Python (keyword arguments), from the command line
(``pixbatch emulator --fail-rate 0.1 ...``) or from JSON (``to_dict``/``from_dict``, which
is how a subprocess emulator receives its config and how ``POST /_emulator/config``
changes faults at runtime). Timings are ``Dist`` values: a fixed number of seconds or a
uniform ``min-max`` range. Every random choice the emulator makes is drawn from an RNG
seeded with ``seed`` and the ordinal of the submit or poll, so a run with the same seed
and the same sequence of requests sees the same faults and outcomes.

Beyond the documented gateway, three groups of settings make the emulator differ from
what pixbatch assumes (every default keeps the documented behaviour): the API-Management
front door (``throttle_rate``, ``rate_window``, ``quota``, ``html_errors``; see
``frontdoor.py``), the size rule the gateway prices by (``edit_sizes``, ``megapixel``,
``factor_rounding``; see ``sizing.py``), and a misbehaving gateway or CDN (``faults``; see
``faults.py``). ``docs/emulator.md`` lists every setting in one line.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..contract import ASPECT_RATIOS
from .faults import FAULTS

DEFAULT_API_KEY = "test-key"
KEY_ENV = "PIXBATCH_EMULATOR_KEY"

Render = Literal["real", "lazy"]
Rounding = Literal["round", "floor"]


@dataclass(frozen=True, slots=True)
class Dist:
    """A duration in seconds: fixed (``low == high``) or uniform between ``low`` and ``high``."""

    low: float = 0.0
    high: float | None = None

    def __post_init__(self) -> None:
        if self.high is None:
            object.__setattr__(self, "high", self.low)
        if self.low < 0 or self.high < self.low:  # type: ignore[operator]
            raise ValueError(f"a duration range must satisfy 0 <= min <= max, got {self.low}-{self.high}")

    def sample(self, rng: random.Random) -> float:
        if self.high == self.low:
            return self.low
        return rng.uniform(self.low, self.high)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, value: Dist | str | float | int | list | tuple | dict) -> Dist:
        """``0.5`` -> fixed; ``"0.1-2"`` or ``[0.1, 2]`` or ``{"min": 0.1, "max": 2}`` -> uniform."""
        if isinstance(value, Dist):
            return value
        if isinstance(value, bool):
            raise ValueError(f"not a duration: {value!r}")
        if isinstance(value, (int, float)):
            return cls(float(value))
        if isinstance(value, (list, tuple)) and len(value) in (1, 2):
            return cls(float(value[0]), float(value[-1]))
        if isinstance(value, dict) and "min" in value:
            return cls(float(value["min"]), float(value.get("max", value["min"])))
        if isinstance(value, str):
            text = value.strip()
            lo, sep, hi = text.partition("-") if not text.startswith("-") else (text, "", "")
            try:
                return cls(float(lo), float(hi) if sep else None)
            except ValueError:
                pass
        raise ValueError(f"not a duration: {value!r}; use seconds (0.5) or a range (0.1-2.0)")

    def to_json(self) -> list[float]:
        return [self.low, self.high]  # type: ignore[list-item]


_RATES = (
    "fail_rate", "error_rate", "submit_500_rate", "poll_500_rate", "drop_after_accept_rate",
    "submit_garbage_rate", "poll_garbage_rate", "webhook_duplicate_rate", "throttle_rate",
)
_DISTS = ("queue_time", "processing_time", "submit_latency", "poll_latency")


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything the emulator can be told. Rates are fractions in [0, 1]."""

    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    forbidden_keys: tuple[str, ...] = ()  # known keys that get 403
    balance_micros: int = 10_000_000  # starting wallet: $10
    seed: int = 0
    # job lifecycle: QUEUED for queue_time, then PROCESSING for processing_time (at least
    # as long as the real image work takes), then terminal
    queue_time: Dist = Dist(0.2, 1.0)
    processing_time: Dist = Dist(0.5, 2.0)
    fail_rate: float = 0.0  # jobs ending FAILED (charged)
    error_rate: float = 0.0  # jobs ending ERROR (not charged)
    # transport-level faults
    submit_500_rate: float = 0.0  # submit answers 500, no job created
    poll_500_rate: float = 0.0
    drop_after_accept_rate: float = 0.0  # job created (and charged), connection dropped
    submit_garbage_rate: float = 0.0  # job created, response body is not JSON
    poll_garbage_rate: float = 0.0
    submit_latency: Dist = Dist(0.0)
    poll_latency: Dist = Dist(0.0)
    # submit rate limit per key: token bucket of ``rate_burst`` tokens refilled at
    # ``rate_limit`` per second; None = unlimited
    rate_limit: float | None = None
    rate_burst: int | None = None  # default: max(1, rate_limit)
    disabled_models: tuple[str, ...] = ()  # model ids answering 400 "Model not found"
    # webhooks
    allow_http_webhooks: bool = False  # the docs require https; tests on loopback need http
    webhook_duplicate_rate: float = 0.0  # deliveries sent twice
    webhook_sync_interval: float = 5.0  # sync mode: seconds between progress callbacks (cap 15)
    webhook_timeout: float = 5.0
    webhook_retries: int = 2
    # image work
    render: Render = "real"  # "lazy": no input fetch; output drawn on first media GET
    lazy_input_size: tuple[int, int] = (1024, 1024)  # the input size assumed in lazy mode
    workers: int = 2  # threads doing Pillow work
    fetch_timeout: float = 20.0
    max_input_bytes: int = 64 * 1024 * 1024
    pricing_path: str | None = None  # None: pixbatch's built-in price table
    media_dir: str | None = None  # None: a temporary directory removed on shutdown
    # the API-Management front door (frontdoor.py)
    throttle_rate: float = 0.0  # submits answered 429 whatever the rate (Retry-After: none, date or seconds)
    throttle_retry_after: float = 1.0  # the wait a throttled answer names, in seconds
    rate_window: tuple[int, float] | None = None  # (N, SECONDS): N submits per fixed window per key
    quota: int | None = None  # accepted submits per key per quota period; then 403 + Retry-After
    quota_reset: float = 600.0  # the quota period in seconds (it replenishes at each period's end)
    html_errors: bool = False  # 5xx answers carry an HTML page instead of JSON
    # the size rule the gateway produces and charges by (sizing.py)
    edit_sizes: tuple[tuple[str, tuple[int, int]], ...] = ()  # aspect ratio -> edit output size
    megapixel: int = 1_000_000  # pixels in one MP: tier boundary, target mode, 8 MP cap
    factor_rounding: Rounding = "round"  # factor-mode sides: round (half to even) or floor
    # a misbehaving gateway or CDN (faults.py): applied to every job; the script applies them per job
    faults: tuple[str, ...] = ()
    media_drip_rate: float = 1.0  # bytes per second of the "media_slow" fault
    gzip_bomb_bytes: int = 1 << 30  # decompressed size of the "media_gzip_bomb" body (whole MiB)
    stray_base_url: str | None = None  # where "polling_url_elsewhere" points (default: this emulator's /_elsewhere)

    #: fields ``POST /_emulator/config`` may change at runtime
    RUNTIME_FIELDS = frozenset({
        *_RATES, *_DISTS, "rate_limit", "rate_burst", "api_keys", "forbidden_keys", "disabled_models",
        "allow_http_webhooks", "webhook_sync_interval", "webhook_timeout", "webhook_retries", "seed",
        "fetch_timeout", "throttle_retry_after", "rate_window", "quota", "quota_reset", "html_errors", "faults",
        "media_drip_rate", "gzip_bomb_bytes", "stray_base_url",
    })

    def __post_init__(self) -> None:
        for name in _DISTS:
            object.__setattr__(self, name, Dist.parse(getattr(self, name)))
        for name in ("api_keys", "forbidden_keys", "disabled_models", "faults"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        object.__setattr__(self, "lazy_input_size", tuple(int(x) for x in self.lazy_input_size))
        if len(self.lazy_input_size) != 2 or min(self.lazy_input_size) < 1:
            raise ValueError(f"lazy_input_size must be two positive sides, got {self.lazy_input_size}")
        for name in _RATES:
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction between 0 and 1, got {v}")
            object.__setattr__(self, name, v)
        if self.fail_rate + self.error_rate > 1.0:
            raise ValueError("fail_rate + error_rate must not exceed 1")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit must be positive (submits per second), got {self.rate_limit}")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError(f"rate_burst must be at least 1, got {self.rate_burst}")
        if self.render not in ("real", "lazy"):
            raise ValueError(f"render must be 'real' or 'lazy', got {self.render!r}")
        if _not_int(self.workers) or not 1 <= self.workers <= 256:
            raise ValueError(f"workers must be a whole number from 1 to 256, got {self.workers!r}")
        for name in ("seed", "webhook_retries", "max_input_bytes"):
            if _not_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {getattr(self, name)!r}")
        for name in ("webhook_sync_interval", "webhook_timeout", "fetch_timeout", "media_drip_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 30 * 86400:
                raise ValueError(f"{name} must be a number from 0 to {30 * 86400}, got {v!r}")
        if self.rate_limit is not None and (isinstance(self.rate_limit, bool) or not isinstance(self.rate_limit, (int, float))
                                            or not math.isfinite(self.rate_limit)):
            raise ValueError(f"rate_limit must be a number of submits per second, got {self.rate_limit!r}")
        if self.rate_burst is not None and _not_int(self.rate_burst):
            raise ValueError(f"rate_burst must be a whole number, got {self.rate_burst!r}")
        for name in ("pricing_path", "media_dir", "stray_base_url"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string or null, got {getattr(self, name)!r}")
        for name in ("api_keys", "forbidden_keys", "disabled_models", "faults"):
            if not all(isinstance(x, str) for x in getattr(self, name)):
                raise ValueError(f"{name} must be a list of strings, got {list(getattr(self, name))!r}")
        if not isinstance(self.allow_http_webhooks, bool):
            raise ValueError(f"allow_http_webhooks must be true or false, got {self.allow_http_webhooks!r}")
        if isinstance(self.balance_micros, bool) or not isinstance(self.balance_micros, int):
            raise ValueError("balance_micros must be an integer number of micro-dollars")
        if not self.api_keys:
            raise ValueError("at least one API key is needed")
        self._check_front_door()
        self._check_size_rule()
        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}; known: {', '.join(FAULTS)}")
        if self.media_drip_rate <= 0:
            raise ValueError(f"media_drip_rate must be positive (bytes per second), got {self.media_drip_rate}")
        if _not_int(self.gzip_bomb_bytes) or self.gzip_bomb_bytes < 1:
            raise ValueError(f"gzip_bomb_bytes must be a positive integer, got {self.gzip_bomb_bytes!r}")

    def _check_front_door(self) -> None:
        object.__setattr__(self, "rate_window", parse_rate_window(self.rate_window))
        if self.quota is not None and (_not_int(self.quota) or self.quota < 0):
            raise ValueError(f"quota must be a whole number of submits >= 0, got {self.quota!r}")
        for name in ("quota_reset", "throttle_retry_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {v!r}")
        if self.quota_reset <= 0:
            raise ValueError("quota_reset must be more than 0 seconds")
        if not isinstance(self.html_errors, bool):
            raise ValueError(f"html_errors must be true or false, got {self.html_errors!r}")

    def _check_size_rule(self) -> None:
        object.__setattr__(self, "edit_sizes", parse_edit_sizes(self.edit_sizes))
        object.__setattr__(self, "megapixel", parse_megapixel(self.megapixel))
        if self.factor_rounding not in ("round", "floor"):
            raise ValueError(f"factor_rounding must be 'round' or 'floor', got {self.factor_rounding!r}")

    @property
    def api_key(self) -> str:
        """The first configured key (the one helpers and the CLI hand out)."""
        return self.api_keys[0]

    @property
    def burst(self) -> int:
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, int(self.rate_limit or 1))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_json() if isinstance(v, Dist) else list(v) if isinstance(v, tuple) else v
        out["edit_sizes"] = {ratio: list(size) for ratio, size in self.edit_sizes}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown emulator setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**data)

    def replace(self, **changes: Any) -> EmulatorConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown emulator setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def runtime_replace(self, changes: dict[str, Any]) -> EmulatorConfig:
        """``replace`` restricted to the settings that may change while running."""
        fixed = sorted(set(changes) - self.RUNTIME_FIELDS)
        if fixed:
            raise ValueError(
                f"cannot change {', '.join(fixed)} at runtime; restart the emulator with the new setting"
            )
        return self.replace(**changes)


def _not_int(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, int)


def parse_rate_window(value: Any) -> tuple[int, float] | None:
    """``"100/10"``, ``[100, 10]`` or ``(100, 10.0)`` -> ``(100, 10.0)``: N submits per SECONDS."""
    if value is None:
        return None
    n: Any
    seconds: Any
    if isinstance(value, str):
        n, sep, seconds = value.strip().partition("/")
        if not sep:
            raise ValueError(f"rate_window must be N/SECONDS (e.g. 100/10), got {value!r}")
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        n, seconds = value
    else:
        raise ValueError(f"rate_window must be N/SECONDS (e.g. 100/10), got {value!r}")
    try:
        n_int, secs = int(n), float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"rate_window must be N/SECONDS (e.g. 100/10), got {value!r}") from None
    if isinstance(n, float) and n != n_int or n_int < 1 or not math.isfinite(secs) or secs <= 0:
        raise ValueError(f"rate_window needs N >= 1 submits per SECONDS > 0, got {value!r}")
    return n_int, secs


def parse_megapixel(value: Any) -> int:
    """``1000000``, ``"1e6"``, ``1048576`` or ``"2^20"`` -> pixels in one megapixel."""
    if isinstance(value, str):
        text = value.strip().replace("**", "^").replace("_", "")
        base, sep, exp = text.partition("^")
        try:
            value = int(base) ** int(exp) if sep else int(float(text))
        except ValueError:
            raise ValueError(f"megapixel must be a number of pixels (1000000, 2^20), got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if _not_int(value) or value < 1:
        raise ValueError(f"megapixel must be a positive number of pixels, got {value!r}")
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_edit_sizes(value: Any) -> tuple[tuple[str, tuple[int, int]], ...]:
    """``"16:9=1344x768,4:3=1152x864"``, ``{"16:9": [1344, 768]}`` or pairs -> sorted pairs."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(","))):
            ratio, sep, text = part.partition("=")
            if not sep:
                raise ValueError(f"edit_sizes must read RATIO=WxH[,...] (e.g. 16:9=1344x768), got {part!r}")
            pairs.append((ratio.strip(), text))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        try:
            pairs = [(ratio, size) for ratio, size in value]
        except (TypeError, ValueError):
            raise ValueError(f"edit_sizes must map aspect ratios to sizes, got {value!r}") from None
    out: dict[str, tuple[int, int]] = {}
    for ratio, size in pairs:
        if ratio not in ASPECT_RATIOS or ratio == "match_input_image":
            raise ValueError(f"edit_sizes: {ratio!r} is not an aspect ratio the gateway accepts "
                             f"({', '.join(ASPECT_RATIOS[1:])})")
        if isinstance(size, str):
            m = _SIZE.match(size)
            if not m:
                raise ValueError(f"edit_sizes: {ratio} needs a size WxH, got {size!r}")
            size = (int(m.group(1)), int(m.group(2)))
        if not isinstance(size, (list, tuple)) or len(size) != 2 or any(_not_int(x) or x < 1 for x in size):
            raise ValueError(f"edit_sizes: {ratio} needs two positive whole sides, got {size!r}")
        out[ratio] = (size[0], size[1])
    return tuple(sorted(out.items()))


def fast_test_config(**overrides: Any) -> EmulatorConfig:
    """Near-zero timings, http webhooks allowed: what the ``emulator`` pytest fixture uses."""
    base: dict[str, Any] = dict(queue_time=Dist(0.05), processing_time=Dist(0.1), allow_http_webhooks=True,
                                webhook_sync_interval=0.05, webhook_retries=0)
    base.update(overrides)
    return EmulatorConfig(**base)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(EmulatorConfig))

