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
from pixbatch.errors import StorageError
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
