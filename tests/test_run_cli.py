"""`pixbatch run` refuses a manifest whose output names collide before anything is sent."""

from __future__ import annotations

from click.testing import CliRunner

from pixbatch.cli import cli


def test_run_checks_output_names_before_sending(tmp_path, emulator, image_server):
    a, b = image_server.add("a.png", (64, 64)), image_server.add("b.png", (64, 64))
    m = tmp_path / "m.yaml"
    m.write_text(f"version: 1\ninputs:\n  - {a}\n  - {b}\nsteps:\n"
                 "  - id: e\n    op: edit\n    prompt: p\n    naming: 'same.{ext}'\n")
    res = CliRunner().invoke(cli, ["run", str(m), "--base-url", emulator.url],
                             env={"PIXAZO_API_KEY": emulator.api_key})
    assert res.exit_code == 2, res.output
    assert "same.jpg" in res.output
    assert emulator.stats()["submits"] == 0
