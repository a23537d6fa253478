"""Time to validate an upload whose rank_pattern holds a hostile regex, against module names
of growing length (the names are the upload's own, up to 1024 characters).

Each row runs `hub.formats.validate_upload` in a fresh process on a small synthetic LoRA
whose modules carry a long name part, with the source tree given (`--tree`, default this
checkout), so a tree from before a change can be timed the same way:

    .venv/bin/python bench/redos.py
    .venv/bin/python bench/redos.py --tree /path/to/older/checkout --timeout 120
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = [".*.*.*.*.*=", ".*a.*b.*c.*d", "(a|a)*$", "(.*a){25}"]
LENGTHS = [100, 200, 900]

_RUN = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
from safetensors.torch import save_file
from hub.errors import HubError
from hub.formats import validate_upload
pattern, length = sys.argv[1], int(sys.argv[2])
part = ("abc" * length)[:length]
folder = Path(tempfile.mkdtemp())
tensors = {}
for proj in ("q_proj", "v_proj"):
    prefix = f"base_model.model.model.layers.0.self_attn.{part}.{proj}"
    tensors[f"{prefix}.lora_A.weight"] = torch.ones(4, 16)
    tensors[f"{prefix}.lora_B.weight"] = torch.ones(16, 4)
save_file(tensors, str(folder / "adapter_model.safetensors"))
(folder / "adapter_config.json").write_text(json.dumps({
    "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
    "rank_pattern": {pattern: 4}}))
started = time.perf_counter()
try:
    validate_upload({p.name: p for p in folder.iterdir()})
    outcome = "accepted"
except HubError as error:
    outcome = f"refused ({error.code})"
import hub
print(f"{time.perf_counter() - started:.4f} {outcome}")
assert hub.__file__.startswith(sys.argv[3]), hub.__file__
"""


def run(tree: Path, pattern: str, length: int, timeout: float) -> str:
    """One timing in a fresh process: 'seconds outcome', or a timeout note."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        # Run in the tree: `python -c` puts the working folder first on the path.
        done = subprocess.run([sys.executable, "-c", _RUN, pattern, str(length), str(tree)], env=env,
                              cwd=tree, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s (killed)"
    if done.returncode:
        return "error: " + done.stderr.strip().splitlines()[-1]
    seconds, outcome = done.stdout.split(" ", 1)
    return f"{float(seconds):.4f} s, {outcome.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    args = parser.parse_args()
    print(f"tree: {args.tree}")
    print("| pattern | name part | validate_upload |\n|---|---|---|")
    for pattern in PATTERNS:
        for length in map(int, args.lengths.split(",")):
            print(f"| `{pattern}` | {length} | {run(args.tree, pattern, length, args.timeout)} |",
                  flush=True)


if __name__ == "__main__":
    main()
