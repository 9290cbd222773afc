"""The exceptions pixbatch raises, and the exit codes the CLI maps them to.

    PixbatchError                      exit 1   base: every message says what to do next
    ├── ManifestError                  exit 2   the manifest is invalid (carries every Problem)
    ├── UsageError                     exit 2   an option's value cannot work (e.g. a base URL that is no URL)
    ├── PricingError                   exit 2   the price table file is missing or invalid
    ├── OptionError                    exit 2   an option cannot be used (a port in use, an unknown step, a directory not writable)
    ├── ProbeError                     exit 1   an image URL could not be sized
    ├── BudgetExceeded                 exit 3   the estimate or the next item does not fit the budget
    ├── StateError                     exit 1   the DuckDB state file is unusable
    │   └── StateLocked                exit 6   another pixbatch process holds the state file
    ├── StorageError                   exit 1   an object store (S3) refused or failed: bucket, credentials, object
    │   └── StorageUnavailable         exit 2   s3:// used without the S3 client installed (pip install 'pixbatch[s3]')
    └── GatewayError                   exit 1   the gateway answered something we cannot act on
        ├── AuthError                  exit 4   401/403: the key is unknown or not allowed
        │   ├── MissingApiKey          exit 4   no key at all (``require_api_key``)
        │   └── InvalidApiKey          exit 4   a key no HTTP header can carry (non-ASCII, control characters)
        ├── InsufficientBalance        exit 5   402: top up the wallet, then run again
        ├── QuotaExceeded              exit 7   403 with Retry-After: the key's call quota is used up for now
        ├── RateLimited                         429 (retried by the client; surfaced only if retries run out)
        ├── ServerError                         5xx (retried on idempotent calls)
        ├── BadRequest                          400: the gateway rejected the request body
        ├── NotFound                            404: unknown request id
        ├── SubmitUnknown                       a submit that may have been accepted (and charged): AMBIGUOUS
        ├── GatewayUnreachable         exit 8   no answer at all (after the retries the call allows)
        └── GatewayProtocolError                the answer is not what the contract says (garbage JSON, ...)

(``GatewayUnreachable`` and ``GatewayProtocolError`` are named so that they do not shadow
httpx's ``NetworkError`` and ``ProtocolError``, which the gateway client also handles.)

Exit codes (``ExitCode``; the CLI exits with ``exc.exit_code``, a run with ``RunSummary.exit_code``):

    0    OK            everything asked for completed
    1    ERROR         some items did not complete (failed, blocked, ambiguous), or another error
    2    USAGE         invalid manifest, price table or command line (click's usage errors are 2 too)
    3    BUDGET        the estimate or the next item does not fit the budget
    4    AUTH          the API key is missing or refused
    5    BALANCE       insufficient wallet balance (402)
    6    STATE_LOCKED  another pixbatch process holds the state file
    7    QUOTA         the gateway's call quota for the key is used up (403 with Retry-After): run again later
    8    UNREACHABLE   the gateway could not be reached at all (wrong --base-url, no network)
    130  INTERRUPTED   SIGINT/SIGTERM

The API key is read in one place, ``require_api_key``. Messages never contain it;
``redact`` scrubs any text that might, and the signature, credential and session token of
a presigned object-store URL (an error that quotes an input's URL).
"""

from __future__ import annotations

import enum
import os
import re


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    INCOMPLETE = 1  # alias: a run that left items not completed
    USAGE = 2
    BUDGET = 3
    AUTH = 4
    BALANCE = 5
    STATE_LOCKED = 6
    QUOTA = 7
    UNREACHABLE = 8
    INTERRUPTED = 130


class PixbatchError(Exception):
    exit_code: ExitCode = ExitCode.ERROR


class ManifestError(PixbatchError):
    exit_code = ExitCode.USAGE

    def __init__(self, problems: list, message: str | None = None):
        self.problems = list(problems)
        super().__init__(message or "\n".join(str(p) for p in self.problems))


class UsageError(PixbatchError):
    """An option's value cannot work (a base URL that is not a URL, ...): fix the command line."""

    exit_code = ExitCode.USAGE


class PricingError(PixbatchError):
    exit_code = ExitCode.USAGE


class OptionError(PixbatchError):
    """An option that parsed but cannot be used here: a port in use, a directory not writable."""

    exit_code = ExitCode.USAGE


class ProbeError(PixbatchError):
    pass


class BudgetExceeded(PixbatchError):
    exit_code = ExitCode.BUDGET


class StateError(PixbatchError):
    pass


class StateLocked(StateError):
    exit_code = ExitCode.STATE_LOCKED


class StorageError(PixbatchError):
    """An object store answered with a refusal or could not be reached (the message names the bucket and what to do)."""


class StorageUnavailable(StorageError):
    exit_code = ExitCode.USAGE


class GatewayError(PixbatchError):
    def __init__(self, message: str, *, status_code: int | None = None, body: str | None = None):
        self.status_code = status_code
        self.body = redact(body) if body is not None else None
        super().__init__(redact(message))


class AuthError(GatewayError):
    exit_code = ExitCode.AUTH


class MissingApiKey(AuthError):
    """No API key was given and ``PIXAZO_API_KEY`` is not set."""


class InvalidApiKey(AuthError):
    """The key holds characters an HTTP header cannot carry (it would never reach the gateway)."""


class InsufficientBalance(GatewayError):
    exit_code = ExitCode.BALANCE


class QuotaExceeded(GatewayError):
    """403 with Retry-After, API Management's "Out of call volume quota": not a bad key. Nothing
    more can be sent until ``retry_after`` seconds have passed; nothing is failed."""

    exit_code = ExitCode.QUOTA

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        self.retry_after = retry_after
        super().__init__(message, **kw)


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


class SubmitUnknown(GatewayError):
    """The submit may or may not have been accepted (and charged): never retry automatically."""


class GatewayUnreachable(GatewayError):
    """The gateway could not be reached (after retries, for idempotent calls)."""


class GatewayProtocolError(GatewayError):
    """The gateway's answer is not what the contract says."""


API_KEY_ENV = "PIXAZO_API_KEY"


def require_api_key(explicit: str | None = None) -> str:
    """The API key: ``explicit`` when given, else ``$PIXAZO_API_KEY``; ``MissingApiKey`` when neither is set.

    Surrounding whitespace is dropped (a key pasted with a newline is the same key).
    """
    key = (explicit or os.environ.get(API_KEY_ENV) or "").strip()
    if not key:
        raise MissingApiKey(f"no API key: set {API_KEY_ENV} to your Pixazo subscription key, then run again "
                            "(it is read from the environment only and never stored).")
    bad = next((i for i, c in enumerate(key) if not (c.isascii() and c.isprintable()) or c.isspace()), None)
    if bad is not None:  # it could not be sent in an HTTP header: refuse it before anything is sent
        what = "a space" if key[bad].isspace() else "a non-ASCII or control character"
        raise InvalidApiKey(f"the API key has {what} at position {bad + 1} of {len(key)}: a Pixazo key is printable "
                            f"ASCII. Check {API_KEY_ENV} (copy the key again from the Pixazo dashboard).")
    register_secret(key)
    return key


_SECRETS: set[str] = set()  # every key this process has used, wherever it came from


def register_secret(secret: str) -> None:
    """``secret`` is scrubbed from every message ``redact`` sees from now on (the key in use, even
    when it was passed in code rather than read from ``PIXAZO_API_KEY``)."""
    if secret and len(secret) >= 4:
        _SECRETS.add(secret)


_PRESIGNED = re.compile(r"((?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|"
                        r"x-amz-security-token)=)[^&\s\"'<>]+", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove the API key (from the environment, every registered key, plus any ``secrets``) and the
    signing parts of presigned URLs from ``text``."""
    for s in (os.environ.get(API_KEY_ENV, ""), *_SECRETS, *secrets):
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    if "=" in text:
        text = _PRESIGNED.sub(r"\1***", text)
    return text
