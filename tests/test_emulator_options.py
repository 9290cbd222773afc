"""The new settings parse from Python, JSON and the command line, refuse nonsense, and keep
their documented defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from pixbatch.cli import cli
from pixbatch.emulator import FAULTS, EmulatorConfig, start_emulator

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_documented_gateway():
    cfg = EmulatorConfig()
    assert (cfg.throttle_rate, cfg.rate_window, cfg.quota, cfg.quota_reset, cfg.html_errors) == (0.0, None, None,
                                                                                                 600.0, False)
    assert (cfg.edit_sizes, cfg.megapixel, cfg.factor_rounding, cfg.faults) == ((), 1_000_000, "round", ())


@pytest.mark.parametrize("text,pixels", [("2^20", 1 << 20), ("2**20", 1 << 20), ("1e6", 10**6), ("1048576", 1 << 20),
                                         (1_000_000, 10**6)])
def test_megapixel_parses(text, pixels):
    assert EmulatorConfig(megapixel=text).megapixel == pixels


@pytest.mark.parametrize("settings,message", [
    ({"megapixel": "two"}, "megapixel must be"), ({"megapixel": 0}, "megapixel must be"),
    ({"rate_window": "100"}, "N/SECONDS"), ({"rate_window": "0/10"}, "N >= 1"), ({"rate_window": "5/0"}, "N >= 1"),
    ({"rate_window": [1, 2, 3]}, "N/SECONDS"),
    ({"quota": -1}, "quota must be"), ({"quota": 1.5}, "quota must be"), ({"quota_reset": 0}, "quota_reset"),
    ({"throttle_rate": 1.5}, "throttle_rate must be a fraction"), ({"html_errors": "yes"}, "html_errors"),
    ({"edit_sizes": "16:9"}, "RATIO=WxH"), ({"edit_sizes": "5:4=100x80"}, "not an aspect ratio"),
    ({"edit_sizes": "match_input_image=100x80"}, "not an aspect ratio"), ({"edit_sizes": "1:1=100"}, "WxH"),
    ({"edit_sizes": {"1:1": [0, 5]}}, "positive"), ({"factor_rounding": "ceil"}, "factor_rounding"),
    ({"faults": ["media_slow", "bogus"]}, "unknown fault"), ({"media_drip_rate": 0}, "media_drip_rate"),
    ({"gzip_bomb_bytes": 0}, "gzip_bomb_bytes"),
])
def test_nonsense_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(**settings)


def test_json_round_trip_and_runtime_changes():
    cfg = EmulatorConfig(rate_window="100/10", edit_sizes="16:9=1344x768,4:3=1152x864", megapixel="2^20",
                         factor_rounding="floor", faults=("media_404",), quota=5, throttle_rate=0.1)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["edit_sizes"] == {"16:9": [1344, 768], "4:3": [1152, 864]} and data["rate_window"] == [100, 10.0]
    assert EmulatorConfig.from_dict(data) == cfg
    assert cfg.runtime_replace({"quota": 1, "rate_window": "5/1", "faults": ["media_html"]}).rate_window == (5, 1.0)
    for fixed in ("megapixel", "edit_sizes", "factor_rounding"):
        with pytest.raises(ValueError, match=f"cannot change {fixed} at runtime"):
            cfg.runtime_replace({fixed: cfg.to_dict()[fixed]})


def test_control_api_changes_front_door_settings_at_runtime(emulator):
    cfg = emulator.configure(throttle_rate=0.5, rate_window="10/1", quota=3, html_errors=True,
                             faults=["status_garbage"])
    assert (cfg["throttle_rate"], cfg["rate_window"], cfg["quota"], cfg["html_errors"], cfg["faults"]) == \
        (0.5, [10, 1.0], 3, True, ["status_garbage"])
    with pytest.raises(ValueError, match="unknown fault"):
        emulator.configure(faults=["nope"])
    with pytest.raises(ValueError, match="cannot change megapixel"):
        emulator.configure(megapixel=1 << 20)


def test_docs_list_every_setting_and_fault():
    doc = (ROOT / "docs" / "emulator.md").read_text()
    for name in EmulatorConfig().to_dict():
        assert f"`{name}`" in doc, f"docs/emulator.md does not describe {name}"
    for name in FAULTS:
        assert f"`{name}`" in doc, f"docs/emulator.md does not describe the fault {name}"
    help_text = CliRunner().invoke(cli, ["emulator", "--help"]).output
    for flag in ("--throttle-rate", "--rate-window", "--quota", "--quota-reset", "--html-errors", "--edit-sizes",
                 "--megapixel", "--factor-rounding", "--fault"):
        assert flag in help_text and f"`{flag}" in doc


def test_command_line_flags_reach_the_running_config():
    cmd = [sys.executable, "-m", "pixbatch", "emulator", "--port", "0", "--throttle-rate", "0.2",
           "--rate-window", "100/10", "--quota", "5", "--quota-reset", "60", "--html-errors",
           "--edit-sizes", "16:9=1344x768,4:3=1152x864", "--megapixel", "2^20", "--factor-rounding", "floor",
           "--fault", "media_404", "--fault", "status_garbage",
           "--config-json", json.dumps({"faults": ["media_html"], "quota": 1, "seed": 7})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        assert first and first[0].startswith("http"), proc.stderr.read() if proc.poll() is not None else "no URL"
        cfg = httpx.get(first[0].strip() + "/_emulator/config").json()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert cfg["throttle_rate"] == 0.2 and cfg["rate_window"] == [100, 10.0] and cfg["quota"] == 5
    assert cfg["quota_reset"] == 60 and cfg["html_errors"] is True and cfg["factor_rounding"] == "floor"
    assert cfg["edit_sizes"] == {"16:9": [1344, 768], "4:3": [1152, 864]} and cfg["megapixel"] == 1 << 20
    assert cfg["faults"] == ["media_404", "status_garbage"] and cfg["seed"] == 7  # flags override the JSON


def test_config_json_faults_survive_when_no_fault_flag_is_given():
    with start_emulator(EmulatorConfig(faults=("media_html",), quota=2), in_process=False) as emu:
        cfg = emu.http.get(emu.url + "/_emulator/config").json()
        assert cfg["faults"] == ["media_html"] and cfg["quota"] == 2


@pytest.mark.parametrize("args,message", [(["--megapixel", "two"], "megapixel"),
                                          (["--rate-window", "fast"], "N/SECONDS"),
                                          (["--fault", "bogus"], "unknown fault")])
def test_bad_flags_are_usage_errors(args, message):
    result = CliRunner().invoke(cli, ["emulator", "--port", "0", *args])
    assert result.exit_code == 2 and message in result.output
