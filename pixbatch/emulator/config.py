"""What the emulator does, as one frozen value: keys, wallet, timings and faults.

``EmulatorConfig`` is built from Python (keyword arguments), from the command line
(``pixbatch emulator --fail-rate 0.1 ...``) or from JSON (``to_dict``/``from_dict``, which
is how a subprocess emulator receives its config and how ``POST /_emulator/config``
changes faults at runtime). Timings are ``Dist`` values: a fixed number of seconds or a
uniform ``min-max`` range. Every random choice the emulator makes is drawn from an RNG
seeded with ``seed`` and the ordinal of the submit or poll, so a run with the same seed
and the same sequence of requests sees the same faults and outcomes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_API_KEY = "test-key"
KEY_ENV = "PIXBATCH_EMULATOR_KEY"

Render = Literal["real", "lazy"]


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
    "submit_garbage_rate", "poll_garbage_rate", "webhook_duplicate_rate",
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

    #: fields ``POST /_emulator/config`` may change at runtime
    RUNTIME_FIELDS = frozenset({
        *_RATES, *_DISTS, "rate_limit", "rate_burst", "api_keys", "forbidden_keys", "disabled_models",
        "allow_http_webhooks", "webhook_sync_interval", "webhook_timeout", "webhook_retries", "seed",
        "fetch_timeout",
    })

    def __post_init__(self) -> None:
        for name in _DISTS:
            object.__setattr__(self, name, Dist.parse(getattr(self, name)))
        for name in ("api_keys", "forbidden_keys", "disabled_models"):
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
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if isinstance(self.balance_micros, bool) or not isinstance(self.balance_micros, int):
            raise ValueError("balance_micros must be an integer number of micro-dollars")
        if not self.api_keys:
            raise ValueError("at least one API key is needed")

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


def fast_test_config(**overrides: Any) -> EmulatorConfig:
    """Near-zero timings, http webhooks allowed: what the ``emulator`` pytest fixture uses."""
    base: dict[str, Any] = dict(queue_time=Dist(0.05), processing_time=Dist(0.1), allow_http_webhooks=True,
                                webhook_sync_interval=0.05, webhook_retries=0)
    base.update(overrides)
    return EmulatorConfig(**base)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(EmulatorConfig))

