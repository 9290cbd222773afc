"""Parameter types of the command line: each value checked as it is parsed (a usage error,
exit 2, that says what to give instead), before any command does anything with it.

``USD`` (dollars -> micro-dollars), ``Number`` (a finite number in a range: click's
FloatRange lets ``nan`` through), ``PathArg`` (click.Path without a NUL), ``HttpUrl`` and
``HostPort`` (syntax only: what a run does with them is the runner's business).
"""

from __future__ import annotations

import math
from typing import Any

import click


class USD(click.ParamType):
    """An amount of dollars ("25", "12.50", "0.005") -> integer micro-dollars; never negative."""

    name = "usd"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            micros = value  # already converted (a default given in micros)
        else:
            from .money import usd_to_micros

            try:
                micros = usd_to_micros(str(value).strip().removeprefix("$"))
            except (ValueError, TypeError) as exc:
                self.fail(f"{exc}; give dollars like 25 or 12.50", param, ctx)
        if micros < 0:
            self.fail(f"{value} is negative; give an amount of dollars >= 0", param, ctx)
        return micros


class Number(click.FloatRange):
    """A finite number in a range: click's FloatRange lets ``nan`` (and ``inf`` without a maximum) through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class PathArg(click.Path):
    """click.Path, but a NUL in the value is a usage error (click's own check lets os.stat raise ValueError)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "\x00" in value:
            self.fail(f"{value!r} contains a NUL character", param, ctx)
        return super().convert(value, param, ctx)


class HttpUrl(click.ParamType):
    """An http:// or https:// URL with a host (syntax only: whether it answers is the run's business)."""

    name = "url"

    def __init__(self, what: str = "URL"):
        self.what = what  # "base URL", "webhook URL": how messages name it

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from urllib.parse import urlsplit

        text = str(value)
        if not text or len(text) > 2048 or any(ch.isspace() or not ch.isprintable() for ch in text):
            self.fail(f"the {self.what} {text[:80]!r} is empty, too long, or has spaces or control characters",
                      param, ctx)
        try:
            u = urlsplit(text)
            u.port  # noqa: B018  (raises ValueError for a port that is not a number from 0 to 65535)
        except ValueError as exc:
            self.fail(f"the {self.what} {text!r} is not a valid URL ({exc})", param, ctx)
        if u.scheme.lower() not in ("http", "https") or not u.hostname:
            self.fail(f"the {self.what} {text!r} is not an http:// or https:// URL with a host, "
                      "e.g. https://example.com", param, ctx)
        return text


class HostPort(click.ParamType):
    """HOST:PORT to listen on: a host name or address ([::1] for IPv6; empty: loopback) and a port 1-65535."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        bad_host = len(host) > 253 or any(ch.isspace() or not ch.isprintable() or ch in "/[]@" for ch in host)
        if not sep or bad_host or not (port.isascii() and port.isdigit()) or len(port) > 5 or not 1 <= int(port) <= 65535:
            self.fail(f"{text[:80]!r} is not HOST:PORT, e.g. 127.0.0.1:8080 (a port from 1 to 65535)", param, ctx)
        return text
