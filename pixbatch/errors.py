"""The exceptions pixbatch raises, and the exit codes the CLI maps them to.

    PixbatchError                      exit 1   base: every message says what to do next
    ├── ManifestError                  exit 2   the manifest is invalid (carries every Problem)
    ├── PricingError                   exit 2   the price table file is missing or invalid
    ├── ProbeError                     exit 1   an image URL could not be sized
    ├── BudgetExceeded                 exit 3   the estimate or the next item does not fit the budget
    ├── StateError                     exit 1   the DuckDB state file is unusable
    │   └── StateLocked                exit 6   another pixbatch process holds the state file
    └── GatewayError                   exit 1   the gateway answered something we cannot act on
        ├── AuthError                  exit 4   401/403: the key is missing, unknown or not allowed
        ├── InsufficientBalance        exit 5   402: top up the wallet, then run again
        ├── RateLimited                         429 (retried by the client; surfaced only if retries run out)
        ├── ServerError                         5xx (retried on idempotent calls)
        ├── BadRequest                          400: the gateway rejected the request body
        ├── NotFound                            404: unknown request id
        └── ProtocolError                       the answer is not what the contract says (garbage JSON, ...)

Messages never contain the API key; ``redact`` scrubs any text that might.
"""

from __future__ import annotations

import os


class PixbatchError(Exception):
    exit_code = 1


class ManifestError(PixbatchError):
    exit_code = 2

    def __init__(self, problems: list, message: str | None = None):
        self.problems = list(problems)
        super().__init__(message or "\n".join(str(p) for p in self.problems))


class PricingError(PixbatchError):
    exit_code = 2


class ProbeError(PixbatchError):
    pass


class BudgetExceeded(PixbatchError):
    exit_code = 3


class StateError(PixbatchError):
    pass


class StateLocked(StateError):
    exit_code = 6


class GatewayError(PixbatchError):
    def __init__(self, message: str, *, status_code: int | None = None, body: str | None = None):
        self.status_code = status_code
        self.body = redact(body) if body is not None else None
        super().__init__(redact(message))


class AuthError(GatewayError):
    exit_code = 4


class InsufficientBalance(GatewayError):
    exit_code = 5


class RateLimited(GatewayError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ServerError(GatewayError):
    pass


class BadRequest(GatewayError):
    pass


class NotFound(GatewayError):
    pass


class ProtocolError(GatewayError):
    pass


API_KEY_ENV = "PIXAZO_API_KEY"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove the API key (from the environment, plus any ``secrets``) from ``text``."""
    for s in (os.environ.get(API_KEY_ENV, ""), *secrets):
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text
