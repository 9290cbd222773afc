"""The HTML report's gallery: what a run made, as thumbnails, and what it could not make, as cards.

``build_gallery(q, output_dir)`` reads the items in scope step by step (manifest order): the
completed ones with their output file, input, matrix values and charge, and (for a chained
step) the output of the item they were made from; the ones that did not complete, with their
error. Thumbnails are made here with Pillow from the files on disk (at most ``THUMB`` pixels a
side, JPEG) and embedded as data URIs, so the page stays one self-contained file: up to
``limit`` of them (shared between the steps); past that, or when a file is missing, a tile
keeps its caption and its link to the full file.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .queries import FAILED_KINDS, Scoped

THUMB = 200  # pixels, the longer side
DEFAULT_LIMIT = 120  # thumbnails embedded in one page (about 1 MB)
FAILED_CARDS = 24  # failure cards per step


@dataclass(frozen=True, slots=True)
class Tile:
    """One output of the gallery (``state`` COMPLETED), or one failure card (any other state)."""

    key: str
    step: str
    state: str
    output_name: str | None
    path: str | None  # the output file, relative to the output directory (None: nothing was downloaded)
    input_id: str | None
    vars: tuple[tuple[str, str], ...]  # matrix values, as shown
    charged_micros: int | None
    error: str | None
    width: int | None
    height: int | None
    thumb: str | None  # a data URI (None: not embedded)
    upstream_path: str | None = None  # a chained item's input: its upstream item's output file
    upstream_thumb: str | None = None


@dataclass(frozen=True, slots=True)
class GalleryStep:
    step: str
    op: str
    upstream_step: str | None  # the step it feeds on (for_each), if any
    outputs: int  # completed items with an output file
    tiles: tuple[Tile, ...]  # the first ones (by index)
    failures: int
    cards: tuple[Tile, ...]  # the first failure cards


@dataclass(frozen=True, slots=True)
class Gallery:
    output_dir: str | None
    steps: tuple[GalleryStep, ...]
    embedded: int  # thumbnails embedded
    limit: int


def thumbnail(path: Path, size: int = THUMB) -> str | None:
    """A JPEG data URI of the image at ``path``, at most ``size`` pixels a side (None: missing or unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.thumbnail((size, size))
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=72, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _vars(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    try:
        data = json.loads(text)
    except ValueError:
        return ()
    return tuple((str(k), str(v)) for k, v in data.items()) if isinstance(data, dict) else ()


def build_gallery(q: Scoped, output_dir: str | None, *, limit: int = DEFAULT_LIMIT) -> Gallery:
    """The gallery of the items in scope (see the module docstring)."""
    has_vars = bool(q.db.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'items' "
                                 "AND column_name = 'vars'").fetchone()[0])
    vars_col = "s.vars" if has_vars else "NULL"
    steps = q.all(
        """
        SELECT s.step, any_value(s.op), any_value(u.step), min(s._row) AS first,
               count(*) FILTER (WHERE s.state = 'COMPLETED'),
               count(*) FILTER (WHERE list_contains($failed, s.state))
        FROM s LEFT JOIN items u ON u.key = s.upstream GROUP BY s.step ORDER BY first
        """, failed=list(FAILED_KINDS))
    per_step = max(6, limit // max(1, len(steps)))
    root = Path(output_dir) if output_dir else None
    embedded = 0

    def thumb(rel: str | None) -> str | None:
        nonlocal embedded
        if root is None or rel is None or embedded >= limit:
            return None
        uri = thumbnail(root / rel)
        if uri is not None:
            embedded += 1
        return uri

    out = []
    for step, op, up_step, _, completed, failed in steps:
        rows = q.all(
            f"""
            SELECT s.key, s.state, s.output_name, o.path, s.input_id, {vars_col}, s.charged_micros, s.error,
                   o.width, o.height, uo.path
            FROM s LEFT JOIN outputs o ON o.key = s.key AND o.path = s.output_name
                   LEFT JOIN items u ON u.key = s.upstream
                   LEFT JOIN outputs uo ON uo.key = u.key AND uo.path = u.output_name
            WHERE s.step = $step AND s.state = 'COMPLETED'
            ORDER BY s.idx LIMIT $n
            """, step=step, n=per_step)
        tiles = []
        for key, state, name, path, input_id, v, charged, error, w, h, up_path in rows:
            tiles.append(Tile(key, step, state, name, path, input_id, _vars(v), charged, error, w, h, thumb(path),
                              up_path, thumb(up_path) if up_path else None))
        bad = q.all(
            f"""
            SELECT s.key, s.state, s.output_name, s.input_id, {vars_col}, s.charged_micros, s.error, uo.path
            FROM s LEFT JOIN items u ON u.key = s.upstream
                   LEFT JOIN outputs uo ON uo.key = u.key AND uo.path = u.output_name
            WHERE s.step = $step AND list_contains($failed, s.state)
            ORDER BY s.idx LIMIT $n
            """, step=step, failed=list(FAILED_KINDS), n=FAILED_CARDS)
        cards = [Tile(key, step, state, name, None, input_id, _vars(v), charged, error, None, None, None,
                      up_path, thumb(up_path) if up_path else None)
                 for key, state, name, input_id, v, charged, error, up_path in bad]
        out.append(GalleryStep(step, op, up_step, int(completed), tuple(tiles), int(failed), tuple(cards)))
    return Gallery(output_dir, tuple(out), embedded, limit)
