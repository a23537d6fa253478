"""`lorastack gc` removes what killed uploads, fetches and merges left behind: temporary
files and work folders under DATA_DIR, the local store's partial blobs, and unfinished S3
multipart uploads, each once it is older than the grace period."""
from __future__ import annotations

import os
import time
from pathlib import Path

from tests.e2e.test_cli import run, server_env
from tests.support.moto_server import s3_client

TWO_DAYS = 2 * 24 * 3600


def _leave(path: Path, *, age_s: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half written")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def _age_folder(folder: Path, age_s: float) -> Path:
    then = time.time() - age_s
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (then, then))
    return folder


def test_gc_removes_stale_work_files_and_keeps_young_ones(settings, app):
    data = settings.data_dir
    stale = [
        _leave(data / "tmp" / "upload-k9x2", age_s=TWO_DAYS),
        _age_folder(_leave(data / "tmp" / "merge-m1-ab" / "adapter_model.safetensors")
                    .parent, TWO_DAYS),
        _age_folder(_leave(data / "tmp" / "publish-m2-cd" / "README.md").parent, TWO_DAYS),
        _age_folder(_leave(data / "tmp" / "analyze-ef" / "plan.json").parent, TWO_DAYS),
        _leave(data / "cache" / "sources" / "ab" / ".fetch-1234", age_s=TWO_DAYS),
    ]
    # A merge that is still writing: its folder is old, one file in it is new.
    running = data / "tmp" / "merge-m3-gh"
    _age_folder(_leave(running / "sources" / "a.safetensors").parent.parent, TWO_DAYS)
    _leave(running / "out" / "adapter_model.safetensors")
    kept = [_leave(data / "tmp" / "upload-live"), running,
            _leave(data / "cache" / "sources" / "ab" / ("ab" * 32), age_s=TWO_DAYS),
            _leave(data / "tmp" / "notes.txt", age_s=TWO_DAYS)]
    env = server_env(settings)

    dry = run(["gc", "--dry-run"], env)
    assert all(f"would remove leftover {path}" in dry.output for path in stale), dry.output
    assert all(path.exists() for path in stale)

    done = run(["gc"], env)
    assert f"{len(stale)} leftover(s) of unfinished writes removed" in done.output, done.output
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_gc_removes_the_stores_unfinished_writes_after_the_grace_period(settings, app):
    env = server_env(settings)
    store = app.extensions["lorastack"].store
    if settings.storage_url.startswith("s3://"):
        # moto reports every multipart upload as begun in 2010: past any grace period.
        bucket, prefix = settings.storage_url[len("s3://"):].split("/", 1)
        client = s3_client(settings.s3_endpoint_url)
        key = f"{prefix}/sha256/00/00/{'0' * 64}"
        stale = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=stale, PartNumber=1,
                           Body=b"part one")
        young = None

        def unfinished() -> set[str]:
            return {item["UploadId"] for item in
                    client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())}
    else:
        folder = store.root / "sha256" / "00" / "00"
        stale = _leave(folder / ".tmp-crashed", age_s=TWO_DAYS).name
        young = _leave(folder / ".tmp-writing").name

        def unfinished() -> set[str]:
            return {path.name for path in folder.glob(".tmp-*")}

    dry = run(["gc", "--dry-run"], env)
    assert stale in dry.output and stale in unfinished()
    done = run(["gc"], env)
    assert "1 leftover(s) of unfinished writes removed" in done.output, done.output
    assert unfinished() == ({young} if young else set())
