"""Running a merge on a worker: claim the row, merge, store the result, mark it done.

Whatever queue delivered the id (the inline thread or Celery), the database decides: a
worker claims a queued merge with one atomic UPDATE (a redelivered message finds it
claimed and does nothing), heartbeats while it runs, stores every result blob before the
row says succeeded, and gives up quietly when its claim was taken from it (the sweep
handed a silent merge to another worker). Cancellation is a flag on the row that the
heartbeat reads; the engine stops at the next module.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from hub.errors import HubError, InternalError, MergeCancelled, StorageUnavailable
from hub.models import Adapter, Merge, MergeFile, MergeSource, Version, utcnow
from hub.runtime import Hub
from hub.services.blobs import lock_blobs
from hub.services.merges import ARCHIVE_NAME, expiry
from hub.services.model_card import merge_card
from hub.formats import WEIGHTS_FILE
from hub.services.source_cache import ADAPTER_FILES, CachedFile, SourceCache
from hub.storage import blob_key

log = logging.getLogger("hub.merge_run")


class ClaimLost(Exception):
    """The row is no longer this worker's (handed out again, or cancelled meanwhile)."""


@dataclass
class _Job:
    """What a claimed merge needs, read once: its spec and its sources' files."""

    merge_id: str
    spec: dict
    sources: list[dict]
    base_model: str | None
    license: dict


class MergeRunner:
    """Runs merges for one worker (a process, or the inline thread) on one device."""

    def __init__(self, hub: Hub, worker: str, device: str | None = None) -> None:
        self.hub = hub
        self.worker = worker
        self.device = device or hub.settings.device
        self.cache = SourceCache(hub.store, hub.settings.worker_cache_dir,
                                 hub.settings.worker_cache_bytes)

    def run(self, merge_id: str) -> str | None:
        """Claim and run `merge_id`; its final status, or None when it was not ours to run."""
        if not self._claim(merge_id):
            return None
        beat = _Heartbeat(self, merge_id)
        beat.start()
        try:
            job = self._load(merge_id)
            files, report, device = self._merge(job, beat)
            return self._succeed(job, files, report, device)
        except ClaimLost:
            log.info("merge %s: claim lost, leaving it to its new holder", merge_id)
            return None
        except MergeCancelled as error:
            return self._end(merge_id, "cancelled", error)
        except HubError as error:
            return self._end(merge_id, "failed", error)
        except Exception:  # a bug or an environment failure: logged, never a silent hang
            log.exception("merge %s failed", merge_id)
            return self._end(merge_id, "failed", InternalError(
                "The merge failed on the worker; the error has been logged."))
        finally:
            beat.stop()

    def _claim(self, merge_id: str) -> bool:
        now = utcnow()
        with self.hub.db.session() as session:
            return session.execute(
                update(Merge).where(Merge.id == merge_id, Merge.status == "queued")
                .values(status="running", worker=self.worker, attempts=Merge.attempts + 1,
                        started_at=now, heartbeat_at=now, progress=0.0)
                .execution_options(synchronize_session=False)).rowcount == 1

    def _load(self, merge_id: str) -> _Job:
        with self.hub.db.session() as session:
            merge = session.scalar(select(Merge).where(Merge.id == merge_id).options(
                selectinload(Merge.sources).selectinload(MergeSource.version)
                .selectinload(Version.files),
                selectinload(Merge.sources).selectinload(MergeSource.version)
                .selectinload(Version.adapter).selectinload(Adapter.owner)))
            sources = []
            for source in merge.sources:
                version = source.version
                files = {f.path: f for f in version.files}
                sources.append({
                    "adapter": f"{version.adapter.owner.name}/{version.adapter.name}",
                    "owner": version.adapter.owner.name, "version": version.label,
                    "weight": source.weight, "license": version.license,
                    "license_name": version.license_name, "license_link": version.license_link,
                    "sha256": files[WEIGHTS_FILE].sha256,
                    "files": [CachedFile(path, files[path].blob_key, files[path].sha256,
                                         files[path].size) for path in ADAPTER_FILES]})
            base = next((s.version.base_model for s in merge.sources if s.version.base_model),
                        None)
            return _Job(merge.id, dict(merge.spec), sources, base, dict(merge.license))

    def _merge(self, job: _Job, beat: "_Heartbeat") -> tuple[list[tuple[str, Path]], dict, str]:
        from hub.merge import MergeSpec, SourceSpec, merge_to_folder

        spec = job.spec
        work = self._work_folder(job.merge_id)
        try:
            with self.cache.folders([s["files"] for s in job.sources], work) as folders:
                specs = [SourceSpec(folder, s["weight"], f"{s['adapter']}@{s['version']}")
                         for folder, s in zip(folders, job.sources)]
                engine_spec = MergeSpec(
                    method=spec["method"], rank=spec["rank"], density=spec["density"],
                    majority_sign_method=spec["majority_sign_method"], seed=spec["seed"],
                    output=spec["output"], dtype=spec["dtype"], device=_engine_device(self.device))
                out = work / "out"
                try:
                    report = merge_to_folder(specs, engine_spec, out, progress=beat.progress)
                except HubError as error:
                    # A source's folder is this worker's cache: the requester knows it by
                    # its name.
                    for folder, source in zip(folders, job.sources):
                        error.detail = error.detail.replace(
                            str(folder), f"{source['adapter']}@{source['version']}")
                    raise
            _name_sources(report, job)
            (out / "merge_report.json").write_text(_dumps(report))
            (out / "README.md").write_text(merge_card(
                base_model=job.base_model, license_=job.license,
                spec=spec, sources=job.sources, report=report))
            files = sorted((path.name, path) for path in out.iterdir())
            archive = work / ARCHIVE_NAME
            _zip(out, files, archive)
            stored = [(name, self._store(path)) for name, path in files]
            archived = self._store(archive)
            return [*stored, (ARCHIVE_NAME, archived)], report, _describe_device(report)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _work_folder(self, merge_id: str) -> Path:
        """A new folder for this attempt under DATA_DIR/tmp."""
        # A worker's data dir may be new and hold nothing else (its database and blobs
        # elsewhere): only the web app creates tmp/ at start.
        scratch = self.hub.settings.data_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        # Earlier attempts of this merge on this data dir left their folders when their
        # worker died (or lost its claim): with the claim just taken, none of them goes on.
        for earlier in scratch.glob(f"merge-{merge_id}-*"):
            shutil.rmtree(earlier, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"merge-{merge_id}-", dir=scratch))

    def _store(self, path: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(4 << 20):
                digest.update(chunk)
        sha, size = digest.hexdigest(), path.stat().st_size
        self.hub.store.put_file(blob_key(sha), path, size=size, sha256=sha, consume=True)
        return sha, size

    def _succeed(self, job: _Job, files: list, report: dict, device: str) -> str:
        now = utcnow()
        with self.hub.db.session() as session:
            # As a publish does (hub.services.blobs): gc must not take a blob between the
            # check that it is stored and the commit of the rows that name it.
            lock_blobs(session, (blob_key(sha) for _, (sha, _) in files))
            if any(self.hub.store.size(blob_key(sha)) != size for _, (sha, size) in files):
                raise StorageUnavailable("a result blob vanished from the store before the"
                                         " merge was recorded")
            # Locked to the commit: a sweep, a cancel or another worker's claim that comes
            # after this check waits for it and then sees the merge succeeded.
            merge = session.get(Merge, job.merge_id, with_for_update=True,
                                populate_existing=True)
            if merge.status != "running" or merge.worker != self.worker:
                raise ClaimLost(job.merge_id)
            merge.error_code = merge.error_detail = None
            merge.status, merge.progress = "succeeded", 1.0
            merge.finished_at, merge.heartbeat_at = now, now
            merge.expires_at = expiry(now, self.hub.settings)
            merge.device, merge.report = device, report
            archive = dict(files)[ARCHIVE_NAME]
            merge.archive_sha256, merge.archive_size = archive
            merge.files = [MergeFile(path=name, size=size, sha256=sha, blob_key=blob_key(sha))
                           for name, (sha, size) in files if name != ARCHIVE_NAME]
        return "succeeded"

    def _end(self, merge_id: str, status: str, error: HubError) -> str | None:
        with self.hub.db.session() as session:
            done = session.execute(
                update(Merge).where(Merge.id == merge_id, Merge.status == "running",
                                    Merge.worker == self.worker)
                .values(status=status, finished_at=utcnow(), error_code=error.code,
                        error_detail=error.detail)
                .execution_options(synchronize_session=False)).rowcount
        return status if done else None


class _Heartbeat:
    """Writes the heartbeat and progress every few seconds; reads the cancel flag back."""

    def __init__(self, runner: MergeRunner, merge_id: str) -> None:
        self.runner = runner
        self.merge_id = merge_id
        self.fraction = 0.0
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{merge_id[:8]}",
                                        daemon=True)

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (and wait for the thread)."""
        self._stop.set()
        self._thread.join(10)

    def progress(self, fraction: float) -> None:
        """The engine's progress callback: records it; stops the merge when asked to."""
        self.fraction = fraction
        if self.lost.is_set():
            raise ClaimLost(self.merge_id)
        if self.cancelled.is_set():
            raise MergeCancelled("Cancelled by its requester while it ran.")

    def _loop(self) -> None:
        interval = self.runner.hub.settings.heartbeat_seconds
        while not self._stop.wait(interval):
            try:
                self._beat()
            except HubError as error:  # the database is away: the next beat tries again
                log.warning("merge %s: heartbeat failed: %s", self.merge_id, error.detail)
            except Exception:  # never let the thread die while the merge runs on
                log.exception("merge %s: heartbeat failed", self.merge_id)

    def _beat(self) -> None:
        with self.runner.hub.db.session() as session:
            row = session.execute(
                update(Merge).where(Merge.id == self.merge_id, Merge.status == "running",
                                    Merge.worker == self.runner.worker)
                .values(heartbeat_at=utcnow(), progress=min(self.fraction, 0.999))
                .returning(Merge.cancel_requested)
                .execution_options(synchronize_session=False)).first()
        if row is None:
            self.lost.set()
        elif row[0]:
            self.cancelled.set()


def _engine_device(device: str) -> str:
    # The engine takes auto / cpu / cuda; a worker pinned to cuda:N sets its current
    # device when it starts (hub.jobs.worker), so "cuda" is that one.
    return "cuda" if device.startswith("cuda") else device


def _describe_device(report: dict) -> str:
    device = report.get("device", "cpu")
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device


def _name_sources(report: dict, job: _Job) -> None:
    """Sources in the report with their adapter, version and the hub's licence."""
    for entry, source in zip(report.get("sources", []), job.sources):
        entry["adapter"] = source["adapter"]
        entry["version"] = source["version"]
        entry["license"] = source["license"]
    report["licenses"] = sorted({s["license"] for s in job.sources})


def _dumps(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


def _zip(folder: Path, files: list[tuple[str, Path]], archive: Path) -> None:
    """A zip of the folder's files; safetensors stored, not deflated (it does not shrink)."""
    with zipfile.ZipFile(archive, "w", allowZip64=True) as zf:
        for name, path in files:
            method = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
            zf.write(path, arcname=name, compress_type=method)
