"""Output files: what an output must look like, and how it is written.

- ``check_image``: a pure function from the downloaded bytes and the item's request to the
  image's size, format and the problems found (wrong format, more megapixels than asked,
  another size than any reading of the gateway's rules gives, beyond a pixel a side).
- ``OutputDir``: resolves output names under the output directory (a name that escapes it
  is refused), writes a file atomically (a ``.part`` file, fsync, rename), and tells which
  recorded outputs are missing or no longer match their checksum.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import MEDIA_TYPES
from ..errors import PixbatchError
from ..sizes import MAX_UPSCALE_MP, MEGAPIXEL, MEGAPIXEL_READINGS, fits, possible_output_sizes

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
MIME_TO_EXT = {v: k for k, v in MEDIA_TYPES.items()}


@dataclass(frozen=True)
class ImageCheck:
    width: int | None
    height: int | None
    format: str | None  # Pillow's name: JPEG, PNG, WEBP
    problems: tuple[str, ...]


def check_image(data: bytes | Path, op: str, body: dict[str, Any], media_type: str | None,
                input_size: tuple[int, int] | None) -> ImageCheck:
    """Read the image header (of the bytes, or of the file) and compare it with what the request asked for.

    The gateway does not say what one MP is nor how factor-mode sides are rounded, so an
    upscale is what was asked when each side is within a pixel (``sizes.fits``) of the size
    any reading gives (``sizes.possible_output_sizes``), and "more than N MP" means more than
    N x the largest reading. ``input_size`` must be a real size (None: the size is not checked).
    """
    from PIL import Image

    problems: list[str] = []
    width = height = None
    fmt = None
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            width, height = im.size
            fmt = im.format
    except Exception as exc:  # Pillow raises many types for bad data; recorded, not hidden
        problems.append(f"not a readable image ({type(exc).__name__})")
    if op == "upscale":
        want = PIL_FORMATS.get(body.get("output_format", "jpg"))
    else:
        want = PIL_FORMATS.get(MIME_TO_EXT.get(media_type or "", ""), None)
    if fmt and want and fmt != want:
        problems.append(f"format {fmt}, expected {want}")
    if width and height:
        pixels = width * height
        if op == "upscale":
            cap = (body.get("target", 4) if body.get("upscale_mode", "target") == "target" else MAX_UPSCALE_MP)
            if pixels > cap * max(MEGAPIXEL_READINGS) + width + height:  # a pixel more a side is rounding
                problems.append(f"{width}x{height} is more than {cap} MP")
            expected = possible_output_sizes(op, body, input_size)
            if expected and not any(fits((width, height), e) for e in expected):
                shown = " or ".join(f"{w}x{h}" for w, h in sorted(expected))
                problems.append(f"{width}x{height}, expected {shown}")
        elif pixels > 2 * MEGAPIXEL:
            problems.append(f"{width}x{height} is far more than the ~1 MP an edit produces")
    return ImageCheck(width, height, fmt, tuple(problems))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(target: Path, data: bytes) -> None:
    """``target`` holds ``data`` whole, or is untouched: a ``.part`` file is fsynced, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


class OutputDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    def target(self, name: str) -> Path:
        root = self.root.resolve()
        p = (root / name).resolve()
        if root != p and root not in p.parents:
            raise PixbatchError(f"output name {name!r} escapes the output directory {root}; fix the naming template.")
        return p

    def part_for(self, name: str) -> Path:
        """Where a download for ``name`` is streamed before it is placed (same directory: the rename is atomic)."""
        target = self.target(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f".{target.name}.{os.getpid()}.part")

    def place(self, names: list[str], part: Path) -> None:
        """The downloaded ``part`` (already fsynced) becomes the first name; the others get copies, each atomic."""
        first, *others = names
        for name in others:
            target = self.target(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.copyfile(part, tmp)
            os.replace(tmp, target)
        os.replace(part, self.target(first))

    def write(self, names: list[str], data: bytes) -> str:
        """Write ``data`` under every name; returns its sha256."""
        for name in names:
            write_atomic(self.target(name), data)
        return hashlib.sha256(data).hexdigest()

    def is_stale(self, names: list[str], recorded: dict[str, str]) -> bool:
        """Whether any of ``names`` is unrecorded, missing, or differs from its recorded sha256."""
        for name in names:
            sha = recorded.get(name)
            p = self.target(name)
            if sha is None or not p.exists() or sha256_file(p) != sha:
                return True
        return False
