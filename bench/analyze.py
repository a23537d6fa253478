"""Source analysis benchmark on LLaMA-7B shapes: end to end, the math alone, and the I/O floor.

    python bench/analyze.py [--device cpu|cuda] [--layers 32] [--adapters 3] [--ranks 16]

The adapters are bench/merge.py's synthetic float16 PEFT folders (every q, k, v, o, gate,
up, down projection of `--layers` LLaMA-7B layers), in a temp dir deleted at the end. One
process times the three rows alternately, after a warm-up, as a long-running service
worker would run them; times are medians of --repeat.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.merge import WEIGHTS, make_adapter


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call; the CPU time includes the sha256 hashing the
    call left running in the background (load_source starts it), so no other row pays for it."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    fn(*args)
    wall = time.perf_counter() - start
    _drain_hashing()
    return wall, _cpu_seconds() - cpu


def _drain_hashing() -> None:
    """Wait until the hashing pool is idle: its workers all reach one barrier only once free."""
    from hub.merge import sources

    pool = sources._hasher()
    barrier = threading.Barrier(pool._max_workers)
    for future in [pool.submit(barrier.wait) for _ in range(pool._max_workers)]:
        future.result()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def io_floor(sources: list[str], device: str) -> None:
    """Read every factor of every source (moved to the GPU on cuda)."""
    from safetensors.torch import load_file

    for src in sources:
        tensors = load_file(str(Path(src) / "adapter_model.safetensors"), device="cpu")
        if device == "cuda":
            tensors = {k: v.to("cuda", non_blocking=True) for k, v in tensors.items()}
        _sync(device)
        del tensors


def end_to_end(sources: list[str], device: str) -> dict:
    """`analyze` from the folders."""
    from hub.merge import SourceSpec
    from hub.merge.analyze import analyze

    return analyze([SourceSpec(src, w) for src, w in zip(sources, WEIGHTS)], device=device)


def preload(sources: list[str], device: str) -> tuple[list, list]:
    """Every module's factors (stored dtype, on `device`) and coefficients, and the plans."""
    from hub.merge.plan import load_sources, plan_modules
    from hub.merge.spec import SourceSpec

    loaded = load_sources([SourceSpec(src, w) for src, w in zip(sources, WEIGHTS)])
    plans = plan_modules(loaded)
    items = []
    for plan in plans:
        factors = [loaded[i].factors(ref, device, check_finite=False, dtype=None) for i, ref in plan.parts]
        items.append(([b for _, b in factors], [a for a, _ in factors],
                      [loaded[i].weight * ref.scale for i, ref in plan.parts]))
    for source in loaded:
        source.close()
    return plans, items


def math_only(plans: list, items: list, labels: list[str], device: str) -> None:
    """The inner products and the report, factors already in memory."""
    import torch

    from hub.merge.analyze import inner_products, map_modules, report

    inners = map_modules(lambda item: inner_products(*item, device).cpu(), items,
                         torch.device(device))
    report(labels, WEIGHTS[:len(labels)], plans, inners)


def main(argv: list[str] | None = None) -> int:
    """Build adapters, time the rows alternately, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--adapters", default="3")
    parser.add_argument("--ranks", default="16")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="where the synthetic adapters go")
    args = parser.parse_args(argv)

    import torch

    configs = [(int(n), int(r)) for r in args.ranks.split(",") for n in args.adapters.split(",")]
    rows: list[list[str]] = []
    t0 = time.perf_counter()
    print(f"analyze bench: device={args.device} layers={args.layers} modules/layer=7 "
          f"(LLaMA-7B shapes) repeat={args.repeat} torch threads={torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lorastack-bench-", dir=args.tmp) as tmp:
        for n, r in configs:
            srcs = [str(make_adapter(Path(tmp) / f"n{n}r{r}" / f"a{i}", args.layers, r, seed=1000 * r + i))
                    for i in range(n)]
            in_mb = sum((Path(s) / "adapter_model.safetensors").stat().st_size for s in srcs) / 2**20
            plans, items = preload(srcs, args.device)
            labels = [f"a{i}" for i in range(n)]
            result = end_to_end(srcs, args.device)  # warm-up: kernels, allocator, page cache
            math_only(plans, items, labels, args.device)
            runs: dict[str, list[tuple[float, float]]] = {"floor": [], "end": [], "math": []}
            for _ in range(args.repeat):
                runs["floor"].append(timed(io_floor, srcs, args.device))
                runs["end"].append(timed(end_to_end, srcs, args.device))
                runs["math"].append(timed(math_only, plans, items, labels, args.device))
            del items
            wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
            cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
            cos = [abs(c) for row in result["cosine"] for c in row if c is not None and c < 1.0]
            note = f"in {in_mb:.0f} MiB, {len(plans)} modules, max |cos| {max(cos):.1e}"
            rows.append(["analyze (end to end)", f"{n} x r{r}", f"{wall['end']:.3f}",
                         f"{cpu['end']:.3f}", f"io floor {wall['floor']:.3f} (cpu {cpu['floor']:.3f})",
                         f"{wall['end'] / wall['floor']:.1f}x", f"+{wall['end'] - wall['floor']:.3f}",
                         note])
            rows.append(["  math alone (factors in memory)", f"{n} x r{r}", f"{wall['math']:.3f}",
                         f"{cpu['math']:.3f}", "", "", "",
                         f"{1e3 * wall['math'] / len(plans):.2f} ms/module"])
            for row in rows[-2:]:
                print("  " + " | ".join(row), flush=True)
    header = ["row", "sources", "wall (s)", "cpu (s)", "baseline (s)", "ratio", "over floor",
              "notes"]
    widths = [max(len(str(x[i])) for x in rows + [header]) for i in range(len(header))]
    print()
    print(f"device={args.device} layers={args.layers} repeat={args.repeat} (medians, one process, "
          f"rows alternating); total bench {time.perf_counter() - t0:.0f}s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. cpu = process CPU time, all "
          f"threads. io floor = read every input's factors (safetensors load_file).")
    for line in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
