"""``pixbatch demo``: the whole loop on one machine, with no key and no network.

``run_demo(directory)`` starts the gateway emulator in this process (uvicorn in a thread,
free loopback port, its own key), draws two real images with Pillow and serves them, with
one file that is *not* an image, from a second loopback server; writes a small manifest
(3 inputs x an edit with a 2-value matrix, then a factor-2 upscale of every edit); prices
it (``estimate_manifest``, which probes the images over loopback); runs it
(``runner.run``); and builds the report from the DuckDB state file in ``directory``.

The non-image is caught by the run's preflight check of its input URLs: its two edits are
left BAD_INPUT (never sent, so not charged, where the gateway would have charged them as
FAILED) and their two upscales BLOCKED, so the report has failures to explain. The emulator's ledger
is written next to the state file (``ledger.json``) and compared with the report's charged
total: the demo is also a check that the report is exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .emulator import Dist, EmulatorConfig, Ledger, start_emulator
from .estimate import Estimate
from .report import Report
from .report.gallery import DEFAULT_LIMIT
from .runner import RunSummary

MANIFEST_NAME = "demo.yaml"

MANIFEST = """\
# Written by `pixbatch demo`: two product shots and a file that is not an image.
version: 1
name: demo
budget_usd: "1.00"
output_dir: out
inputs:
  - id: mug
    url: {base}/mug.png
  - id: lamp
    url: {base}/lamp.jpg
  - id: notes                       # not an image: its edits are never sent (BAD_INPUT), its upscales BLOCKED
    url: {base}/notes.png
steps:
  - id: recolor                     # 3 inputs x 2 colors = 6 edits
    op: edit
    prompt: "Make the background of image 1 {{color}}, keep the product unchanged."
    matrix:
      color: [teal, amber]
  - id: hires                       # every recolored image, upscaled x2 = 6 upscales
    op: upscale
    for_each: recolor
    upscale_mode: factor
    factor: 2
"""


@dataclass(frozen=True)
class DemoResult:
    directory: Path
    manifest_path: Path
    state_path: Path
    estimate: Estimate
    summary: RunSummary
    report: Report
    ledger: Ledger


def demo_emulator_config() -> EmulatorConfig:
    """Short but visible queue and processing times; a $10 wallet."""
    return EmulatorConfig(queue_time=Dist(0.1, 0.4), processing_time=Dist(0.2, 0.6), seed=7)


def draw_images(directory: Path) -> None:
    """Two real images (a PNG and a JPEG, different sizes) and a text file named like a PNG."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    for name, size, fmt, (a, b) in (("mug.png", (640, 480), "PNG", ((30, 90, 160), (240, 200, 120))),
                                    ("lamp.jpg", (480, 720), "JPEG", ((120, 40, 60), (250, 240, 220)))):
        img = Image.new("RGB", size)
        px = img.load()
        w, h = size
        for y in range(h):  # a vertical gradient background
            t = y / (h - 1)
            row = tuple(int(a[i] + (b[i] - a[i]) * t) for i in range(3))
            for x in range(w):
                px[x, y] = row
        d = ImageDraw.Draw(img)
        d.ellipse((w * 0.3, h * 0.3, w * 0.7, h * 0.75), fill=(245, 245, 240), outline=(20, 20, 20), width=4)
        d.rectangle((w * 0.45, h * 0.15, w * 0.55, h * 0.32), fill=(60, 60, 60))
        img.save(directory / name, fmt, quality=90)
    (directory / "notes.png").write_text("shopping list: milk, eggs, a new lamp\n", "utf-8")


def relative_report(report: Report, root: Path) -> Report:
    """``report`` with its paths under ``root`` made relative to it (for a directory that is then deleted)."""
    from dataclasses import replace

    def rel(p: str | None) -> str | None:
        if p is None:
            return None
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return p

    run = replace(report.run, manifest_path=rel(report.run.manifest_path)) if report.run else None
    return replace(report, state_path=rel(report.state_path) or report.state_path, run=run,
                   outputs=replace(report.outputs, output_dir=rel(report.outputs.output_dir)))


def run_demo(directory: str | Path, *, console: Any = None, emulator_config: EmulatorConfig | None = None,
             where: str | None = None) -> DemoResult:
    """Run the demo in ``directory`` (created; must not hold an earlier demo) and return what it did.

    ``where`` says where that is in the first line printed (default: the directory's path).
    """
    from rich.console import Console
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from .estimate import estimate_manifest
    from .estimate_render import render_estimate
    from .manifest import load_manifest
    from .money import format_usd
    from .pricing import PriceTable
    from .progress import render_summary
    from .report import build_report
    from .runner import RunOptions, run
    from .serve import serve_in_thread

    console = console or Console(highlight=False)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    draw_images(images)
    table = PriceTable.load()
    served = serve_in_thread(Starlette(routes=[Mount("/", app=StaticFiles(directory=images))]))
    try:
        with start_emulator(emulator_config or demo_emulator_config()) as emu:
            console.print(f"[bold]pixbatch demo[/] in {where or root}\n"
                          f"  gateway emulator  {emu.url} (wallet {format_usd(emu.ledger().balance_micros)}, "
                          f"its own key: PIXAZO_API_KEY is not needed)\n"
                          f"  input images      {served.url}/ (2 images, 1 file that is not an image)")
            manifest_path = root / MANIFEST_NAME
            manifest_path.write_text(MANIFEST.format(base=served.url), "utf-8")
            manifest = load_manifest(manifest_path)
            console.print(f"\n[bold]1. estimate[/] {manifest_path.name}")
            est = estimate_manifest(manifest, table, timeout=5.0)
            render_estimate(est, console, budget_micros=manifest.budget_micros)
            console.print("\n[bold]2. run[/]")
            summary = run(manifest, options=RunOptions(base_url=emu.url, api_key=emu.api_key, poll_initial=0.2,
                                                       poll_max_interval=0.5, concurrency=8))
            render_summary(summary, console)
            ledger_data = emu.ledger_json()
            ledger = Ledger.from_dict(ledger_data)
            (root / "ledger.json").write_text(json.dumps(ledger_data, indent=2), "utf-8")
    finally:
        served.stop()
    report = build_report(manifest.state_path, estimate=est, output_dir=manifest.output_dir, table=table,
                          gallery=DEFAULT_LIMIT)
    return DemoResult(root, manifest_path, manifest.state_path, est, summary, report, ledger)


def demo(directory: str | Path | None, *, keep: bool = False, console: Any = None, color: bool = False) -> bool:
    """``pixbatch demo``: run the demo, print the report and check it against the emulator's ledger.

    ``directory`` None: a temporary directory, deleted at the end unless ``keep``; then no path in
    it is printed (the report's paths are shown relative to it). True when the report's charged
    total equals the ledger's.
    """
    import shutil
    import tempfile

    from rich.console import Console

    from .money import format_usd
    from .render import render

    console = console or Console(highlight=False)
    root = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="pixbatch-demo-"))
    kept = directory is not None or keep
    try:
        result = run_demo(root, console=console,
                          where=None if kept else "a temporary directory (deleted at the end; --keep keeps it)")
        console.print("\n[bold]3. report[/]")
        shown = result.report if kept else relative_report(result.report, root)
        console.file.write(render(shown, "table", color=color))
        (root / "report.html").write_text(render(result.report, "html", base_dir=root), "utf-8")
        charged, ledger = result.report.spend.totals.charged_micros, result.ledger.charged_micros
        if charged != ledger:
            console.print(f"[bold red]The report says {format_usd(charged)} was charged but the emulator's "
                          f"ledger says {format_usd(ledger)}.[/]")
            return False
        console.print(f"\nThe report's charged total, {format_usd(charged)}, equals the emulator's ledger "
                      f"({len(result.ledger.entries)} settlements) to the micro-dollar.")
    finally:
        if not kept:
            shutil.rmtree(root, ignore_errors=True)
    if kept:
        console.print(f"Kept {root}: {result.manifest_path.name}, {result.state_path.name}, out/, report.html "
                      f"(open it in a browser: a gallery of the outputs), ledger.json. Try: pixbatch report "
                      f"{result.manifest_path} --format html -o report.html")
    return True
