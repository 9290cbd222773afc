"""The API key never appears in logs, state files, status files, reports, exports or errors."""

from __future__ import annotations


import pytest
from click.testing import CliRunner

from pixbatch import retry_policy
from pixbatch.cli import cli
from pixbatch.emulator import fast_test_config, start_emulator

SECRET = "pbk-live-7f3a9c1e5b2d4f60"


@pytest.fixture
def emu():
    with retry_policy.instant(), start_emulator(fast_test_config(api_keys=(SECRET,), fail_rate=0.3, seed=3)) as e:
        yield e


def test_the_key_is_nowhere_after_a_full_cycle(tmp_path, emu, image_server):
    urls = [image_server.add(f"s{i}.png", (300, 200)) for i in range(3)]
    urls.append(image_server.add_bytes("not-an-image.png", b"garbage"))
    inputs = "\n".join(f"  - {u}" for u in urls)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"version: 1\ninputs:\n{inputs}\nsteps:\n  - id: e\n    op: edit\n    prompt: p\n"
                        "  - id: u\n    op: upscale\n    for_each: e\n    target: 2\n")
    env = {"PIXAZO_API_KEY": SECRET}
    runner = CliRunner()
    outputs, codes = [], []
    for args in (["run", str(manifest), "--base-url", emu.url, "--json", "--first-poll", "0.1"],
                 ["status", str(manifest), "--json"],
                 ["reconcile", str(manifest), "--base-url", emu.url],
                 ["report", str(manifest), "--format", "json"],
                 ["report", str(manifest), "--format", "html", "-o", str(tmp_path / "r.html")],
                 ["export", str(manifest), "--format", "csv", "-o", str(tmp_path / "export")],
                 # a refused key: the error must not echo the key it was given
                 ["run", str(manifest), "--base-url", emu.url, "--force"]):
        res = runner.invoke(cli, args, env=env if args[-1] != "--force" else {"PIXAZO_API_KEY": SECRET + "x"})
        outputs.append(res.output)
        codes.append(res.exit_code)
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert codes[-1] == 4 and "PIXAZO_API_KEY" in outputs[-1]  # the wrong key was refused, and said so
    texts = outputs + [p.read_text(errors="replace") for p in tmp_path.rglob("*")
                       if p.is_file() and p.suffix in (".csv", ".json", ".html", ".yaml")]
    assert len(texts) > 10
    for t in texts:
        assert SECRET not in t
    # the export holds every table of the state file, events (HTTP exchanges) included
    assert (tmp_path / "export" / "events.csv").stat().st_size > 1000


def test_a_key_passed_in_code_is_redacted_everywhere_an_error_goes(tmp_path, monkeypatch):
    """No PIXAZO_API_KEY: the key comes from RunOptions; a gateway that echoes it in an odd answer
    must not put it into items.error, events, the summary or an export."""
    import duckdb
    import httpx

    from pixbatch.gateway import Gateway
    from pixbatch.manifest import load_manifest
    from pixbatch.runner import RunOptions, run

    key = "code-only-key-7f3a9c"
    monkeypatch.delenv("PIXAZO_API_KEY", raising=False)

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(418, json={"message": f"key {request.headers['Ocp-Apim-Subscription-Key']} is a teapot"})

    (tmp_path / "m.yaml").write_text("version: 1\ninputs:\n  - https://img.test/a.png\nsteps:\n"
                                     "  - id: e\n    op: edit\n    prompt: p\n", "utf-8")
    m = load_manifest(tmp_path / "m.yaml")
    gw = Gateway("http://gateway.test", key, transport=httpx.MockTransport(echo))
    s = run(m, options=RunOptions(api_key=key, poll_initial=0.01, preflight=False), gateway=gw)  # a fake input URL
    assert key not in repr(s)
    db = duckdb.connect(str(m.state_path), read_only=True)
    try:
        dump = repr([db.execute(f"SELECT * FROM {t}").fetchall() for t in ("items", "events", "submit_log", "runs")])
    finally:
        db.close()
    assert "teapot" in dump and key not in dump
