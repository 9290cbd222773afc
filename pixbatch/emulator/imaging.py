"""The image work, as pure functions from input bytes to output bytes (Pillow).

These run in worker threads, never on the event loop. Sizes come from the gateway's
``SizeRule`` (``sizing.py``), whose defaults are exactly what pixbatch predicts (and prices):

- upscale: LANCZOS resize to the rule's upscale size (target megapixels, or factor capped
  at 8 MP), optional sharpening for ``enhance_details``, saved as the requested format
  and quality.
- edit: the main image cropped and scaled to the rule's edit size for the aspect ratio,
  reference images blended in, and a tint plus stripe pattern derived from
  ``sha256(prompt, seed)``: the same prompt and seed always give the same pixels, a
  different prompt or seed visibly different ones. Output is JPEG.
- placeholder: what lazy mode serves, a flat image of the right size and format.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError

from ..contract import MEDIA_TYPES
from .sizing import SizeRule

_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
EDIT_FORMAT = "jpg"
EDIT_QUALITY = 90


class ImagingError(Exception):
    """The input cannot be used (not an image, unreadable); the job ends FAILED with this message."""


@dataclass(frozen=True, slots=True)
class Rendered:
    data: bytes
    size: tuple[int, int]
    ext: str
    input_size: tuple[int, int]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.ext]


def decode(data: bytes, what: str = "input image") -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except UnidentifiedImageError:
        raise ImagingError(f"{what} is not a supported image ({_sniff(data)})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImagingError(f"{what} is too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImagingError(f"{what} could not be decoded: {exc}") from None
    return ImageOps.exif_transpose(img) or img


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header only (cheap)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except UnidentifiedImageError:
        raise ImagingError(f"input image is not a supported image ({_sniff(data)})") from None
    except OSError as exc:
        raise ImagingError(f"input image could not be read: {exc}") from None


def _sniff(data: bytes) -> str:
    """What the bytes look like, for an error message (never the bytes themselves)."""
    head = data[:64].lstrip().lower()
    if not data:
        return "empty body"
    if head.startswith((b"<!doctype html", b"<html")):
        return f"an HTML page, {len(data):,} bytes"
    if head.startswith((b"{", b"[")):
        return f"JSON, {len(data):,} bytes"
    return f"{len(data):,} bytes of unknown format"


def encode(img: Image.Image, ext: str, quality: int = 80) -> bytes:
    fmt = _PIL_FORMATS[ext]
    if fmt == "JPEG" and img.mode != "RGB":
        img = img.convert("RGB")
    elif img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, fmt, compress_level=1)
    elif fmt == "WEBP":
        img.save(buf, fmt, quality=quality, method=0)
    else:
        img.save(buf, fmt, quality=quality)
    return buf.getvalue()


DEFAULT_RULE = SizeRule()


def upscale(data: bytes, body: dict, rule: SizeRule = DEFAULT_RULE) -> Rendered:
    img = decode(data)
    out_size = rule.upscale_size(img.size, body)
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    out = img.resize(out_size, Image.Resampling.LANCZOS)
    if body.get("enhance_details", False):
        out = out.filter(ImageFilter.UnsharpMask(radius=2, percent=60, threshold=2))
    ext = body.get("output_format", "jpg")
    return Rendered(encode(out, ext, int(body.get("output_quality", 80))), out.size, ext, img.size)


def prompt_digest(prompt: str, seed: int) -> bytes:
    return hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()


def edit(main: bytes, references: list[bytes], prompt: str, seed: int, aspect_ratio: str,
         rule: SizeRule = DEFAULT_RULE) -> Rendered:
    img = decode(main, "images[0]").convert("RGB")
    out_size = rule.edit_size(img.size, aspect_ratio)
    assert out_size is not None
    out = ImageOps.fit(img, out_size, Image.Resampling.LANCZOS)
    for i, ref_bytes in enumerate(references, start=1):
        ref = ImageOps.fit(decode(ref_bytes, f"images[{i}]").convert("RGB"), out_size, Image.Resampling.BILINEAR)
        out = Image.blend(out, ref, 0.3 / i)
    d = prompt_digest(prompt, seed)
    tint = Image.new("RGB", out_size, (d[0], d[1], d[2]))
    out = Image.blend(out, tint, 0.35)
    draw = ImageDraw.Draw(out)
    w, h = out_size
    for k in range(3, 3 + 3 * 4, 3):  # four stripes whose place and colour come from the digest
        x = d[k] * w // 256
        band = max(4, d[k + 1] * w // 2048)
        draw.rectangle((x, 0, min(w - 1, x + band), h - 1), fill=(d[k + 2], d[k], d[k + 1]))
    return Rendered(encode(out, EDIT_FORMAT, EDIT_QUALITY), out.size, EDIT_FORMAT, img.size)


def placeholder(size: tuple[int, int], ext: str, quality: int, tag: str) -> bytes:
    """A flat image of ``size`` whose colour comes from ``tag`` (lazy mode output)."""
    d = hashlib.sha256(tag.encode()).digest()
    return encode(Image.new("RGB", size, (d[0], d[1], d[2])), ext, quality)
