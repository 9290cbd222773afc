"""``pixbatch init``: click wiring for the starter manifest (the work is ``pixbatch.scaffold``)."""

from __future__ import annotations

import click

from .errors import ExitCode


@click.command("init")
@click.argument("source", type=click.Path(exists=True))
@click.option("-o", "--output", "output", default="manifest.yaml", show_default=True, type=click.Path(),
              help="Where to write the manifest.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.pass_context
def init_command(ctx: click.Context, source: str, output: str, force: bool) -> None:
    """Write a commented starter manifest for SOURCE: a folder of images, or a CSV (or .txt) of inputs.

    It has the inputs, one example step per operation (upscale active, edit commented out),
    a budget sized from its estimate, and an uploads: section when the inputs are local
    files (name your bucket there). It validates as written.
    """
    from pathlib import Path

    from .scaffold import starter_manifest

    out = Path(output)
    if out.exists() and not force:
        click.echo(f"{output} exists; pass --force to overwrite it, or -o another file.", err=True)
        ctx.exit(ExitCode.USAGE)
    text = starter_manifest(source, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, "utf-8")
    click.echo(f"wrote {output}: edit it, then `pixbatch validate {output}` and `pixbatch estimate {output}`.")
