"""What the reliability checks cost: benchmarks/results/reliability.md.

On the bundled MiniLM, per method, side by side in one run (A B A B ...):

- a training step (batch 32 × 128 random tokens: forward, backward, AdamW) without and with the divergence
  guard's check (`pelt.adapter_files.non_finite_tensors` over the trained tensors, as `pelt train` runs it after every
  step up to 50M trained values);
- saving and loading the method's adapter: the SHA-256 of the weights file pelt records on save and checks on
  load, against the whole save and load.

    python benchmarks/reliability.py                 # hadamard, lora, full (about 3 minutes on 2 cores)
    python benchmarks/reliability.py --reps 3 --methods hadamard
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import pelt  # noqa: E402
from pelt.adapter_files import WEIGHTS_NAME, non_finite_tensors, read_adapter_tensors, weights_checksum  # noqa: E402
from pelt.files import write_text_atomically  # noqa: E402
from pelt.methods import make_config  # noqa: E402
from pelt.models import load_pretrained  # noqa: E402

RESULTS = Path(__file__).with_name("results") / "reliability.md"


def _seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(method: str, reps: int, batch: int, length: int) -> dict[str, float]:
    model, _ = load_pretrained(None, 2)
    pelt.apply_method(model, make_config(method), pooling="mean")
    model.train()
    trained = {n: model.get_parameter(n) for n in model.pelt_state.trainable}
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (batch, length), generator=generator),
              "attention_mask": torch.ones(batch, length, dtype=torch.long),
              "labels": torch.randint(0, 2, (batch,), generator=generator)}

    def step() -> None:
        loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    plain, guarded, checks = [], [], []
    for _ in range(reps):  # A B A B: the machine's drift hits both alike
        plain.append(_seconds(step))
        guarded.append(_seconds(lambda: (step(), non_finite_tensors(trained))))
        checks.append(statistics.median(_seconds(lambda: non_finite_tensors(trained)) for _ in range(5)))
    with tempfile.TemporaryDirectory() as folder:
        adapter = Path(folder) / "adapter"
        saves, loads, sums = [], [], []
        for _ in range(reps):
            saves.append(_seconds(lambda: pelt.save_adapter(model, adapter)))
            loads.append(_seconds(lambda: read_adapter_tensors(adapter)))
            sums.append(_seconds(lambda: weights_checksum(adapter / WEIGHTS_NAME)))
        size = (adapter / WEIGHTS_NAME).stat().st_size
    return {"values": sum(t.numel() for t in trained.values()), "step": statistics.median(plain),
            "step_guarded": statistics.median(guarded), "check": statistics.median(checks), "file_bytes": size,
            "save": statistics.median(saves), "load": statistics.median(loads), "checksum": statistics.median(sums)}


def table(rows: dict[str, dict[str, float]], batch: int, length: int) -> str:
    lines = ["| method | trained values | step (ms) | step + guard (ms) | guard check (ms) | check / step | "
             "adapter file | save (ms) | load (ms) | SHA-256 (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {r['values']:,} | {1000 * r['step']:.0f} | {1000 * r['step_guarded']:.0f} | "
                     f"{1000 * r['check']:.2f} | {100 * r['check'] / r['step']:.2f}% | "
                     f"{r['file_bytes'] / 1e6:.2f} MB | {1000 * r['save']:.1f} | {1000 * r['load']:.1f} | "
                     f"{1000 * r['checksum']:.1f} |")
    return "\n".join(lines) + f"\n\nBatch {batch} × {length} tokens; medians."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["hadamard", "lora", "full"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    rows = {}
    for method in args.methods:
        rows[method] = measure(method, args.reps, args.batch_size, args.seq_len)
        print(f"{method}: {rows[method]}", file=sys.stderr, flush=True)
    command = " ".join(["python benchmarks/reliability.py", *sys.argv[1:]])
    text = (f"# What the reliability checks cost\n\nProduced by `{command}` on {platform.machine()} "
            f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads), the bundled "
            f"MiniLM.\n\n{table(rows, args.batch_size, args.seq_len)}\n")
    write_text_atomically(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
