"""The library from a notebook (a running event loop), and what the package ships."""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import pixbatch
from pixbatch.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _manifest(tmp_path, url: str, *, factor: bool = False) -> pixbatch.Manifest:
    step = ({"id": "up", "op": "upscale", "upscale_mode": "factor", "factor": 2} if factor
            else {"id": "e", "op": "edit", "prompt": "make it blue"})
    return pixbatch.load_manifest({"version": 1, "inputs": [url], "steps": [step]}, base_dir=tmp_path)


def test_in_a_running_loop_the_sync_forms_say_what_to_await_and_the_async_ones_work(tmp_path, emulator,
                                                                                  image_server):
    m = _manifest(tmp_path, image_server.add("a.png", (300, 200)))
    opts = pixbatch.RunOptions(base_url=emulator.url, api_key=emulator.api_key, poll_initial=0.1)

    async def notebook_cell():
        with pytest.raises(RuntimeError, match=r"await pixbatch\.run_async"):
            pixbatch.run(m, options=opts)
        summary = await pixbatch.run_async(m, options=opts)
        with pytest.raises(RuntimeError, match=r"await pixbatch\.reconcile_async"):
            from pixbatch.reconcile import reconcile

            reconcile(m.state_path, lambda: None)
        settled = await pixbatch.reconcile_async(m.state_path, lambda: None)
        return summary, settled

    summary, settled = asyncio.run(notebook_cell())
    assert summary.outcome == "completed" and summary.charged_run_micros == 10_000
    assert settled.checked == 0  # nothing was left open (and no gateway was made)


def test_estimate_and_probes_work_inside_a_running_loop(tmp_path, image_server):
    url = image_server.add("b.png", (1200, 900))
    m = _manifest(tmp_path, url, factor=True)

    async def notebook_cell():
        est = pixbatch.estimate_manifest(m, pixbatch.PriceTable.load())  # probes on a thread of its own
        rep = await pixbatch.probe_sizes_report_async([url], cache_path=tmp_path / "cache.duckdb")
        return est, rep

    est, rep = asyncio.run(notebook_cell())
    assert est.exact and est.sizes.probed == 1
    assert rep.results[url].size == (1200, 900)


def test_the_public_api_is_exported_and_typed():
    for name in ("run", "run_async", "reconcile_async", "probe_sizes", "probe_sizes_report_async", "list_failures",
                 "list_runs", "load_manifest", "RunOptions"):
        assert name in pixbatch.__all__ and getattr(pixbatch, name) is not None, name
    assert pixbatch.__all__ == sorted(pixbatch.__all__)
    assert (ROOT / "pixbatch" / "py.typed").is_file()


def test_packaging_metadata_license_version_and_urls():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["pixbatch"]
    assert project["license"] == {"text": "MIT"} and "License :: OSI Approved :: MIT License" in project["classifiers"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["urls"] and "Typing :: Typed" in project["classifiers"]
    # one version: pyproject reads pixbatch.__version__; the installed metadata and --version agree
    assert "version" not in project and project["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pixbatch.__version__"}
    assert importlib.metadata.version("pixbatch") == pixbatch.__version__
    assert CliRunner().invoke(cli, ["--version"]).output.strip().endswith(pixbatch.__version__)


def test_the_quick_start_leaves_nothing_git_would_pick_up():
    patterns = [p.strip() for p in (ROOT / ".gitignore").read_text().splitlines() if p.strip()]
    for made in ("example.pixbatch.duckdb", "example.pixbatch.duckdb.status.json",
                 ".example.pixbatch.duckdb.status.json.123.tmp"):
        assert any(fnmatch.fnmatch(made, p) for p in patterns), made


def test_environment_and_shell_completion_are_documented_and_work():
    readme = (ROOT / "README.md").read_text()
    assert "PIXBATCH_BASE_URL" in readme and "_PIXBATCH_COMPLETE=bash_source pixbatch" in readme
    base_url = next(p for p in cli.commands["run"].params if p.name == "base_url")
    assert base_url.envvar == "PIXBATCH_BASE_URL"
    res = CliRunner().invoke(cli, [], prog_name="pixbatch", env={"_PIXBATCH_COMPLETE": "bash_source"})
    assert "_pixbatch_completion" in res.output


def test_user_facing_text_names_no_file_of_the_repository():
    source = pixbatch.PriceTable.load().source
    assert "shared/" not in source and ".txt" not in source
