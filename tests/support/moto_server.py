"""pytest plugin: moto's standalone S3 server in a separate process, and fresh buckets.

List it in the root conftest with `pytest_plugins = ["tests.support.moto_server"]`.
The server is a real HTTP endpoint, so the S3 store is tested over the wire exactly as
it talks to MinIO or AWS (multipart uploads, presigned URLs, connection errors).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

# Dummy credentials: moto accepts any, and they keep a developer's real ones out of reach.
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_UNSET = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")
_START_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_client(endpoint_url: str):
    """A boto3 S3 client for the moto endpoint (for test setup and inspection)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"}))


def _start(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if key not in _UNSET}
    env.update(MOTO_ENV)
    with open(log_path, "ab") as log:
        # The log file, not a pipe: moto logs every request and a full pipe would block it.
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            requests.get(endpoint, timeout=1)
            return proc, endpoint
        except requests.RequestException:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"moto server did not answer on {endpoint}; log:\n"
                       + log_path.read_text(errors="replace")[-2000:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto S3 server running for the whole session, with dummy credentials set."""
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as patch:
        for key in _UNSET:
            patch.delenv(key, raising=False)
        for key, value in MOTO_ENV.items():
            patch.setenv(key, value)
        try:
            proc, endpoint = _start(log_path)
        except RuntimeError:
            # Another process may have taken the free port between probe and bind: once more.
            proc, endpoint = _start(log_path)
        try:
            yield endpoint
        finally:
            _stop(proc)


@pytest.fixture
def s3_bucket_url(moto_endpoint: str) -> Iterator[str]:
    """`s3://<fresh bucket>/blobs` on the moto server."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/blobs"
