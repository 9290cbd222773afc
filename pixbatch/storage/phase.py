"""The two places a run meets object storage: where outputs go, and the upload phase.

``open_outputs(manifest)``: the local ``OutputDir``, or ``S3Outputs`` for ``output_dir:
s3://...`` (the S3 client is created only when the first output is written).

``upload_inputs(manifest, store, scope, emit)``: before anything is sent, the local files
that the run's PENDING items name are made objects in the bucket (``uploads.Uploader``);
returns the uploader, whose ``url_for`` gives each item its URLs at send time, or None
when no pending item names a local file (then no request is made, and boto3 is not even
imported: a finished run resumes without touching the bucket).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..state.objects import files_to_send, record_upload_sql, recorded_uploads
from .config import StoreOptions
from .local import LocalFile


def open_outputs(manifest: Any) -> Any:
    from ..runner.outputs import OutputDir

    uri = getattr(manifest, "output_uri", None)
    if uri:
        from .s3out import S3Outputs

        return S3Outputs(uri, StoreOptions.of(manifest.uploads))
    return OutputDir(manifest.output_dir)


def local_files(manifest: Any, wanted: set[str]) -> dict[str, LocalFile]:
    """sha256 -> the local file, for the wanted hashes (reads the manifest's inputs; hashes are cached)."""
    found: dict[str, LocalFile] = {}
    if not manifest.has_local_inputs():
        return found
    for inp in manifest.iter_local_inputs():
        f = inp.file
        if f is not None and f.sha256 in wanted and f.sha256 not in found:
            found[f.sha256] = f
            if len(found) == len(wanted):
                break
    return found


async def upload_inputs(manifest: Any, store: Any, scope: str, emit: Callable[..., None], outputs: Any,
                        prepared: Any, *, on_refusal: Callable[[], Any] | None = None) -> Any:
    """The upload phase (see the module docstring). ``prepared`` is what ``runner.prepare`` found:
    with items pending, an output bucket is checked first too (a missing bucket would fail every
    output after paying for it); while the expansion is still being read into the state file
    (``prepared.ingest``: streaming ingest), every local input is made sure of, not only those
    of the items read so far. A ``StorageError`` awaits ``on_refusal()`` (the run records its
    end), then propagates."""
    try:
        return await _upload_inputs(manifest, store, scope, emit, outputs, prepared)
    except StorageError:
        if on_refusal is not None:
            await on_refusal()
        raise


async def _upload_inputs(manifest: Any, store: Any, scope: str, emit: Callable[..., None], outputs: Any,
                         prepared: Any) -> Any:
    from .uploads import Uploader

    streaming = getattr(prepared, "ingest", None) is not None
    if (streaming or prepared.position.pending.items) and getattr(outputs, "copies", False):
        await outputs.check()
    if streaming and manifest.has_local_inputs():
        needed = sorted({inp.file.sha256 for inp in await asyncio.to_thread(lambda: list(manifest.iter_local_inputs()))})
    else:
        needed = await store.call(lambda db: files_to_send(db, scope))
    if not needed:
        return None
    if manifest.uploads is None:
        raise StorageError("items name local files, and the manifest has no uploads: section; add "
                           "uploads: {to: s3://bucket/prefix/}")
    files = await asyncio.to_thread(local_files, manifest, set(needed))
    gone = [sha for sha in needed if sha not in files]
    if gone:
        raise StorageError(f"{len(gone)} local file(s) the items name are no longer among the inputs (changed or "
                           "removed since the items were made): run again to make the items anew")
    up = Uploader(manifest.uploads, emit=emit)
    uris = [up.uri(up.cfg.to.key(f"{f.sha256}.{f.ext}")) for f in files.values()]
    recorded = await store.call(lambda db: recorded_uploads(db, uris))
    stats = await up.sync(files.values(), recorded, record=lambda row: store.put_sql(*record_upload_sql(row)))
    await store.commit()
    emit("run", None, message=f"uploads: {stats.needed:,} local file(s) needed, {stats.present:,} already in "
         f"{manifest.uploads.to.uri}, {stats.uploaded:,} uploaded ({stats.uploaded_bytes:,} bytes) in {stats.seconds} s",
         uploads=up.counts())
    return up


def local_inputs_digest(manifest: Any) -> bytes:
    """What the expansion takes from local files, for the resume fingerprint: each local
    input's id, path and content hash (stat-cached: a file is hashed again only when it changed)."""
    import hashlib

    h = hashlib.sha256()
    for inp in manifest.iter_local_inputs():
        h.update(f"{inp.id}\0{inp.file.path}\0{inp.file.sha256}\n".encode())
    return h.digest()


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """What a run would upload (``estimate``): the local files the items name, and what the
    state file records as already in the bucket (nothing is asked of the bucket)."""

    to: str  # s3://bucket/prefix/
    files: int
    bytes: int
    recorded: int  # already uploaded, per the state file
    recorded_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "files": self.files, "bytes": self.bytes, "already_uploaded": self.recorded,
                "already_uploaded_bytes": self.recorded_bytes, "to_upload": self.files - self.recorded,
                "to_upload_bytes": self.bytes - self.recorded_bytes}

    def text(self) -> str:
        left, left_bytes = self.files - self.recorded, self.bytes - self.recorded_bytes
        line = f"Uploads: {self.files:,} local file(s), {self.bytes:,} bytes, to {self.to}"
        if self.recorded:
            line += f"; {self.recorded:,} already uploaded, {left:,} ({left_bytes:,} bytes) to upload"
        return line


def upload_plan(manifest: Any, state_path: str | None = None) -> UploadPlan | None:
    """The local files the manifest's items name (a walk of the expansion), or None when there are none."""
    if manifest.uploads is None or not manifest.has_local_inputs():
        return None
    from ..expand import expand
    from ..items import FILE_SCHEME

    shas: set[str] = set()
    for item in expand(manifest):
        for url in item.body.get("images") or [item.body.get("image")]:
            if isinstance(url, str) and url.startswith(FILE_SCHEME):
                shas.add(url[len(FILE_SCHEME):])
    files = local_files(manifest, shas)
    cfg = manifest.uploads
    uris = [cfg.to.uri_of(cfg.to.key(f"{f.sha256}.{f.ext}")) for f in files.values()]
    recorded = recorded_bytes = 0
    path = Path(state_path or manifest.state_path)
    if path.exists():
        import duckdb

        from ..state.objects import upload_totals

        try:
            db = duckdb.connect(str(path), read_only=True)
        except duckdb.Error:
            db = None  # held by a running run: the plan says what the files are, without the record
        if db is not None:
            try:
                recorded, recorded_bytes = upload_totals(db, uris)
            except duckdb.Error:
                pass  # a state file from before uploads existed
            finally:
                db.close()
    return UploadPlan(cfg.to.uri, len(files), sum(f.bytes for f in files.values()), recorded, recorded_bytes)
