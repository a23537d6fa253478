"""Both blob stores, local and S3 (moto over HTTP), held to the same contract."""
from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from hub.errors import NotFound, StorageUnavailable
from hub.storage import BlobStore, S3Timeouts, blob_key, open_store
from hub.storage.local import LocalBlobStore
from hub.storage.s3 import S3BlobStore

from tests.support.hung_server import hung_endpoint
from tests.support.moto_server import free_port, s3_client


def _write(path: Path, data: bytes) -> tuple[Path, int, str]:
    path.write_bytes(data)
    return path, len(data), hashlib.sha256(data).hexdigest()


def _put(store: BlobStore, tmp_path: Path, data: bytes, name: str = "src.bin") -> str:
    path, size, digest = _write(tmp_path / name, data)
    key = blob_key(digest)
    store.put_file(key, path, size=size, sha256=digest)
    return key


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each store in turn: a fresh blob folder, or a fresh bucket on the moto server."""
    if request.param == "local":
        return open_store(f"file://{tmp_path / 'blobs'}")
    url = request.getfixturevalue("s3_bucket_url")
    return open_store(url, s3_endpoint_url=request.getfixturevalue("moto_endpoint"))


# -- the contract, on both stores ------------------------------------------------------

def test_put_file_round_trips_byte_for_byte(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    key = _put(store, tmp_path, data)
    assert store.exists(key)
    assert store.size(key) == len(data)
    with store.open_read(key) as handle:
        first = handle.read(1000)
        rest = handle.read()
    assert first + rest == data


def test_missing_blob_is_absent_and_reading_it_is_not_found(store: BlobStore) -> None:
    key = blob_key("0" * 64)
    assert not store.exists(key)
    assert store.size(key) is None
    with pytest.raises(NotFound) as info:
        store.open_read(key)
    assert info.value.code == "not_found"


def test_second_put_of_an_existing_blob_does_not_rewrite_it(store: BlobStore,
                                                             tmp_path: Path) -> None:
    original = b"A" * 4096
    key = _put(store, tmp_path, original)
    # Same key and size, other bytes: were the blob rewritten, reading would show them.
    other, size, _ = _write(tmp_path / "other.bin", b"B" * 4096)
    store.put_file(key, other, size=size, sha256=key.rsplit("/", 1)[1])
    with store.open_read(key) as handle:
        assert handle.read() == original


def test_iter_blobs_lists_every_stored_key_with_a_utc_time(store: BlobStore,
                                                           tmp_path: Path) -> None:
    keys = {_put(store, tmp_path, os.urandom(100), name=f"f{i}") for i in range(3)}
    listed = dict(store.iter_blobs())
    assert set(listed) == keys
    now = datetime.now(timezone.utc)
    for modified in listed.values():
        assert modified.tzinfo is not None and modified.utcoffset() == timedelta(0)
        assert abs(now - modified) < timedelta(minutes=5)


def test_delete_removes_the_blob_and_a_missing_blob_is_fine(store: BlobStore,
                                                            tmp_path: Path) -> None:
    key = _put(store, tmp_path, b"gone soon")
    store.delete(key)
    assert not store.exists(key)
    assert list(store.iter_blobs()) == []
    store.delete(key)


def test_check_passes_on_a_usable_store(store: BlobStore) -> None:
    store.check()


def test_put_file_refuses_a_source_whose_size_differs(store: BlobStore, tmp_path: Path) -> None:
    path, size, digest = _write(tmp_path / "src.bin", b"12345")
    with pytest.raises(ValueError):
        store.put_file(blob_key(digest), path, size=size + 1, sha256=digest)
    assert not store.exists(blob_key(digest))


@pytest.mark.parametrize("key", ["../escape", "/abs/key", "sha256/../../x", "a//b", ""])
def test_keys_that_could_leave_the_store_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.exists(key)


# -- keys and the scheme registry --------------------------------------------------------

def test_blob_key_fans_out_on_the_first_two_bytes_of_the_digest() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert blob_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


@pytest.mark.parametrize("bad", ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, None])
def test_blob_key_refuses_anything_but_64_lowercase_hex(bad) -> None:
    with pytest.raises(ValueError):
        blob_key(bad)


def test_open_store_picks_the_store_by_scheme(tmp_path: Path) -> None:
    local = open_store(f"file://{tmp_path}/blobs")
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "blobs"
    remote = open_store("s3://my-bucket/some/prefix/", s3_endpoint_url="http://minio:9000")
    assert isinstance(remote, S3BlobStore)
    assert (remote.bucket, remote.prefix, remote.endpoint_url) == (
        "my-bucket", "some/prefix", "http://minio:9000")


@pytest.mark.parametrize("url", ["gs://bucket/x", "/plain/path", "", "ftp://host/x"])
def test_unknown_scheme_is_refused_naming_the_known_ones(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    assert "file://" in str(info.value) and "s3://" in str(info.value)


@pytest.mark.parametrize("url", ["file://relative/dir", "file:relative", "s3:///prefix-only"])
def test_storage_url_without_a_location_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_importing_hub_storage_does_not_import_boto3() -> None:
    import subprocess
    import sys

    code = "import sys, hub.storage; sys.exit('boto3' in sys.modules or 'botocore' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- the local store ---------------------------------------------------------------------

def test_local_root_is_created_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "blobs"
    store = open_store(f"file://{root}")
    assert not root.exists()
    key = _put(store, tmp_path, b"hello")
    assert (root / key).read_bytes() == b"hello"
    assert store.local_path(key) == root / key


def test_local_write_failing_midway_leaves_nothing_under_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    path, size, digest = _write(tmp_path / "src.bin", os.urandom(10_000))
    visible_midway = []

    def half_copy_then_disk_full(src, dst, *args, **kwargs):
        with open(dst, "wb") as out:
            out.write(Path(src).read_bytes()[:5000])
        # A reader looking now must not find the half-written blob under its key.
        visible_midway.append(store.exists(blob_key(digest)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hub.storage.local.shutil.copyfile", half_copy_then_disk_full)
    with pytest.raises(StorageUnavailable) as info:
        store.put_file(blob_key(digest), path, size=size, sha256=digest)
    assert info.value.code == "storage_unavailable"
    assert "No space left" in info.value.detail
    assert visible_midway == [False]
    assert not store.exists(blob_key(digest))
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_local_put_of_a_missing_source_stores_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    digest = "1" * 64
    with pytest.raises(FileNotFoundError):
        store.put_file(blob_key(digest), tmp_path / "nope", size=3, sha256=digest)
    assert not store.exists(blob_key(digest))


def test_local_dedup_keeps_the_first_file_but_refreshes_its_time(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    key = _put(store, tmp_path, b"same bytes")
    blob = tmp_path / "blobs" / key
    os.utime(blob, (1_000_000, 1_000_000))  # an old orphan, as gc would see it
    before = os.stat(blob)
    _put(store, tmp_path, b"same bytes", name="again.bin")
    after = os.stat(blob)
    # Same file (not rewritten), but young again: gc's grace period protects a blob
    # that a publish is about to name.
    assert after.st_ino == before.st_ino and after.st_mtime > before.st_mtime + 1_000_000


def test_local_dedup_stores_again_a_blob_deleted_after_its_size_was_read(tmp_path: Path,
                                                                          monkeypatch) -> None:
    # `lorastack gc` may delete the old blob between the size check and the time refresh.
    store = LocalBlobStore(tmp_path / "blobs")
    key = _put(store, tmp_path, b"same bytes")
    size = store.size

    def size_then_gc(k):
        answer = size(k)
        store.delete(k)
        return answer

    monkeypatch.setattr(store, "size", size_then_gc)
    _put(store, tmp_path, b"same bytes", name="again.bin")
    monkeypatch.undo()
    assert store.size(key) == len(b"same bytes")


def test_local_check_fails_when_the_root_cannot_be_a_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageUnavailable) as info:
        LocalBlobStore(blocker / "blobs").check()
    assert str(blocker) in info.value.detail


def test_local_store_has_no_presigned_url_and_local_path_needs_the_blob(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    key = _put(store, tmp_path, b"x")
    assert store.presigned_url(key, filename="x.bin", expires_in=60) is None
    with pytest.raises(NotFound):
        store.local_path(blob_key("2" * 64))


# -- the S3 store ------------------------------------------------------------------------

def test_s3_presigned_url_downloads_the_bytes_as_an_attachment(
        s3_bucket_url: str, moto_endpoint: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket_url, s3_endpoint_url=moto_endpoint)
    data = os.urandom(20_000)
    key = _put(store, tmp_path, data)
    url = store.presigned_url(key, filename="adapter_model.safetensors", expires_in=120)
    assert store.local_path(key) is None
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert 'filename="adapter_model.safetensors"' in disposition


def test_s3_objects_live_under_the_prefix_and_others_are_not_listed(
        s3_bucket_url: str, moto_endpoint: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket_url, s3_endpoint_url=moto_endpoint)
    bucket = s3_bucket_url.split("/")[2]
    client = s3_client(moto_endpoint)
    client.put_object(Bucket=bucket, Key="elsewhere/file", Body=b"not a blob")
    key = _put(store, tmp_path, b"under the prefix")
    head = client.head_object(Bucket=bucket, Key=f"blobs/{key}")
    assert head["ContentLength"] == len(b"under the prefix")
    assert head["Metadata"]["sha256"] == key.rsplit("/", 1)[1]
    assert [k for k, _ in store.iter_blobs()] == [key]


def test_s3_large_file_goes_up_in_parts_and_round_trips(
        s3_bucket_url: str, moto_endpoint: str, tmp_path: Path) -> None:
    bucket, prefix = s3_bucket_url[len("s3://"):].split("/", 1)
    store = S3BlobStore(bucket, prefix, endpoint_url=moto_endpoint, chunk_size=5 * 1024 * 1024)
    data = os.urandom(50 * 1024 * 1024)
    key = _put(store, tmp_path, data)
    head = s3_client(moto_endpoint).head_object(Bucket=bucket, Key=f"{prefix}/{key}")
    assert head["ETag"].strip('"').endswith("-10")  # a multipart ETag counts its parts
    digest = hashlib.sha256()
    with store.open_read(key) as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == key.rsplit("/", 1)[1]


@pytest.mark.parametrize("operation", ["check", "exists", "put", "read", "list"])
def test_s3_missing_bucket_is_storage_unavailable_naming_the_bucket(
        moto_endpoint: str, tmp_path: Path, operation: str) -> None:
    store = open_store("s3://no-such-bucket-here/blobs", s3_endpoint_url=moto_endpoint)
    path, size, digest = _write(tmp_path / "src.bin", b"data")
    actions = {
        "check": store.check,
        "exists": lambda: store.exists(blob_key(digest)),
        "put": lambda: store.put_file(blob_key(digest), path, size=size, sha256=digest),
        "read": lambda: store.open_read(blob_key(digest)),
        "list": lambda: list(store.iter_blobs()),
    }
    with pytest.raises(StorageUnavailable) as info:
        actions[operation]()
    assert info.value.code == "storage_unavailable"
    assert "no-such-bucket-here" in info.value.detail


def test_s3_unreachable_endpoint_is_storage_unavailable(moto_endpoint: str,
                                                         tmp_path: Path) -> None:
    # moto_endpoint only sets the dummy credentials; the port below has no server.
    closed = f"http://127.0.0.1:{free_port()}"
    store = S3BlobStore("bucket", "blobs", endpoint_url=closed,
                        timeouts=S3Timeouts(max_attempts=2))
    with pytest.raises(StorageUnavailable) as info:
        store.check()
    assert closed in info.value.detail
    with pytest.raises(StorageUnavailable):
        store.exists(blob_key("3" * 64))


@pytest.mark.parametrize("operation", ["check", "exists", "put", "read", "list", "delete"])
def test_s3_hung_endpoint_fails_within_its_timeouts(moto_endpoint: str, tmp_path: Path,
                                                    operation: str) -> None:
    # moto_endpoint only sets the dummy credentials; the endpoint accepts and never answers.
    path, size, digest = _write(tmp_path / "src.bin", b"data")
    with hung_endpoint() as endpoint:
        store = open_store("s3://bucket/blobs", s3_endpoint_url=endpoint,
                           s3_timeouts=S3Timeouts(connect=1, read=1, max_attempts=2))
        actions = {
            "check": store.check,
            "exists": lambda: store.exists(blob_key(digest)),
            "put": lambda: store.put_file(blob_key(digest), path, size=size, sha256=digest),
            "read": lambda: store.open_read(blob_key(digest)),
            "list": lambda: list(store.iter_blobs()),
            "delete": lambda: store.delete(blob_key(digest)),
        }
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as info:
            actions[operation]()
        # Two attempts of one second each, and botocore's backoff between: far under 30 s
        # (without timeouts a hung store holds a request for minutes).
        assert time.monotonic() - started < 30
    assert info.value.code == "storage_unavailable"


def test_s3_timeouts_default_to_seconds_not_minutes() -> None:
    timeouts = S3Timeouts()
    assert timeouts.max_attempts * (timeouts.connect + timeouts.read) <= 30
    store = S3BlobStore("bucket")
    config = store._client_config
    assert (config.connect_timeout, config.read_timeout) == (timeouts.connect, timeouts.read)
    assert config.retries["max_attempts"] == timeouts.max_attempts


def test_local_store_links_a_consumed_file_instead_of_copying(tmp_path):
    import hashlib

    from hub.storage import blob_key, open_store

    store = open_store(f"file://{tmp_path / 'blobs'}")
    source = tmp_path / "upload.tmp"
    source.write_bytes(b"uploaded bytes")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store.put_file(blob_key(digest), source, size=source.stat().st_size, sha256=digest,
                   consume=True)
    stored = store.local_path(blob_key(digest))
    assert stored.read_bytes() == b"uploaded bytes"
    assert stored.stat().st_ino == source.stat().st_ino  # one file, written once
    source.unlink()  # the upload's temporary file goes away; the blob stays
    assert stored.read_bytes() == b"uploaded bytes"
    assert sorted(p.name for p in stored.parent.iterdir()) == [digest]


def test_local_store_copies_when_the_caller_keeps_the_file(tmp_path):
    import hashlib

    from hub.storage import blob_key, open_store

    store = open_store(f"file://{tmp_path / 'blobs'}")
    source = tmp_path / "mine.bin"
    source.write_bytes(b"still mine")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store.put_file(blob_key(digest), source, size=10, sha256=digest)
    assert store.local_path(blob_key(digest)).stat().st_ino != source.stat().st_ino


def test_s3_multipart_uploads_begun_before_the_cutoff_are_aborted(s3_bucket_url: str,
                                                                  moto_endpoint: str) -> None:
    store = open_store(s3_bucket_url, s3_endpoint_url=moto_endpoint)
    client = s3_client(moto_endpoint)
    bucket, prefix = s3_bucket_url[len("s3://"):].split("/", 1)
    key = f"{prefix}/{blob_key('4' * 64)}"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part")
    begun = client.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["Initiated"]

    assert store.remove_incomplete_uploads(begun - timedelta(seconds=1)) == []
    listed = store.remove_incomplete_uploads(begun + timedelta(seconds=1), dry_run=True)
    assert listed == [f"multipart upload {blob_key('4' * 64)} ({upload})"]
    assert len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", ())) == 1
    assert store.remove_incomplete_uploads(begun + timedelta(seconds=1)) == listed
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_local_partial_blobs_older_than_the_cutoff_are_removed(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'blobs'}")
    key = _put(store, tmp_path, b"a whole blob")
    folder = store.local_path(key).parent
    crashed, writing = folder / ".tmp-crashed", folder / ".tmp-writing"
    crashed.write_bytes(b"half")
    writing.write_bytes(b"half")
    old = (datetime.now(timezone.utc) - timedelta(days=2)).timestamp()
    os.utime(crashed, (old, old))
    os.utime(store.local_path(key), (old, old))  # an old blob is not a leftover

    cutoff = datetime.now(timezone.utc) - timedelta(days=1)
    relative = crashed.relative_to(store.root).as_posix()
    assert store.remove_incomplete_uploads(cutoff, dry_run=True) == [relative]
    assert crashed.exists()
    assert store.remove_incomplete_uploads(cutoff) == [relative]
    assert not crashed.exists() and writing.exists() and store.exists(key)
