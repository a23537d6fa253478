"""Merges inside a long-running process (a worker, the web process's inline thread): run at
once, beside other torch work, they give their bytes alone and leave the process as found."""
from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path

import torch
from merge_fixtures import merge_device, read_json
from safetensors.torch import load_file

from hub.merge import MergeSpec, SourceSpec, merge_to_folder, threads

DEVICE = merge_device()
MIX = [("llama_a", 0.7), ("llama_b", -0.4), ("llama_c", 1.3)]
SPECS = {
    "dare": MergeSpec(method="dare_ties", density=0.5, seed=7, device=DEVICE),
    "linear": MergeSpec(rank=3, device=DEVICE),
}
#: The thread name prefixes of the engine's pools (hub.merge.engine, hub.merge.dense).
POOLS = ("lorastack-merge", "lorastack-dare", "lorastack-torch-default")


def _specs(adapters):
    return [SourceSpec(adapters[name], weight) for name, weight in MIX]


def _tensor_digests(folder: Path) -> dict[str, str]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return {key: hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for key, t in sorted(tensors.items())}


def _count_in_new_thread() -> int:
    """The intra-op thread count a thread started now gets: the process-wide default."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def _default_outside_worker_setup() -> int:
    """The process-wide default, read outside the moment in which the engine sets up a
    single-threaded worker (torch sets a thread's count only with the default)."""
    with threads._DEFAULT_LOCK:
        return _count_in_new_thread()


class _TorchNeighbour(threading.Thread):
    """Other torch work in the process: the same products over and over until stopped,
    recording their digest and the thread count it ran on."""

    def __init__(self) -> None:
        super().__init__(name="neighbour")
        self.ready, self.stop = threading.Event(), threading.Event()
        self.digests: set[str] = set()
        self.counts: set[int] = set()

    def run(self) -> None:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(256, 512, generator=g), torch.randn(512, 384, generator=g)
        while True:
            out = torch.tanh(a @ b).mul_(3.0).sum(dim=0)
            self.digests.add(hashlib.sha256(out.numpy().tobytes()).hexdigest())
            self.counts.add(torch.get_num_threads())
            self.ready.set()
            if self.stop.is_set():
                return


def test_concurrent_merges_beside_torch_work_give_their_bytes_alone_and_leave_threads_as_found(
        adapters, tmp_path):
    original = torch.get_num_threads()
    threads = max(2, original)  # the engine's worker pools need two threads at least
    torch.set_num_threads(threads)
    try:
        alone = {}
        for kind, spec in SPECS.items():
            merge_to_folder(_specs(adapters), spec, tmp_path / f"alone-{kind}")
            alone[kind] = _tensor_digests(tmp_path / f"alone-{kind}")
        interop = torch.get_num_interop_threads()
        lasting = {t for t in threading.enumerate() if not t.daemon}
        started_meanwhile: list[int] = []

        def progress(_fraction: float) -> None:
            # What a thread started while the merges run (a web request, a task) gets.
            started_meanwhile.append(_default_outside_worker_setup())

        barrier = threading.Barrier(len(SPECS))
        failures = []

        def run(kind: str) -> None:
            try:
                barrier.wait()
                for attempt in range(3):
                    merge_to_folder(_specs(adapters), SPECS[kind], tmp_path / f"{kind}-{attempt}",
                                    progress=progress)
            except BaseException as exc:  # reported below, on the test's thread
                failures.append(exc)

        neighbour = _TorchNeighbour()
        neighbour.start()
        neighbour.ready.wait()
        merges = [threading.Thread(target=run, args=(kind,)) for kind in SPECS]
        for thread in merges:
            thread.start()
        for thread in merges:
            thread.join()
        neighbour.stop.set()
        neighbour.join()

        assert not failures
        for kind in SPECS:
            for attempt in range(3):
                assert _tensor_digests(tmp_path / f"{kind}-{attempt}") == alone[kind], (kind, attempt)
        assert len(neighbour.digests) == 1 and neighbour.counts == {threads}
        assert started_meanwhile and set(started_meanwhile) == {threads}
        assert torch.get_num_threads() == threads and _count_in_new_thread() == threads
        assert torch.get_num_interop_threads() == interop
        left = {t for t in threading.enumerate() if not t.daemon} - lasting
        assert not [t.name for t in threading.enumerate() if t.name.startswith(POOLS)]
        # The sources' hashing pool is process-wide for now (hub.merge.sources), and only that.
        assert not [t.name for t in left if not t.name.startswith("lorastack-sha256")]
    finally:
        torch.set_num_threads(original)


def test_report_and_config_name_sources_by_label_never_by_folder(adapters, tmp_path):
    out = tmp_path / "merged"
    sources = [SourceSpec(adapters[name], weight, label=label)
               for (name, weight), label in zip(MIX, [None, "alice/llama-b@3", None])]
    report = merge_to_folder(sources, SPECS["linear"], out)
    assert [s["label"] for s in report["sources"]] == ["llama_a", "alice/llama-b@3", "llama_c"]
    assert all(len(s["sha256"]) == 64 for s in report["sources"])
    assert [s["license"] for s in report["sources"]] == ["apache-2.0", "mit", None]
    folders = {str(adapters[name].parent) for name, _ in MIX}
    for written in ("merge_report.json", "adapter_config.json"):
        text = (out / written).read_text()
        for folder in folders | {str(tmp_path), tempfile.gettempdir(), str(Path.cwd())}:
            assert folder not in text, (written, folder)
    assert read_json(out / "merge_report.json") == report
