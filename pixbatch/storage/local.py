"""Local image files: what they are (format, size, sha256), read once per process.

A local input is known by its content: :func:`inspect` reads the file's header with
Pillow (format, width, height: no probe) and hashes its bytes (sha256), and the input's
URL becomes the placeholder ``pixbatch://file/<sha256>`` (``items.file_ref``). The result
is cached per process by (path, size, mtime), so the passes that walk the inputs again
(validate, the name check, the fingerprint, the expansion) read each file once.

Only the formats the gateway takes are inputs: JPEG, PNG and WebP. A file that is not one
of them raises :class:`NotAnImage`, which the manifest reports at the place the file is
named (a line of the manifest, a row of a CSV, the ``from:`` of a folder).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

# Pillow's format name -> (media type, the extension objects get)
FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_CHUNK = 1 << 20


class NotAnImage(Exception):
    """The file is missing, unreadable, or not a JPEG, PNG or WebP image (the message says which)."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: Path
    sha256: str
    bytes: int
    width: int
    height: int
    format: str  # JPEG | PNG | WEBP

    @property
    def media_type(self) -> str:
        return FORMATS[self.format][0]

    @property
    def ext(self) -> str:
        return FORMATS[self.format][1]


_cache: dict[tuple[str, int, int], LocalFile] = {}
_lock = threading.Lock()


def inspect(path: Path, shown: str | None = None) -> LocalFile:
    """The file's format, size and sha256 (cached while its size and mtime stay the same)."""
    shown = shown or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotAnImage(f"the file {shown} does not exist", "check the path (relative paths are relative to "
                         "the file that names them)") from None
    except OSError as exc:
        raise NotAnImage(f"cannot read {shown}: {exc.strerror or exc}", "check the path and permissions") from None
    if not os.path.isfile(path):
        raise NotAnImage(f"{shown} is not a file", "name an image file (or use {from: DIR} for a folder)")
    ck = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(ck)
    if hit is not None:
        return hit
    got = _read(path, shown, st.st_size)
    with _lock:
        if len(_cache) > 1_000_000:
            _cache.clear()
        _cache[ck] = got
    return got


def _read(path: Path, shown: str, size: int) -> LocalFile:
    from PIL import Image, UnidentifiedImageError

    if size == 0:
        raise NotAnImage(f"{shown} is empty", "remove it, or replace it with a JPEG, PNG or WebP image")
    try:
        with Image.open(path) as im:
            fmt = im.format
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        kind = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else f"a damaged image ({exc})"
        raise NotAnImage(f"{shown} is {kind}", "remove it from the inputs, or narrow the folder's glob") from None
    if fmt not in FORMATS:
        raise NotAnImage(f"{shown} is a {fmt} image; the gateway takes JPEG, PNG and WebP",
                         "convert it to JPEG, PNG or WebP, or leave it out")
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return LocalFile(path, h.hexdigest(), n, width, height, fmt)


def list_folder(root: Path, glob: str | None, recursive: bool) -> list[Path]:
    """The files of a folder input, sorted by their path relative to ``root`` (a stable order).

    Without a glob: files whose suffix is an image suffix (any case). Hidden files and
    folders (a name starting with '.') are skipped.
    """
    if glob:
        it = root.rglob(glob) if recursive else root.glob(glob)
        files = [p for p in it if p.is_file()]
    else:
        it = root.rglob("*") if recursive else root.iterdir()
        files = [p for p in it if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
