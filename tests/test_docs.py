"""The docs are bound to the code: every command is documented, helps itself, and the
README's commands are the ones CI and users run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixbatch.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def fenced_after(marker: str) -> str:
    """The first ```sh block after an HTML comment marker in the README."""
    m = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)\n```", README, re.S)
    assert m, f"README has no {marker} block"
    return m.group(1).strip()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_is_documented_and_has_help(name):
    assert re.search(rf"pixbatch {name}\b", README), f"`pixbatch {name}` is not in the README"
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert len(cli.commands[name].help or "") > 20, f"{name} has no real help text"


def test_ci_runs_exactly_the_readme_test_command():
    cmd = fenced_after("test-command")
    assert "pytest" in cmd and "python3 -m venv" in cmd
    out = subprocess.run(["bash", "-c", 'sed -n \'/<!-- test-command -->/,/^```$/p\' README.md '
                          "| sed -n '/^```sh$/,/^```$/p' | sed '1d;$d'"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == cmd  # the extraction .ci/run performs
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_the_demo_command_runs_the_demo():
    assert fenced_after("demo-command").endswith("pixbatch demo")


def test_readme_manifest_example_is_valid(tmp_path):
    m = re.search(r"## The manifest.*?```yaml\n(.*?)\n```", README, re.S)
    (tmp_path / "catalog.csv").write_text("id,url,width,height\nc1,https://cdn.example.com/c1.png,800,600\n")
    (tmp_path / "m.yaml").write_text(m.group(1))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output
    # hero + 1 CSV row, 4 edits each, one upscale per edit
    assert "16 work items" in result.output


def test_the_layout_in_the_readme_names_every_module():
    for path in sorted((ROOT / "pixbatch").glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            assert f"  {path.name} " in README, f"{path.name} is missing from the README's layout"


def test_the_layout_in_the_readme_names_every_module_of_the_manifest_package():
    for path in sorted((ROOT / "pixbatch" / "manifest").glob("*.py")):
        if path.name != "__init__.py":
            assert f"  {path.name} " in README, f"manifest/{path.name} is missing from the README's layout"
