"""`lorastack serve` with timers around each phase of a publish (bench/upload.py --phases).

Run as `python bench/_phases.py serve --port P`: it wraps the hub's functions in this
process before gunicorn forks its worker, then after each request that spent time in a
phase prints one line `PHASES {json}` (seconds per phase) to the server log. With
BENCH_PROFILE_DIR set it also dumps a cProfile of each such request (its thread only)
there. Nothing in hub/ is changed; the wrappers mirror the code they time.
"""
from __future__ import annotations

import cProfile
import functools
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_acc: dict[str, float] = {}


def _add(name: str, seconds: float) -> None:
    _acc[name] = _acc.get(name, 0.0) + seconds


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - start)
    return wrapper


def install() -> None:
    """Wrap the upload path: body parsing, hashing, temp writes, validation, storage."""
    import flask
    import flask.wrappers

    import hub.api.adapters as adapters
    import hub.api.uploads as uploads
    import hub.formats.upload as formats_upload
    import hub.services.publish as publish
    from hub.storage.local import LocalBlobStore
    from hub.storage.s3 import S3BlobStore

    def write(self, data: bytes) -> int:  # HashingFile.write, with the two halves timed
        start = time.perf_counter()
        self._sha256.update(data)
        middle = time.perf_counter()
        self.size += len(data)
        written = self._file.write(data)
        end = time.perf_counter()
        _add("sha256", middle - start)
        _add("tmp write", end - middle)
        _add("chunks", 1)
        _add("chunk bytes", len(data))
        return written

    uploads.HashingFile.write = write
    flask.wrappers.Request._load_form_data = _timed(
        "form parse", flask.wrappers.Request._load_form_data)
    formats_upload.check_finite = _timed("finite scan", formats_upload.check_finite)
    publish.validate_upload = _timed("validate", publish.validate_upload)
    LocalBlobStore.put_file = _timed("store put", LocalBlobStore.put_file)
    S3BlobStore.put_file = _timed("store put", S3BlobStore.put_file)
    adapters.publish_version = _timed("publish_version", adapters.publish_version)
    wsgi_app = flask.Flask.wsgi_app

    profile_dir = os.environ.get("BENCH_PROFILE_DIR")

    def timed_wsgi_app(self, environ, start_response):
        _acc.clear()
        profiler = cProfile.Profile() if profile_dir else None
        start = time.perf_counter()
        try:
            if profiler is None:
                return wsgi_app(self, environ, start_response)
            return profiler.runcall(wsgi_app, self, environ, start_response)
        finally:
            if _acc:
                _add("request", time.perf_counter() - start)
                print("PHASES " + json.dumps(_acc), file=sys.stderr, flush=True)
                if profiler is not None:  # BENCH_PROFILE_DIR: one pstats file per publish
                    profiler.dump_stats(os.path.join(profile_dir, f"publish-{time.time():.0f}.prof"))

    flask.Flask.wsgi_app = timed_wsgi_app


if __name__ == "__main__":
    install()
    from hub.cli import main

    main(sys.argv[1:], prog_name="lorastack")
