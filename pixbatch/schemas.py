"""Load the JSON Schemas shipped in ``schemas/`` (the single source of the manifest's shape)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_schema(name: str) -> dict[str, Any]:
    """``load_schema("manifest")`` -> the parsed ``schemas/manifest.schema.json``."""
    text = resources.files("pixbatch").joinpath("_schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)
