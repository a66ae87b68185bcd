"""What a layer keeps for backward, tensor by tensor: shape, dtype, MB and the autograd nodes that
saved it (a storage saved by two nodes is listed, and counted, once).

    python benchmarks/saved_tensors.py                           # AttentionRNN bi at 100², fp32
    python benchmarks/saved_tensors.py --size 28 --precision bf16 --layer local

The total is what ``bench_layers.saved_bytes`` reports (the distinct storages autograd saves, plus
the output's): batch 32, 32 channels, hidden 16 as in bench_layers.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layers import CHANNELS, CONTENDERS, saved_bytes  # noqa: E402

LAYERS = {
    "arnn": "AttentionRNN bi",
    "local": "local 3x3 conv",
    "ind": "arnn_ind (no recurrence)",
    "bptt": "AttentionRNN bi, PyTorch BPTT",
    "block": "BlockAttentionRNN g=2",
}


def saved_by_node(out: torch.Tensor) -> dict[int, dict]:
    """Storage pointer -> {"tensor", "nbytes", "nodes"} for every tensor the graph of ``out``
    keeps (built-in nodes' ``_saved_*`` attributes and custom Functions' ``saved_tensors``)."""
    found: dict[int, dict] = {}

    def note(t: object, node: str) -> None:
        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        entry = found.setdefault(
            storage.data_ptr(), {"tensor": t, "nbytes": storage.nbytes(), "nodes": []}
        )
        entry["nodes"].append(node)

    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        name = type(fn).__name__
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                value = getattr(fn, attr)
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    note(t, f"{name}.{attr[len('_saved_') :]}")
        if hasattr(fn, "saved_tensors") and not name.endswith("Backward0"):
            for k, t in enumerate(fn.saved_tensors):
                note(t, f"{name}[{k}]")
        stack.extend(f for f, _ in fn.next_functions)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", choices=list(LAYERS), default="arnn")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = CONTENDERS[LAYERS[args.layer]]()
    x = torch.randn(args.batch, CHANNELS, args.size, args.size, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        out = layer(x)
        total = saved_bytes(layer, x)
    found = saved_by_node(out)
    found.setdefault(
        out.untyped_storage().data_ptr(),
        {"tensor": out, "nbytes": out.untyped_storage().nbytes(), "nodes": ["(the output)"]},
    )
    print(f"{LAYERS[args.layer]}, {args.size}², batch {args.batch}, {args.precision}")
    print("| MB | shape | dtype | saved by |\n|---:|---|---|---|")
    listed = 0
    for entry in sorted(found.values(), key=lambda e: -e["nbytes"]):
        t, mb = entry["tensor"], entry["nbytes"] / 2**20
        listed += entry["nbytes"]
        if mb >= 0.05:
            shape = "×".join(map(str, t.shape))
            dtype = str(t.dtype).replace("torch.", "")
            print(f"| {mb:.1f} | {shape} | {dtype} | {', '.join(entry['nodes'])} |")
    print(f"listed {listed / 2**20:.1f} MB; saved_bytes (bench_layers) {total / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
