"""A worker's source cache over a real S3 endpoint: verified copies within a byte budget."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hub.errors import StorageUnavailable
from hub.services.source_cache import CachedFile, SourceCache
from hub.storage import blob_key, open_store


def put(store, tmp_path: Path, data: bytes, name: str) -> CachedFile:
    path = tmp_path / name
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store.put_file(blob_key(digest), path, size=len(data), sha256=digest)
    return CachedFile(name, blob_key(digest), digest, len(data))


def test_s3_blobs_are_fetched_once_verified_and_kept_within_the_budget(
        s3_bucket_url, moto_endpoint, tmp_path):
    store = open_store(s3_bucket_url, s3_endpoint_url=moto_endpoint)
    files = [put(store, tmp_path, os.urandom(10_000), f"f{i}.bin") for i in range(3)]
    cache = SourceCache(store, tmp_path / "cache", budget_bytes=25_000)
    for index, file in enumerate(files):
        with cache.folder([file], tmp_path / f"work{index}") as folder:
            link = folder / file.path
            assert hashlib.sha256(link.read_bytes()).hexdigest() == file.sha256
            cached = tmp_path / "cache" / file.sha256[:2] / file.sha256
            assert os.path.samefile(link, cached)  # a hard link to the cached copy
        assert not (tmp_path / f"work{index}").exists()
    kept = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    # Three 10 kB blobs in a 25 kB budget: the least recently used one went.
    assert sum(p.stat().st_size for p in kept) <= 25_000
    assert {p.name for p in kept} == {files[1].sha256, files[2].sha256}
    # A cached copy is used again without the store.
    again = SourceCache(open_store("s3://no-such-bucket-here/x", s3_endpoint_url=moto_endpoint),
                        tmp_path / "cache", budget_bytes=25_000)
    with again.folder([files[2]], tmp_path / "again") as folder:
        assert (folder / files[2].path).read_bytes()


def test_files_in_use_are_never_evicted_even_over_the_budget(s3_bucket_url, moto_endpoint,
                                                              tmp_path):
    store = open_store(s3_bucket_url, s3_endpoint_url=moto_endpoint)
    files = [put(store, tmp_path, os.urandom(10_000), f"g{i}.bin") for i in range(2)]
    cache = SourceCache(store, tmp_path / "cache", budget_bytes=5_000)
    with cache.folder(files, tmp_path / "work") as folder:
        for file in files:
            assert hashlib.sha256((folder / file.path).read_bytes()).hexdigest() == file.sha256


def test_a_blob_whose_bytes_do_not_match_its_digest_is_refused(s3_bucket_url, moto_endpoint,
                                                                tmp_path):
    store = open_store(s3_bucket_url, s3_endpoint_url=moto_endpoint)
    good = put(store, tmp_path, b"the real bytes", "h.bin")
    lying = CachedFile("h.bin", good.blob_key, "0" * 64, good.size)
    cache = SourceCache(store, tmp_path / "cache", budget_bytes=1 << 20)
    with pytest.raises(StorageUnavailable, match="damaged"):
        with cache.folder([lying], tmp_path / "work"):
            pass
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    assert not (tmp_path / "work").exists()
