"""`lorastack merge-local`: the offline merge command (torch loads only when it runs)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import click

from hub.cli import provenance
from hub.cli.errors import describe, OneLineCommand
from hub.cli.progress import duration as _duration
from hub.cli.refs import split_weight
from hub.errors import HubError, InvalidMerge
from hub.merge.spec import ALIASES, DEVICES, DTYPES, METHODS, OUTPUTS, SIGN_METHODS, MergeSpec, SourceSpec


def parse_source(arg: str) -> SourceSpec:
    """DIR[:WEIGHT]: split on the last ':' only when the tail parses as a float; weights must be finite."""
    path, weight = split_weight(arg)
    if weight is None:
        # "C:\\x" or "dir:name": the colon belongs to the path, unless no such path exists
        # while the part before the colon does: then the tail is a mistyped weight.
        head, sep, tail = arg.rpartition(":")
        if sep and head and not Path(arg).exists() and Path(head).is_dir():
            raise InvalidMerge(f"weight for {head} is not a number: {tail!r}")
        path, weight = arg, 1.0
    if not path:
        raise InvalidMerge(f"no adapter folder in {arg!r}")
    return SourceSpec(Path(path), weight)


class _Progress:
    """Redraw a percentage on stderr when it is a terminal, and from a few seconds in, the time
    left (a CPU merge of the dense methods takes minutes); silent otherwise."""

    def __init__(self, enabled: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.clock = clock
        self.started = clock()
        self.last = -1
        self.width = 0

    def __call__(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if not self.enabled or percent == self.last:
            return
        self.last = percent
        text = f"merging... {percent:3d}%"
        elapsed = self.clock() - self.started
        if 0.01 <= fraction < 1 and elapsed >= 3:
            text += f", about {_duration(elapsed * (1 - fraction) / fraction)} left"
        # Pad over what the previous, longer line left behind.
        click.echo("\r" + text.ljust(self.width), err=True, nl=percent >= 100)
        self.width = len(text)


@click.command("merge-local", cls=OneLineCommand, short_help="Merge adapter folders offline.")
@click.argument("sources", nargs=-1, required=True, metavar="DIR[:WEIGHT]...")
@click.option("--method", default="linear", show_default=True,
              help=f"One of {', '.join(METHODS)}; PEFT's {', '.join(ALIASES)} are aliases.")
@click.option("--rank", type=int, default=None,
              help="Target rank (best rank-N approximation); linear without it is exact.")
@click.option("--density", type=float, default=None,
              help="Fraction of each update kept by ties / dare / magnitude_prune, in (0, 1].")
@click.option("--majority-sign-method", type=click.Choice(SIGN_METHODS), default="total",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for DARE's drops.")
@click.option("--output", "output_kind", type=click.Choice(OUTPUTS), default="lora", show_default=True,
              help="lora: a PEFT adapter folder; delta: delta.safetensors keyed by base weight names.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Output dtype (default: the sources' dtype); computation is float32 or better.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder (must not exist, or be empty).")
def merge_local(sources: tuple[str, ...], method: str, rank: int | None, density: float | None,
                majority_sign_method: str, seed: int, output_kind: str, dtype: str | None,
                device: str, out_dir: Path) -> None:
    """Merge LoRA adapter folders DIR[:WEIGHT] (weight 1 by default; negative subtracts)."""
    try:
        specs = [parse_source(arg) for arg in sources]
        spec = MergeSpec(method=method, rank=rank, density=density,
                         majority_sign_method=majority_sign_method, seed=seed,
                         output=output_kind, dtype=dtype, device=device).validate()
        infos, derived = _source_licenses(specs)
        from hub.merge.engine import merge_to_folder  # torch loads here, not at CLI start

        report = merge_to_folder(specs, spec, out_dir, progress=_Progress())
        provenance.annotate_report(out_dir, infos, derived)
    except HubError as exc:
        raise click.ClickException(describe(exc)) from None
    except MemoryError:
        raise click.ClickException("out of memory while merging; try --device cuda or fewer sources") from None
    except Exception as exc:  # one line, never a traceback, for anything unforeseen
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"merge failed: {message}") from None
    modules = report["modules"]
    ranks = sorted({m["rank"] for m in modules if m["rank"] is not None})
    kept = report["energy_kept_min"]
    click.echo(f"merged {len(report['sources'])} adapters ({report['canonical_method']}) into "
               f"{out_dir}: {len(modules)} modules"
               + (f", rank {ranks[0]}" if len(ranks) == 1 else
                  f", ranks {ranks[0]}-{ranks[-1]}" if ranks else "")
               + (f", energy kept >= {kept:.4f}" if kept is not None else "")
               + f", {report['elapsed_s']:.2f}s on {report['device']}")
    click.echo(provenance.describe_license(derived, infos))


def _source_licenses(specs: list[SourceSpec]):
    """Each source's licence (a pulled folder's provenance first) and the merge's, warning
    about a provenance file that no longer matches its folder."""
    infos, warnings = provenance.read_sources([spec.path for spec in specs])
    for warning in warnings:
        click.echo(f"Warning: {warning}", err=True)
    return infos, provenance.derive_merged_license(infos)
