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


async def upload_inputs(manifest: Any, store: Any, scope: str, emit: Callable[..., None], *,
                        outputs: Any = None, pending: int = 0) -> Any:
    """The upload phase (see the module docstring); with items pending, an output bucket is
    checked first too (a missing bucket would fail every output after paying for it)."""
    from .uploads import Uploader

    if pending and getattr(outputs, "copies", False):
        await outputs.check()
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
