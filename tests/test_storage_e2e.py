"""Local files in, a bucket out: `run` against the emulator and a real S3-compatible server (SeaweedFS).

The emulator fetches the inputs from presigned URLs of the bucket, as the real gateway
would; outputs are streamed from its CDN into the bucket. Requests are counted by the S3
server itself (its Prometheus counters).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from conftest import make_image
from pixbatch import retry_policy
from pixbatch.emulator import fast_test_config, start_emulator
from pixbatch.manifest import load_manifest
from pixbatch.report import build_report
from pixbatch.runner import RunOptions, run
from s3server import diff

CHAIN = """\
  - id: recolor
    op: edit
    prompt: "the background is {color}"
    matrix: {color: [teal]}
  - id: hires
    op: upscale
    for_each: recolor
    target: 1
"""


@pytest.fixture(autouse=True)
def _instant_backoff():
    with retry_policy.instant():
        yield


def photos(root: Path, n: int = 6) -> Path:
    """A folder of real PNG, JPEG and WebP files of several sizes (one in a subfolder)."""
    kinds = ["png", "jpg", "webp"]
    for i in range(n):
        sub = "more/" if i == n - 1 else ""
        make_image(root / f"{sub}p{i}.{kinds[i % 3]}", (320 + 16 * i, 240 + 8 * i), color=(10 * i, 90, 200))
    return root


def manifest(tmp_path: Path, s3, *, out: str | None = None, expires: str = "1h", steps: str = CHAIN,
             inputs: str = "  - {from: photos/, recursive: true}\n") -> Path:
    out = out or f"s3://{s3.bucket}/out/"
    p = tmp_path / "m.yaml"
    p.write_text(f"version: 1\noutput_dir: {out}\nuploads: {{to: s3://{s3.bucket}/in/, expires: {expires}}}\n"
                 f"inputs:\n{inputs}steps:\n{steps}", "utf-8")
    return p


def opts(emu, **kw) -> RunOptions:
    base = dict(base_url=emu.url, api_key=emu.api_key, concurrency=8, poll_initial=0.1, poll_max_interval=0.5,
                status_interval=0.2)
    base.update(kw)
    return RunOptions(**base)


def objects(s3, prefix: str) -> dict[str, bytes]:
    r = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return {o["Key"]: s3.client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read() for o in r.get("Contents", [])}


def test_a_folder_runs_through_the_bucket_and_a_rerun_touches_nothing(tmp_path, s3):
    photos(tmp_path / "photos")
    mp = manifest(tmp_path, s3)
    m = load_manifest(mp)
    with start_emulator(fast_test_config()) as emu:
        summary = run(m, options=opts(emu))
        ledger = emu.ledger()
        assert summary.outcome == "completed", summary.messages
        uploads = objects(s3, "in/")
        assert len(uploads) == 6
        for key, data in uploads.items():  # content addressed: the name is the hash of the bytes
            assert key.split("/")[-1].split(".")[0] == hashlib.sha256(data).hexdigest()
        outs = objects(s3, "out/")
        assert sorted(outs) == sorted([f"out/recolor/p{i}-teal.jpg" for i in range(5)] + ["out/recolor/more_p5-teal.jpg"]
                                      + [f"out/hires/p{i}-teal.jpg" for i in range(5)] + ["out/hires/more_p5-teal.jpg"])
        db = duckdb.connect(str(m.state_path), read_only=True)
        rows = db.execute("SELECT path, sha256, bytes, etag FROM outputs ORDER BY path").fetchall()
        ups = db.execute("SELECT object, how FROM uploads").fetchall()
        body = db.execute("SELECT body FROM items WHERE step = 'recolor' LIMIT 1").fetchone()[0]
        db.close()
        assert "pixbatch://file/" in body and "X-Amz" not in body
        assert len(ups) == 6 and {h for _, h in ups} == {"put"}
        for path, sha, n, etag in rows:
            assert path.startswith(f"s3://{s3.bucket}/out/")
            data = outs[path.split("/", 3)[3]]
            assert hashlib.sha256(data).hexdigest() == sha and len(data) == n
        report = build_report(m.state_path)
        assert report.spend.totals.charged_micros == ledger.charged_micros == sum(e.amount_micros for e in ledger.entries)
        assert {f.path for f in report.outputs.files} == {p for p, *_ in rows}  # listed by URI

        # a re-run of the finished batch: no upload, no copy, only the listing that tells nothing is missing
        before = s3.server.requests(s3.bucket)
        again = run(load_manifest(mp), options=opts(emu))
        assert again.outcome == "completed" and again.submits == 0
        assert set(diff(s3.server.requests(s3.bucket), before)) <= {"LIST 200"}
        assert len(emu.ledger().entries) == len(ledger.entries)


def state_text(state_path: Path) -> str:
    """Every text the state file holds in its tables (for what must never be there)."""
    db = duckdb.connect(str(state_path), read_only=True)
    try:
        parts = []
        for (t,) in db.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall():
            parts += [str(r) for r in db.execute(f"SELECT * FROM {t}").fetchall()]
        return "\n".join(parts)
    finally:
        db.close()


def test_a_missing_bucket_or_wrong_credentials_stop_before_anything_is_sent(tmp_path, s3, monkeypatch):
    from click.testing import CliRunner

    from pixbatch.cli import cli

    photos(tmp_path / "photos", 2)
    with start_emulator(fast_test_config()) as emu:
        monkeypatch.setenv("PIXAZO_API_KEY", emu.api_key)
        mp = manifest(tmp_path, s3, out=f"s3://{s3.bucket}/out/")
        mp.write_text(mp.read_text().replace(f"s3://{s3.bucket}/in/", "s3://no-such-bucket-here/in/"))
        r = CliRunner().invoke(cli, ["run", str(mp), "--base-url", emu.url, "--quiet"])
        assert r.exit_code == 1
        assert "the bucket 'no-such-bucket-here' does not exist" in r.output
        mp = manifest(tmp_path, s3, out="s3://no-such-output-bucket/x/")
        r = CliRunner().invoke(cli, ["run", str(mp), "--base-url", emu.url, "--quiet"])
        assert r.exit_code == 1 and "the bucket 'no-such-output-bucket' does not exist" in r.output
        mp = manifest(tmp_path, s3)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
        r = CliRunner().invoke(cli, ["run", str(mp), "--base-url", emu.url, "--quiet"])
        assert r.exit_code == 1 and "refused the credentials" in r.output
        assert "wrong-secret-value" not in r.output
        assert not emu.ledger().entries  # nothing was sent, nothing paid
    text = state_text(tmp_path / "m.pixbatch.duckdb")
    assert "wrong-secret-value" not in text and "X-Amz-Signature=" not in text


def test_presigned_urls_that_expired_are_signed_again_on_resume(tmp_path, s3):
    photos(tmp_path / "photos", 3)
    steps = "  - {id: recolor, op: edit, prompt: \"teal\"}\n"
    mp = manifest(tmp_path, s3, expires="2s", steps=steps)
    with start_emulator(fast_test_config(balance_micros=10_000)) as emu:  # the wallet pays for one edit
        first = run(load_manifest(mp), options=opts(emu, concurrency=1))
        assert first.outcome == "balance"
        time.sleep(2.5)  # every URL signed by the first run has expired
        emu.topup(1_000_000)
        second = run(load_manifest(mp), options=opts(emu))
        assert second.outcome == "completed", second.messages
        assert [e.status for e in emu.ledger().entries] == ["COMPLETED"] * 3
    assert "X-Amz-Signature=" not in state_text(tmp_path / "m.pixbatch.duckdb")


def test_an_object_in_the_way_is_never_overwritten(tmp_path, s3):
    photos(tmp_path / "photos", 2)
    steps = "  - {id: recolor, op: edit, prompt: \"teal\"}\n"
    mp = manifest(tmp_path, s3, steps=steps)
    s3.client.put_object(Bucket=s3.bucket, Key="out/recolor/p0.jpg", Body=b"someone else's")
    with start_emulator(fast_test_config()) as emu:
        run(load_manifest(mp), options=opts(emu))
    assert s3.client.get_object(Bucket=s3.bucket, Key="out/recolor/p0.jpg")["Body"].read() == b"someone else's"
    db = duckdb.connect(str(tmp_path / "m.pixbatch.duckdb"), read_only=True)
    got = dict(db.execute("SELECT input_id, error FROM items WHERE state = 'COMPLETED'").fetchall())
    db.close()
    assert "s3://" in got["p0"] and "already holds a different object, and pixbatch never overwrites one" in got["p0"]
    assert got["more_p1"] is None


def _count(s3, bucket: str, prefix: str) -> int:
    return s3.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out")


@pytest.mark.slow
def test_sigkill_during_uploads_and_during_copies_then_resume_writes_each_object_once(tmp_path, s3):
    n = 16
    from PIL import Image

    (tmp_path / "photos").mkdir()
    for i in range(n):  # noisy images: uploads take a moment each
        Image.frombytes("RGB", (384, 288), os.urandom(384 * 288 * 3)).save(
            tmp_path / "photos" / f"n{i:02d}.{['png', 'jpg', 'webp'][i % 3]}")
    out_bucket = s3.bucket + "-out"
    s3.client.create_bucket(Bucket=out_bucket)
    mp = manifest(tmp_path, s3, out=f"s3://{out_bucket}/o/")
    mp.write_text(mp.read_text().replace("expires: 1h}", "expires: 1h, concurrency: 1}"))
    before_in, before_out = s3.server.requests(s3.bucket), s3.server.requests(out_bucket)
    cfg = fast_test_config(queue_time=(0.05, 0.2), processing_time=(0.2, 0.6))
    with start_emulator(cfg) as emu:
        env = {**os.environ, "PIXAZO_API_KEY": emu.api_key}
        cmd = [sys.executable, "-m", "pixbatch", "run", str(mp), "--base-url", emu.url, "--quiet",
               "--first-poll", "0.1", "--concurrency", "8"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert _kill_when(proc, lambda: 2 <= _count(s3, s3.bucket, "in/") < n), "the uploads ended before the kill"
        partial = _count(s3, s3.bucket, "in/")
        assert partial < n
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert _kill_when(proc, lambda: 3 <= _count(s3, out_bucket, "o/") < 2 * n), "the copies ended before the kill"
        # (a kill may leave a submit in doubt: AMBIGUOUS; it is resent here, and may be paid twice)
        final = subprocess.run([*cmd, "--retry-ambiguous"], env=env, capture_output=True, timeout=120)
        assert final.returncode == 0, final.stderr.decode()[-3000:]
        time.sleep(0.3)
        ledger = emu.ledger()
        mid_in, mid_out = s3.server.requests(s3.bucket), s3.server.requests(out_bucket)
        again = subprocess.run(cmd, env=env, capture_output=True, timeout=120)  # a finished run, resumed
        assert again.returncode == 0
        end_in, end_out = s3.server.requests(s3.bucket), s3.server.requests(out_bucket)

    ups, outs = diff(mid_in, before_in), diff(mid_out, before_out)
    assert ups.get("PUT 200") == n  # every file uploaded exactly once, across the kill
    assert outs.get("PUT 200") == 2 * n  # every output written exactly once
    assert _count(s3, s3.bucket, "in/") == n and _count(s3, out_bucket, "o/") == 2 * n
    assert diff(end_in, mid_in) == {}  # the resume of a finished run: nothing on the input bucket
    assert set(diff(end_out, mid_out)) == {"LIST 200"}  # and one listing of the outputs
    db = duckdb.connect(str(tmp_path / "m.pixbatch.duckdb"), read_only=True)
    charged = db.execute("SELECT sum(charged_micros) FROM items").fetchone()[0]
    accepted = {r[0] for r in db.execute("SELECT request_id FROM attempts WHERE request_id IS NOT NULL").fetchall()}
    doubt = db.execute("SELECT count(*) FROM attempts WHERE outcome = 'abandoned'").fetchone()[0]
    states = dict(db.execute("SELECT state, count(*) FROM items GROUP BY 1").fetchall())
    recorded = db.execute("SELECT path, sha256 FROM outputs").fetchall()
    n_uploads = db.execute("SELECT count(*) FROM uploads").fetchone()[0]
    db.close()
    assert states == {"COMPLETED": 2 * n} and n_uploads == n
    assert charged == sum(e.amount_micros for e in ledger.entries if e.request_id in accepted)
    assert len(ledger.entries) <= 2 * n + doubt  # nothing paid twice but what was in doubt
    for path, sha in recorded:
        data = s3.client.get_object(Bucket=out_bucket, Key=path.split("/", 3)[3])["Body"].read()
        assert hashlib.sha256(data).hexdigest() == sha


def test_while_the_expansion_streams_in_every_local_input_is_uploaded_first(tmp_path, s3, monkeypatch):
    from pixbatch.runner import prepare

    monkeypatch.setattr(prepare, "FIRST_BATCH", 2)  # most items are read in while the run sends
    photos(tmp_path / "photos", 5)
    steps = "  - {id: recolor, op: edit, prompt: \"teal\"}\n"
    mp = manifest(tmp_path, s3, steps=steps)
    with start_emulator(fast_test_config()) as emu:
        summary = run(load_manifest(mp), options=opts(emu))
        assert summary.outcome == "completed", summary.messages
        assert [e.status for e in emu.ledger().entries] == ["COMPLETED"] * 5
    assert len(objects(s3, "in/")) == 5 and len(objects(s3, "out/")) == 5
