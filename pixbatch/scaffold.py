"""``pixbatch init``: a commented starter manifest from a folder of images or a CSV.

The manifest is written for the user to edit: every field has a comment saying what it
does, one example step per operation (the upscale active, the edit commented out), a
budget sized from the estimate of the manifest as written, and an ``uploads:`` section
when the inputs are local files. It validates as written (``starter_manifest`` checks it
before returning), so ``validate``, ``estimate`` and, once the bucket is named, ``run``
work on it straight away.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .errors import PixbatchError
from .storage.local import IMAGE_SUFFIXES

PLACEHOLDER_BUCKET = "s3://change-me-bucket/pixbatch/inputs/"


def _source(source: Path, manifest: Path) -> tuple[str, bool, int]:
    """(the from: path as written, whether the inputs are local files, how many inputs)."""
    rel = os.path.relpath(source.resolve(), manifest.resolve().parent)
    if source.is_dir():
        n = sum(1 for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return rel.rstrip("/") + "/", True, n
    if source.suffix.lower() not in (".csv", ".txt"):
        raise PixbatchError(f"{source} is neither a folder nor a .csv or .txt file: pass a folder of images or a CSV")
    with open(source, encoding="utf-8-sig", newline="") as f:
        if source.suffix.lower() == ".txt":
            rows = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            return rel, any("://" not in r for r in rows), len(rows)
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        n = sum(1 for row in reader if any(c.strip() for c in row))
    return rel, "path" in header, n


def _text(name: str, src: str, local: bool, n: int, budget: str, estimate: str) -> str:
    folder = src.endswith("/")
    lines = [
        f"# pixbatch manifest for {src} ({n} input(s)), written by `pixbatch init`. Reference: docs/manifest.md",
        "#   pixbatch validate THIS_FILE    every problem at once, with file:line:column",
        "#   pixbatch estimate THIS_FILE    what it will cost (nothing is sent)",
        "#   pixbatch run THIS_FILE         run it (PIXAZO_API_KEY set); kill it any time, run again to resume",
        "version: 1",
        f"name: {name}                       # a name for the batch",
        f'budget_usd: "{budget}"                  # hard cap for `run`; the estimate of the steps below is {estimate}',
        "output_dir: out/                    # where outputs go: a folder next to this file, or s3://bucket/prefix/",
        "naming: \"{step}/{stem}.{ext}\"       # output names: step id, input id (+ matrix values), extension",
        "inputs:",
    ]
    if folder:
        lines += [
            f"  - from: {src}                  # every .jpg, .jpeg, .png and .webp image in the folder; sizes come from the files",
            "    # glob: \"*.jpg\"                # only the files matching a pattern",
            "    # recursive: true               # look in subfolders too (ids are then the relative paths)",
        ]
    else:
        lines += [
            f"  - from: {src}                  # one input per row: a url (or path, for a local file) column;",
            "                                    # optional id, width, height; other columns are {template} variables",
        ]
    if local:
        lines += [
            "# The gateway reads images from URLs, so local files are uploaded to a bucket first: once each",
            "# (objects are named by the sha256 of their bytes), before the items that need them are sent.",
            "# Credentials come from the AWS_* variables or your AWS profile; they are never stored.",
            "# Needs the S3 client: pip install 'pixbatch[s3]'.",
            "uploads:",
            f"  to: {PLACEHOLDER_BUCKET}   # CHANGE ME: a bucket you can write to, and a prefix",
            "  # endpoint_url: https://s3.example.com   # an S3-compatible service other than AWS (R2, MinIO, ...)",
            "  # url: presigned                # how the gateway reads uploads: presigned URLs, or public",
            "  # public_base_url: https://cdn.example.com/pixbatch/inputs   # with url: public",
            "  # expires: 7d                   # how long a presigned URL lives (at most 7d)",
        ]
    lines += [
        "steps:",
        "  # Upscale every input. target: output megapixels (1-8); or upscale_mode: factor with factor: 2",
        "  - id: upscale",
        "    op: upscale",
        "    target: 4",
        "    output_format: jpg               # webp, jpg or png",
        "    # output_quality: 90",
        "  # Edit every input with a prompt (uncomment to use; add for_each: edit to the upscale step",
        "  # to upscale the edits instead of the inputs, and raise the budget).",
        "  # - id: edit",
        "  #   op: edit",
        "  #   prompt: \"The background is changed to {color}\"",
        "  #   matrix: {color: [white, black]}  # one edit per value: a matrix multiplies the items",
        "  #   aspect_ratio: match_input_image",
        "",
    ]
    return "\n".join(lines)


def starter_manifest(source: str | Path, output: str | Path) -> str:
    """The text of a starter manifest for ``source`` (a folder or a CSV/txt file), to be written at ``output``."""
    from .estimate import estimate_manifest
    from .manifest import load_manifest
    from .pricing import PriceTable

    source, output = Path(source), Path(output)
    if not source.exists():
        raise PixbatchError(f"{source} does not exist: pass a folder of images or a CSV file")
    src, local, n = _source(source, output)
    if n == 0:
        raise PixbatchError(f"{source} has no inputs (a folder needs .jpg, .jpeg, .png or .webp files; a CSV, rows)")
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in (source.stem or source.name)).strip("-") or "batch"
    draft = _text(name, src, local, n, "1.00", "?")
    manifest = load_manifest(draft, base_dir=output.resolve().parent)  # a problem here is pixbatch's bug
    est = estimate_manifest(manifest, PriceTable.load(None), probe=False)
    cents = max(100, math.ceil(est.high_micros * 1.25 / 10_000))  # the estimate plus a quarter, at least $1
    text = _text(name, src, local, n, f"{cents // 100}.{cents % 100:02d}", est.total_text())
    load_manifest(text, base_dir=output.resolve().parent)
    return text
