"""The P-Image gateway contract, as documented in ``shared/reference/p-image-api.txt``.

One place for the facts both sides must agree on: endpoint paths, model ids, request
parameters with their documented defaults and ranges, status values. The client
(``gateway.py``), the manifest expander (``expand.py``) and the emulator all read them
from here, so the emulator validates requests with the same rules the client builds
them with.

What differs between the operations is a row of ``OPERATIONS`` (an ``Operation``: its
endpoint, model id, where its main image goes in the body, its parameters), not an
``if op == "upscale"`` branch; ``ENDPOINTS``, ``MODEL_IDS``, ``PARAMS`` and ``STEP_PARAMS``
are views of that table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["upscale", "edit"]
OPS: tuple[Op, ...] = ("upscale", "edit")

STATUS_PATH = "/v2/requests/status/{request_id}"
AUTH_HEADER = "Ocp-Apim-Subscription-Key"
WEBHOOK_URL_HEADER = "X-Webhook-URL"
WEBHOOK_MODE_HEADER = "X-Webhook-Mode"

QUEUED, PROCESSING, COMPLETED, FAILED, ERROR = "QUEUED", "PROCESSING", "COMPLETED", "FAILED", "ERROR"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, ERROR)
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, ERROR})

OUTPUT_FORMATS = ("webp", "jpg", "png")
ASPECT_RATIOS = ("match_input_image", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True, slots=True)
class Param:
    """One documented request parameter."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "uri", "uri_list", "string_list"]
    required: bool = False
    default: Any = None  # None: no documented default (the parameter is omitted)
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the gateway, as data."""

    name: Op
    endpoint: str  # POST path, relative to the base URL (``https://gateway.pixazo.ai`` for the real gateway)
    model_id: str  # reported by the status endpoint, and the prefix of request ids (``<model>_<uuid>``)
    image_param: str  # the body's main image: a URL, or a list of URLs whose first is the main one
    params: tuple[Param, ...]
    #: parameters a manifest may not set on a step: the images (from ``for_each`` and
    #: ``references``) and the body-level webhook fields
    item_params: frozenset[str] = frozenset()

    @property
    def step_params(self) -> tuple[str, ...]:
        """Parameters a manifest may set on a step."""
        return tuple(p.name for p in self.params if p.name != self.image_param and p.name not in self.item_params)

    def main_image(self, body: Mapping[str, Any]) -> str:
        v = body[self.image_param]
        return v[0] if isinstance(v, list) else v


OPERATIONS: dict[str, Operation] = {
    "upscale": Operation(
        "upscale", "/p-image-upscale/v1/p-image-upscale/generate", "p-image-upscale", "image", (
            Param("image", "uri", required=True),
            Param("upscale_mode", "string", default="target", enum=("target", "factor")),
            Param("target", "integer", default=4, minimum=1, maximum=8),
            Param("factor", "number", default=2, minimum=1, maximum=8),
            Param("enhance_details", "boolean", default=False),
            Param("enhance_realism", "boolean", default=True),
            Param("output_format", "string", default="jpg", enum=OUTPUT_FORMATS),
            Param("output_quality", "integer", default=80, minimum=0, maximum=100),
            Param("disable_safety_checker", "boolean", default=False),
        )),
    "edit": Operation(
        "edit", "/p-image/v1/p-image-edit/generate", "p-image", "images", (
            Param("prompt", "string", required=True),
            Param("images", "uri_list", required=True),
            Param("turbo", "boolean", default=True),
            Param("seed", "integer"),
            Param("aspect_ratio", "string", default="match_input_image", enum=ASPECT_RATIOS),
            Param("disable_safety_checker", "boolean", default=False),
            Param("webhook", "uri"),
            Param("webhook_events_filter", "string_list"),
        ), item_params=frozenset({"webhook", "webhook_events_filter"})),
}
assert tuple(OPERATIONS) == OPS

#: POST paths, relative to the base URL.
ENDPOINTS: dict[str, str] = {name: o.endpoint for name, o in OPERATIONS.items()}
#: model_id reported by the status endpoint, and prefix of request ids (``<model>_<uuid>``).
MODEL_IDS: dict[str, str] = {name: o.model_id for name, o in OPERATIONS.items()}
PARAMS: dict[str, tuple[Param, ...]] = {name: o.params for name, o in OPERATIONS.items()}
#: Parameters a manifest may set on a step (everything but the image inputs, which
#: come from ``for_each`` and ``references``, and the body-level webhook fields).
STEP_PARAMS: dict[str, tuple[str, ...]] = {name: o.step_params for name, o in OPERATIONS.items()}


def param(op: str, name: str) -> Param:
    for p in PARAMS[op]:
        if p.name == name:
            return p
    raise KeyError(f"{op} has no parameter {name!r}")


def documented_defaults(op: str) -> dict[str, Any]:
    """The documented default of every optional parameter that has one."""
    return {p.name: p.default for p in PARAMS[op] if p.default is not None}


def validate_body(op: str, body: Any) -> list[str]:
    """Check a request body against the documented parameter rules.

    Returns human-readable problems (empty when valid). Unknown keys are reported too:
    the gateway's model validation rejects them.
    """
    if not isinstance(body, dict):
        return ["request body must be a JSON object"]
    problems: list[str] = []
    known = {p.name: p for p in PARAMS[op]}
    for key in body:
        if key not in known:
            problems.append(f"unknown parameter {key!r}")
    for p in PARAMS[op]:
        if p.name not in body:
            if p.required:
                problems.append(f"{p.name!r} is required")
            continue
        v = body[p.name]
        problems.extend(_check_value(p, v))
    return problems


def _is_url(v: Any) -> bool:
    return isinstance(v, str) and (v.startswith("http://") or v.startswith("https://")) and len(v) > 8


def _check_value(p: Param, v: Any) -> list[str]:
    t = p.type
    if t == "boolean":
        return [] if isinstance(v, bool) else [f"{p.name!r} must be a boolean"]
    if t in ("integer", "number"):
        ok_type = isinstance(v, int) and not isinstance(v, bool)
        if t == "number":
            ok_type = ok_type or isinstance(v, float)
        if not ok_type:
            return [f"{p.name!r} must be {'an integer' if t == 'integer' else 'a number'}"]
        if p.minimum is not None and v < p.minimum or p.maximum is not None and v > p.maximum:
            return [f"{p.name!r} must be between {p.minimum:g} and {p.maximum:g}, got {v}"]
        return []
    if t == "string":
        if not isinstance(v, str):
            return [f"{p.name!r} must be a string"]
        if p.enum and v not in p.enum:
            return [f"{p.name!r} must be one of {', '.join(p.enum)}; got {v!r}"]
        if p.required and not v.strip():
            return [f"{p.name!r} must not be empty"]
        return []
    if t == "uri":
        return [] if _is_url(v) else [f"{p.name!r} must be an http(s) URL"]
    if t == "uri_list":
        if not isinstance(v, list) or not v:
            return [f"{p.name!r} must be a non-empty array of image URLs"]
        return [f"{p.name}[{i}] must be an http(s) URL" for i, u in enumerate(v) if not _is_url(u)]
    if t == "string_list":
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            return [f"{p.name!r} must be an array of strings"]
        return []
    raise AssertionError(t)  # pragma: no cover
