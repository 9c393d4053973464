"""PHM / LPHM layer micro-benchmark: materialized W vs the factored product vs a plain nn.Linear.

    python benchmarks/phm_layer.py [--device cpu|cuda] [--tokens 4096]

Forward + backward of an adapter's down-projection (d → k) and up-projection (k → d) on `tokens` input rows,
for d ∈ {384, 768, 1024}, k ∈ {d/32, d/16}, n ∈ {2, 4, 8, 12} (where n divides d and k), PHM (full-rank B_i)
and LPHM (rank 1).
Median of timed repetitions after warm-up. Writes benchmarks/results/phm_layer_<device>.md (and .json); the
rule `pelt.methods.phm.prefer_factored` uses to choose a path is fitted to these tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from pelt.methods.phm import PHMLinear, prefer_factored

RESULTS = Path(__file__).resolve().parent / "results"
DIMS = (384, 768, 1024)
NS = (2, 4, 8, 12)


def _time(module: nn.Module, x: torch.Tensor, reps: int, warmup: int) -> float:
    """Median ms of forward + backward (gradients to the layer's parameters and to its input)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + reps):
        xi = x.detach().requires_grad_(True)
        sync()
        start = time.perf_counter()
        module(xi).sum().backward()
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
        module.zero_grad(set_to_none=True)
    return statistics.median(times)


def run(device: str, tokens: int, reps: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    shapes = [(fan_in, fan_out, d, k) for d in DIMS for k in (d // 32, d // 16)
              for fan_in, fan_out in ((d, k), (k, d))]
    for fan_in, fan_out, d, k in shapes:
        x = torch.randn(tokens, fan_in, device=device)
        linear_ms = _time(nn.Linear(fan_in, fan_out).to(device), x, reps, warmup)
        for n in NS:
            if d % n or k % n:
                continue
            for rank in (None, 1):
                timings = {}
                for path in ("materialized", "factored"):
                    layer = PHMLinear(fan_in, fan_out, n, rank=rank, path=path).to(device)
                    timings[path] = _time(layer, x, reps, warmup)
                auto = "factored" if prefer_factored(fan_in, fan_out, n, rank, device) else "materialized"
                fastest = min(timings, key=timings.get)
                rows.append({
                    "d": d, "k": k, "in": fan_in, "out": fan_out, "n": n,
                    "kind": "PHM" if rank is None else "LPHM r=1",
                    "linear_ms": linear_ms, "materialized_ms": timings["materialized"],
                    "factored_ms": timings["factored"], "fastest": fastest, "auto": auto,
                    "auto_ms": timings[auto],
                })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], device: str, tokens: int) -> str:
    lines = [
        f"# PHM / LPHM layer: materialized vs factored vs nn.Linear ({device})",
        "",
        f"Forward + backward of a d → k projection on {tokens} tokens, median ms. "
        f"Machine: {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if device == "cuda" else "") + ".",
        "`auto` is the path `PHMLinear(path='auto')` takes; `auto/best` is its time over the faster path's.",
        "",
        "| in → out | n | layer | nn.Linear | materialized | factored | fastest | auto | auto/best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = min(r["materialized_ms"], r["factored_ms"])
        lines.append(
            f"| {r['in']} → {r['out']} | {r['n']} | {r['kind']} | {r['linear_ms']:.3f} | {r['materialized_ms']:.3f} "
            f"| {r['factored_ms']:.3f} | {r['fastest']} | {r['auto']} | {r['auto_ms'] / best:.2f} |"
        )
    worst = max(r["auto_ms"] / min(r["materialized_ms"], r["factored_ms"]) for r in rows)
    lines += ["", f"Worst auto/best over the grid: {worst:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=4096, help="input rows (batch × sequence length)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    rows = run(args.device, args.tokens, args.reps, args.warmup)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"phm_layer_{args.device}"
    out.with_suffix(".json").write_text(json.dumps({"device": args.device, "tokens": args.tokens,
                                                    "rows": rows}, indent=1) + "\n")
    text = table(rows, args.device, args.tokens)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
