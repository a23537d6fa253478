"""Merge benchmark on LLaMA-7B shapes: ours vs the I/O floor, vs PEFT, and the dense methods.

    python bench/merge.py [--quick] [--device cpu|cuda] [--layers 32] [--peft-layers q_proj]

Synthetic random adapters are written as real PEFT folders (adapter_config.json +
adapter_model.safetensors, float16) in a temp dir and deleted at the end. Every timed row
runs in its own subprocess, so peak RSS (ru_maxrss) is that row's alone; on CUDA the
peak of torch.cuda.max_memory_allocated is reported too. Times are medians of --repeat.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# LLaMA-7B: (out_features, in_features) of each adapted Linear, and its parent path.
SHAPES = {
    "q_proj": ("self_attn", 4096, 4096), "k_proj": ("self_attn", 4096, 4096),
    "v_proj": ("self_attn", 4096, 4096), "o_proj": ("self_attn", 4096, 4096),
    "gate_proj": ("mlp", 11008, 4096), "up_proj": ("mlp", 11008, 4096),
    "down_proj": ("mlp", 4096, 11008),
}
WEIGHTS = [1.0, 0.7, -0.5, 0.3, 0.9, -0.2, 0.6, 0.4]


def module_key(layer: int, name: str) -> str:
    """PEFT's module path in LlamaForCausalLM."""
    return f"model.layers.{layer}.{SHAPES[name][0]}.{name}"


def make_adapter(folder: Path, layers: int, rank: int, seed: int) -> Path:
    """Write a random rank-`rank` LoRA on every LLaMA-7B Linear of `layers` layers (float16)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for name, (_, out_f, in_f) in SHAPES.items():
            key = f"base_model.model.{module_key(layer, name)}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, in_f, generator=g) / in_f ** 0.5).half()
            tensors[f"{key}.lora_B.weight"] = (torch.randn(out_f, rank, generator=g) * 0.02).half()
    save_file(tensors, str(folder / "adapter_model.safetensors"), {"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(SHAPES),
              "base_model_name_or_path": "bench/llama-7b-shapes", "task_type": "CAUSAL_LM",
              "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# ----------------------------------------------------------------------------- workers
def _peak() -> dict:
    import torch

    out = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _rss_anon_mb() -> float:
    """Anonymous resident memory (heap, tensors), without the mmapped input files' pages."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class AnonPeak:
    """Samples RssAnon every 5 ms: ru_maxrss also counts the mmapped inputs, which the
    kernel can drop at will, so it says little about the merge's own working set."""

    def __enter__(self) -> "AnonPeak":
        import threading

        self.base = self.peak = _rss_anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_anon_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_mb())


def _warm_up(device: str) -> None:
    """Load the linear-algebra kernels once, as a long-running merge worker would have."""
    import torch

    for where in {"cpu", device}:  # the R x R steps run on the host beside a GPU for small R
        x = torch.randn(64, 8, device=where, dtype=torch.float64)
        G = x.T @ x  # the exact linear path: float64 Gram matrices, Cholesky, eigh
        L, _ = torch.linalg.cholesky_ex(G)
        torch.linalg.solve_triangular(L, torch.eye(8, device=where, dtype=torch.float64), upper=False)
        torch.linalg.eigh(G)
    torch.linalg.svd(torch.randn(64, 32, device=device), full_matrices=False)


def worker_merge(task: dict) -> dict:
    """One merge_to_folder run; returns time, memory and energy figures."""
    import torch

    from hub.merge import MergeSpec, SourceSpec, merge_to_folder

    if task.get("host_core_max_rank") is not None:
        from hub.merge import factored

        factored.HOST_CORE_MAX_RANK = task["host_core_max_rank"]
    _warm_up(task["device"])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if task["device"] == "cuda":
        torch.zeros(1, device="cuda")
        torch.cuda.reset_peak_memory_stats()
    out = Path(task["out"])
    shutil.rmtree(out, ignore_errors=True)
    spec = MergeSpec(method=task["method"], rank=task["rank"], density=task.get("density"),
                     device=task["device"])
    sources = [SourceSpec(p, w) for p, w in zip(task["sources"], WEIGHTS)]
    profiler = None
    if task.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    sampler = AnonPeak() if task.get("sample", True) else contextlib.nullcontext()
    with sampler as anon:
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        report = merge_to_folder(sources, spec, out)
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - start
    kept = [m["energy_kept"] for m in report["modules"]]
    svd = sorted({m["svd"] for m in report["modules"]})
    result = {"time": elapsed, "base_rss_mb": base_rss, "energy_min": min(kept),
              "energy_median": statistics.median(kept), "svd": svd,
              "out_bytes": sum(f.stat().st_size for f in out.iterdir()),
              **_peak()}
    if anon is not None:
        result["anon_rise_mb"] = anon.peak - anon.base
    if profiler is not None:
        import io
        import pstats

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        result["profile"] = text.getvalue()
    if task.get("verify"):
        result["error_ratio"] = _truncation_vs_exact(sources, spec, task["verify"])
    return result


def _truncation_vs_exact(sources, spec, module_suffix: str) -> float:
    """Our truncation error over the exact SVD's, on one module (after the timed run)."""
    import torch

    from hub.merge import dense, engine

    loaded = engine.load_sources(sources)
    plan = next(p for p in engine.plan_modules(loaded) if p.name.endswith(module_suffix))
    device = engine.resolve_device(spec.device)
    factors = [loaded[i].factors(ref, device) for i, ref in plan.parts]
    merged = dense.combine(spec.canonical_method,
                           lambda j, lo, hi: (plan.parts[j][1].scale * factors[j][1][lo:hi]) @ factors[j][0],
                           (factors[0][1].shape[0], factors[0][0].shape[1]),
                           [loaded[i].weight for i, _ in plan.parts], spec.density,
                           spec.majority_sign_method, spec.seed, plan.name)
    low = dense.truncate(merged, spec.rank, plan.rank_in, seed=spec.seed)
    S = torch.linalg.svdvals(merged.double())
    exact = float(S[spec.rank:].pow(2).sum().sqrt())
    ours = float(torch.linalg.norm((merged - low.dense()).double()))
    engine._close(loaded)
    return ours / exact


def worker_io_floor(task: dict) -> dict:
    """Read every input fully and write an output of the same tensors as ours (same process kind)."""
    import torch
    from safetensors.torch import load_file, save_file

    template = load_file(task["template"])  # our output's tensors, loaded before timing
    start = time.perf_counter()
    total = 0.0
    for src in task["sources"]:
        tensors = load_file(str(Path(src) / "adapter_model.safetensors"), device="cpu")
        if task["device"] == "cuda":
            tensors = {k: v.to("cuda", non_blocking=True) for k, v in tensors.items()}
            torch.cuda.synchronize()
        total += sum(float(v.view(-1)[0]) for v in list(tensors.values())[:1])
        del tensors
    save_file(template, task["out"])
    return {"time": time.perf_counter() - start, **_peak()}


def worker_peft(task: dict) -> dict:
    """PEFT add_weighted_adapter(svd) vs our factored merge on one layer, same device."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from torch import nn

    from hub.merge.factored import factored_sum

    device, rank, names = task["device"], task["rank"], task["modules"]

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name in names:
                _, out_f, in_f = SHAPES[name]
                setattr(self, name, nn.Linear(in_f, out_f, bias=False, device="meta"))

    model = Layer().to_empty(device=device)  # base weights are never read by the merge
    adapters = [f"a{i}" for i in range(len(task["sources"]))]
    factors: dict[str, list] = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = LoraConfig(r=task["src_rank"], lora_alpha=2 * task["src_rank"], target_modules=names)
        peft_model = get_peft_model(model, config, adapter_name=adapters[0])
        for adapter in adapters[1:]:
            peft_model.add_adapter(adapter, config)
    for adapter, src in zip(adapters, task["sources"]):
        with safe_open(str(Path(src) / "adapter_model.safetensors"), "pt") as fh:
            for name in names:
                key = f"base_model.model.{module_key(0, name)}"
                a = fh.get_tensor(f"{key}.lora_A.weight").to(device).float()
                b = fh.get_tensor(f"{key}.lora_B.weight").to(device).float()
                layer = getattr(peft_model.base_model.model, name)
                layer.lora_A[adapter].weight.data.copy_(a)
                layer.lora_B[adapter].weight.data.copy_(b)
                factors[name].append((a, b, layer.scaling[adapter]))
    weights = WEIGHTS[: len(adapters)]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_weighted_adapter(adapters, weights, "merged", combination_type="svd", svd_rank=rank)
    sync()
    peft_time = time.perf_counter() - start
    ours_times, diffs = [], []
    for _ in range(task["repeat"]):
        sync()
        start = time.perf_counter()
        lows = {name: factored_sum([b for _, b, _ in f], [a for a, _, _ in f],
                                   [w * s for w, (_, _, s) in zip(weights, f)], rank)
                for name, f in factors.items()}
        sync()
        ours_times.append(time.perf_counter() - start)
    reference = {}
    for name, low in lows.items():
        peft_product = getattr(peft_model.base_model.model, name).get_delta_weight("merged").float()
        ours = low.dense()
        diffs.append(float(torch.linalg.norm(peft_product - ours) / torch.linalg.norm(ours)))
        if not reference:
            # Which side the difference comes from: both against the float64 truncation, first module only.
            exact = sum(w * s * (b.double() @ a.double()) for w, (a, b, s) in zip(weights, factors[name]))
            U, S, Vh = torch.linalg.svd(exact, full_matrices=False)
            best = (U[:, :rank] * S[:rank]) @ Vh[:rank]
            norm = torch.linalg.norm(best)
            reference = {"module": name,
                         "ours_vs_f64": float(torch.linalg.norm(ours.double() - best) / norm),
                         "peft_vs_f64": float(torch.linalg.norm(peft_product.double() - best) / norm)}
    return {"peft_time": peft_time, "time": statistics.median(ours_times), "rel_diff": max(diffs),
            "reference": reference, **_peak()}


WORKERS = {"merge": worker_merge, "io_floor": worker_io_floor, "peft": worker_peft}


def run_worker(task: dict) -> dict:
    """Run one task in a fresh interpreter and return its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(task)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {task['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def fmt_mem(result: dict) -> str:
    """Peak RSS in MiB, (+ the rise over the process after imports), and the GPU peak."""
    text = f"{result['rss_peak_mb']:.0f}"
    if "base_rss_mb" in result:
        text += f" (+{result['rss_peak_mb'] - result['base_rss_mb']:.0f})"
    if "anon_rise_mb" in result:
        text += f" anon +{result['anon_rise_mb']:.0f}"
    if "cuda_peak_mb" in result:
        text += f" / gpu {result['cuda_peak_mb']:.0f}"
    return text


def _dense_configs(text: str) -> list[tuple[int, int]]:
    """argparse type of --dense-configs: `NxR[,NxR...]`, or `none` for no dense rows."""
    if text.strip().lower() == "none":
        return []
    try:
        configs = [tuple(int(x) for x in c.split("x")) for c in text.split(",")]
    except ValueError:
        configs = []
    if not configs or any(len(c) != 2 or min(c) < 1 for c in configs):
        raise argparse.ArgumentTypeError(f"expected NxR[,NxR...] (e.g. 3x16,8x64) or none, got {text!r}")
    return configs


def main(argv: list[str] | None = None) -> int:
    """Build adapters, run each row in a subprocess, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="1 layer, PEFT on q_proj only, dense rows on 3 x r16 only, run once")
    parser.add_argument("--adapters", default="3,8")
    parser.add_argument("--ranks", default="16,64")
    parser.add_argument("--peft-layers", default=None,
                        help="comma list of modules for the PEFT row (default: all 7; --quick: q_proj)")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--dense-configs", type=_dense_configs, default=None,
                        help="NxR list for the ties/dare_ties rows, e.g. 3x16,8x64, or none "
                             "(default: all; --quick: 3x16)")
    parser.add_argument("--dense-repeat", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--profile", action="store_true",
                        help="also run the first linear row once under cProfile and print its top functions")
    parser.add_argument("--core-ab", action="store_true",
                        help="on cuda, also time the linear rows whose stacked rank runs its R x R steps "
                             "on the host with them on the GPU (HOST_CORE_MAX_RANK = 0), alternating")
    parser.add_argument("--tmp", default=None, help="where the synthetic adapters go")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        task = json.loads(args._worker)
        print(json.dumps(WORKERS[task["kind"]](task)))
        return 0

    layers = 1 if args.quick and args.layers == 32 else args.layers
    repeat = args.repeat or 3
    dense_repeat = args.dense_repeat
    peft_modules = (args.peft_layers or ("q_proj" if args.quick else ",".join(SHAPES))).split(",")
    counts = [int(x) for x in args.adapters.split(",")]
    ranks = [int(x) for x in args.ranks.split(",")]
    configs = [(n, r) for r in ranks for n in counts]
    if args.dense_configs is not None:
        dense_configs = args.dense_configs
    else:
        dense_configs = [(3, 16)] if args.quick else configs
    rows: list[list[str]] = []
    host_core_max_rank = 0
    if args.core_ab:
        from hub.merge.factored import HOST_CORE_MAX_RANK as host_core_max_rank
    t0 = time.perf_counter()
    print(f"merge bench: device={args.device} layers={layers} modules/layer=7 "
          f"(LLaMA-7B shapes) repeat={repeat}", flush=True)
    peft_base = None
    profile_text = None
    with tempfile.TemporaryDirectory(prefix="lorastack-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        for n, r in configs:
            srcs = [str(make_adapter(root / f"n{n}r{r}" / f"a{i}", layers, r, seed=1000 * r + i))
                    for i in range(n)]
            in_mb = sum((Path(s) / "adapter_model.safetensors").stat().st_size for s in srcs) / 2**20
            out = str(root / "out")
            base = {"sources": srcs, "device": args.device, "out": out}
            ours, floor, on_device = [], [], []
            # Above HOST_CORE_MAX_RANK both variants run the same code: no second run.
            core_ab = args.core_ab and args.device == "cuda" and n * r <= host_core_max_rank
            # Timed runs do not sample memory (reading /proc every few ms costs real time on
            # some kernels); one more run samples it for the memory column.
            memory = run_worker({**base, "kind": "merge", "method": "linear", "rank": 16})
            for _ in range(repeat):
                ours.append(run_worker({**base, "kind": "merge", "method": "linear", "rank": 16, "sample": False}))
                if core_ab:
                    on_device.append(run_worker({**base, "kind": "merge", "method": "linear", "rank": 16,
                                                 "sample": False, "host_core_max_rank": 0}))
                floor.append(run_worker({**base, "kind": "io_floor", "out": str(root / "floor.st"),
                                         "template": str(Path(out) / "adapter_model.safetensors")}))
            if args.profile and profile_text is None:
                profiled = run_worker({**base, "kind": "merge", "method": "linear", "rank": 16, "profile": True})
                profile_text = f"cProfile of linear --rank 16, {n} x r{r} ({profiled['time']:.2f} s profiled):\n"
                profile_text += profiled["profile"]
            t_ours = statistics.median(x["time"] for x in ours)
            t_floor = statistics.median(x["time"] for x in floor)
            rows.append(["linear --rank 16 (end to end)", f"{n} x r{r}", f"{t_ours:.2f}",
                         f"io floor {t_floor:.2f}", f"{t_ours / t_floor:.2f}x", fmt_mem(memory),
                         f"{ours[0]['energy_min']:.4f}", f"in {in_mb:.0f} MiB"])
            print("  " + " | ".join(rows[-1]), flush=True)
            if core_ab:
                t_dev = statistics.median(x["time"] for x in on_device)
                rows.append(["  same, R x R steps on the GPU", f"{n} x r{r}", f"{t_dev:.2f}",
                             f"io floor {t_floor:.2f}", f"{t_dev / t_floor:.2f}x", "", "",
                             f"host core {t_dev / t_ours:.2f}x faster"])
                print("  " + " | ".join(rows[-1]), flush=True)
            if (n, r) in dense_configs:
                for method in ("ties", "dare_ties"):
                    runs = [run_worker({**base, "kind": "merge", "method": method, "rank": 16,
                                        "density": args.density, "verify": "layers.0.self_attn.q_proj"})
                            for _ in range(dense_repeat)]
                    res = runs[0]
                    t_med = statistics.median(x["time"] for x in runs)
                    rows.append([f"{method} --rank 16 --density {args.density}", f"{n} x r{r}",
                                 f"{t_med:.2f}", f"{t_med / layers:.2f} s/layer", "",
                                 fmt_mem(res), f"{res['energy_min']:.4f} (median {res['energy_median']:.4f})",
                                 "svd: " + ",".join(res["svd"])
                                 + f"; q_proj error / exact SVD error = {res['error_ratio']:.4f}"])
                    print("  " + " | ".join(rows[-1]), flush=True)
            if (n, r) == (3, 16):
                peft_base = base  # PEFT's dense SVD is the slowest row: it runs last
            else:
                shutil.rmtree(root / f"n{n}r{r}")
        if peft_base is not None:
            n, r, base = 3, 16, peft_base
            note = "1 layer, all 7 modules" if len(peft_modules) == 7 else \
                f"1 layer, only {','.join(peft_modules)} (--peft-layers)"
            try:
                res = run_worker({**base, "kind": "peft", "rank": 16, "src_rank": r,
                                  "modules": peft_modules, "repeat": max(repeat, 5)})
            except RuntimeError as exc:  # PEFT missing or failing must not lose the other rows
                rows.append(["PEFT add_weighted_adapter(svd) vs ours", f"{n} x r{r}", "-", "-", "-", "-",
                             "-", f"failed: {str(exc).strip().splitlines()[-1][:80]}"])
            else:
                rows.append(["PEFT add_weighted_adapter(svd) vs ours", f"{n} x r{r}", f"{res['time']:.4f}",
                             f"peft {res['peft_time']:.2f}", f"{res['peft_time'] / res['time']:.0f}x faster",
                             fmt_mem(res), f"rel diff {res['rel_diff']:.1e}", note])
                ref = res["reference"]
                rows.append(["  vs float64 SVD truncation", f"{n} x r{r}", "", "", "", "",
                             f"ours {ref['ours_vs_f64']:.1e}, peft {ref['peft_vs_f64']:.1e}",
                             f"relative error on {ref['module']}"])
            print("  " + " | ".join(rows[-1]), flush=True)
    header = ["row", "sources", "ours (s)", "baseline", "ratio", "peak RSS MiB (+merge, anon +)", "energy kept (min)", "notes"]
    widths = [max(len(str(x[i])) for x in rows + [header]) for i in range(len(header))]
    print()
    print(f"device={args.device} layers={layers} repeat={repeat} (dense rows {dense_repeat}; medians); total bench "
          f"{time.perf_counter() - t0:.0f}s. Each row runs in a fresh process (kernels warmed up "
          f"first); io floor = read all inputs + write an output of our output's size.")
    for line in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    if profile_text:
        print()
        print(profile_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
