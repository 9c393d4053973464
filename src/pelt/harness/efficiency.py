"""The efficiency table (the Compacter paper's Table 3): per method, % trained parameters, step time, throughput,
peak memory and the largest batch that fits a memory budget, each also relative to full fine-tuning.

Every measurement runs in a fresh process, so one method's allocations never inflate another's peak: peak RSS on
CPU (the process's, runtime included), the allocator's peak on CUDA. A step is forward + backward + AdamW step on
a fixed batch × length of random tokens (no padding, so every method sees the same shape). The largest batch
is found by measuring the peak at two batch sizes, extrapolating the straight line through them (activations
grow linearly with the batch; weights and optimizer state do not), then checking the prediction by a
measurement; one that does not fit brackets the answer, which the search narrows by regula falsi.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pelt.errors import PeltError
from pelt.harness.grid import parse_variant, variant_config, variant_label
from pelt.harness.sweep import child_dies_with_parent

__all__ = ["FROZEN", "StepMeasure", "efficiency_table", "measure_in_subprocess", "measure_step"]

FROZEN = "frozen"  # only the task head trains: no gradient enters the backbone (a reference, not a method)


@dataclass
class StepMeasure:
    variant: str
    batch_size: int
    seq_len: int
    ms_per_step: float
    examples_per_second: float
    peak_memory_mb: float
    memory_kind: str
    method_percent: float
    trained_params: int
    device: str
    threads: int


def measure_step(variant: str, model: str | None, batch_size: int, seq_len: int, steps: int = 5,
                 warmup: int = 2, *, train_pooler: bool = False, pooling: str | None = None) -> StepMeasure:
    """Time `steps` training steps of `variant` (after `warmup`) in this process; median time, peak memory.
    `train_pooler` trains BERT's pooler with the head, `pooling` replaces it (as the `pelt train` flags)."""
    import torch

    import pelt
    from pelt.models import is_seq2seq, load_config, load_pretrained
    from pelt.train.memory import PeakMemory

    seq2seq = is_seq2seq(load_config(model))
    torch.manual_seed(0)
    base, tokenizer = load_pretrained(model, 2, kind="text-to-text" if seq2seq else "sequence-classification")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base.to(device)
    if variant == FROZEN:
        pelt.apply_method(base, pelt.make_config("full"), train_pooler=train_pooler, pooling=pooling)
        pelt.set_trainable(base, method=False, head=True)
    else:
        method, options = parse_variant(variant)
        pelt.apply_method(base, variant_config(method, options), train_pooler=train_pooler, pooling=pooling)
    report = pelt.parameter_report(base)
    base.train()
    low = min(1000, tokenizer.vocab_size - 1)
    batch = {"input_ids": torch.randint(low, tokenizer.vocab_size, (batch_size, seq_len), device=device),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device)}
    batch["labels"] = (torch.randint(low, tokenizer.vocab_size, (batch_size, 4), device=device) if seq2seq
                       else torch.randint(0, 2, (batch_size,), device=device))
    trainable = [p for p in base.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        base(**batch).loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    seconds = []
    with PeakMemory() as memory:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return StepMeasure(variant, batch_size, seq_len, round(1000 * median, 1), round(batch_size / median, 1),
                       memory.peak_mb or 0.0, memory.kind,
                       0.0 if variant == FROZEN else report.percent(report.method_total),
                       sum(p.numel() for p in trainable), device, torch.get_num_threads())


def measure_in_subprocess(variant: str, model: str | None, batch_size: int, seq_len: int, steps: int,
                          warmup: int, *, train_pooler: bool = False, pooling: str | None = None) -> StepMeasure:
    """`measure_step` in a fresh Python process: a clean peak, and an out-of-memory kill stays contained."""
    cmd = [sys.executable, "-m", "pelt.harness.efficiency", "--variant", variant, "--batch-size", str(batch_size),
           "--seq-len", str(seq_len), "--steps", str(steps), "--warmup", str(warmup)]
    if model:
        cmd += ["--model", str(model)]
    if train_pooler:
        cmd.append("--train-pooler")
    if pooling:
        cmd += ["--pooling", pooling]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=child_dies_with_parent())
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit code {done.returncode}"]
        raise PeltError(f"measuring {variant} at batch {batch_size} failed: {lines[-1][:300]}")
    return StepMeasure(**json.loads(done.stdout.strip().splitlines()[-1]))


def largest_batch(first: StepMeasure, second: StepMeasure, budget_mb: float, measure: Any,
                  max_batch: int = 4096, attempts: int = 8) -> tuple[int, float]:
    """The largest batch (up to `max_batch`) found to fit `budget_mb` (0 if none does), and its measured peak.

    The first guess extrapolates the line through the two measured points. A guess that does not fit brackets the
    answer with the largest batch known to fit, and the next guess is the line through those two (regula falsi),
    so a peak that grows faster or slower than the first line predicts is still found in a few measurements."""
    fits = [(m.batch_size, m.peak_memory_mb) for m in (first, second) if m.peak_memory_mb <= budget_mb]
    low, low_peak = max(fits) if fits else (0, math.nan)
    high: tuple[int, float] | None = None  # the smallest batch measured not to fit
    (b1, p1), (b2, p2) = sorted([(first.batch_size, first.peak_memory_mb), (second.batch_size, second.peak_memory_mb)])
    slope = (p2 - p1) / (b2 - b1) if b2 != b1 else 0.0
    guess = min(int(b1 + (budget_mb - p1) / slope) if 0 < slope < math.inf else max_batch, max_batch)
    if not math.isfinite(p2):  # the larger batch could not run at all (out of memory): halve the bracket
        high = (b1, p1) if p1 > budget_mb else (b2, p2)
        guess = (low + high[0]) // 2
    for _ in range(attempts):
        if guess <= low or (high is not None and guess >= high[0]):
            break
        peak = measure(guess).peak_memory_mb
        if peak <= budget_mb:
            low, low_peak = guess, peak
            if high is None:
                break  # the line's prediction fits: take it
        else:
            high = (guess, peak)
        if high is None:
            break
        if high[0] - low <= max(1, low // 50):  # the bracket is within 2%: close enough
            break
        base_peak = low_peak if low else 0.0
        step = (high[1] - base_peak) / (high[0] - low) if high[0] > low else 0.0
        # a batch that could not run at all (out of memory) has no peak to draw a line through: halve the bracket
        guess = low + int((budget_mb - base_peak) / step) if 0 < step < math.inf else (low + high[0]) // 2
        guess = max(low + 1, min(guess, high[0] - 1))
        if low and guess - low < max(1, low // 50):  # the line says the budget is all but used: stop
            break
    return low, low_peak


def efficiency_table(variants: list[str], model: str | None, *, batch_size: int = 32, seq_len: int = 128,
                     steps: int = 5, warmup: int = 2, memory_budget_mb: float | None = None,
                     epoch_examples: int | None = None, train_pooler: bool = False, pooling: str | None = None,
                     log: Any = print, on_row: Any = None) -> list[dict[str, Any]]:
    """One row per variant (measured in its own processes), with ratios to full fine-tuning when it is listed.
    `on_row(rows)` is called after each method with the rows so far, so that a long bench stopped half-way
    keeps what it measured."""
    if pooling is not None and train_pooler:
        raise PeltError(f"--train-pooler trains BERT's pooler and --pooling {pooling} removes it; pick one")
    for name, value, least in (("batch size", batch_size, 1), ("sequence length", seq_len, 1), ("steps", steps, 1),
                               ("warm-up steps", warmup, 0), ("examples per epoch", epoch_examples, 1)):
        if value is not None and value < least:
            raise PeltError(f"the {name} must be at least {least}, got {value}")
    if memory_budget_mb is not None and not (0 < memory_budget_mb < math.inf):
        raise PeltError(f"the memory budget must be a positive number of MB, got {memory_budget_mb}")
    variants = [v if v == FROZEN else variant_label(v) for v in variants]  # `Full` is full: the ratios find it
    for variant in variants:
        if variant != FROZEN:
            parse_variant(variant)  # fail on a bad name before measuring anything
    rows: list[dict[str, Any]] = []
    for variant in variants:
        log(f"measuring {variant} at batch {batch_size} x {seq_len}")
        main = measure_in_subprocess(variant, model, batch_size, seq_len, steps, warmup, train_pooler=train_pooler,
                                     pooling=pooling)
        row: dict[str, Any] = asdict(main)
        if epoch_examples:
            row["epoch_minutes"] = round(main.ms_per_step * math.ceil(epoch_examples / batch_size) / 60000, 2)
        if memory_budget_mb:
            def measure(b: int) -> StepMeasure:
                # one step after one warm-up step: the optimizer's state exists by then, as in every later step
                log(f"  {variant}: peak at batch {b}")
                try:
                    return measure_in_subprocess(variant, model, b, seq_len, 1, 1, train_pooler=train_pooler,
                                                 pooling=pooling)
                except PeltError as error:  # e.g. out of memory: the search is looking for where that starts
                    log(f"  {variant}: batch {b} did not run ({error}); counted as not fitting")
                    return dataclasses.replace(main, batch_size=b, peak_memory_mb=math.inf)
            second = measure(2 * batch_size)
            largest, peak = largest_batch(main, second, memory_budget_mb, measure)
            row["largest_batch"], row["largest_batch_peak_mb"] = largest, peak if math.isfinite(peak) else None
        rows.append(row)
        _ratios_to_full(rows)
        if on_row is not None:
            on_row(rows)
    return rows


def _ratios_to_full(rows: list[dict[str, Any]]) -> None:
    full = next((r for r in rows if r["variant"] == "full"), None)
    for row in rows:
        for key in ("ms_per_step", "peak_memory_mb", "examples_per_second", "largest_batch"):
            if full and key in row and full.get(key):
                row[f"{key}_vs_full"] = round(row[key] / full[key], 3)


def save_efficiency(folder: str | os.PathLike, rows: list[dict[str, Any]], *, command: str, methods: int,
                    table: Callable[[list[dict[str, Any]]], str]) -> None:
    """efficiency.md and efficiency.json, rewritten after each method, so that a bench stopped half-way keeps
    what it measured (the table says how many of `methods` it holds)."""
    from pelt.files import strict_json, write_text_atomically

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    partial = "" if len(rows) == methods else f"Partial: {len(rows)} of {methods} methods measured so far.\n\n"
    write_text_atomically(out / "efficiency.md", f"Produced by `{command}`.\n\n{partial}{table(rows)}")
    write_text_atomically(out / "efficiency.json", strict_json(rows, indent=2) + "\n")


def markdown(rows: list[dict[str, Any]], *, memory_budget_mb: float | None, epoch_examples: int | None) -> str:
    shape = f"batch {rows[0]['batch_size']} × length {rows[0]['seq_len']}" if rows else ""
    header = ["method", "% trained", "ms/step", "vs full", "examples/s", "peak MB", "vs full"]
    if epoch_examples:
        header.append(f"epoch of {epoch_examples:,} (min)")
    if memory_budget_mb:
        header += [f"largest batch in {memory_budget_mb:g} MB", "vs full"]
    lines = [f"Steps at {shape} (forward + backward + AdamW), median; peak memory: "
             f"{rows[0]['memory_kind'] if rows else ''} on {rows[0]['device'] if rows else ''}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratio = lambda row, key: f"{row[key]:.2f}×" if key in row else "–"  # noqa: E731
    for row in rows:
        cells = [row["variant"], f"{row['method_percent']:.4f}", f"{row['ms_per_step']:.0f}",
                 ratio(row, "ms_per_step_vs_full"), f"{row['examples_per_second']:.1f}",
                 f"{row['peak_memory_mb']:.0f}", ratio(row, "peak_memory_mb_vs_full")]
        if epoch_examples:
            cells.append(f"{row['epoch_minutes']:.1f}")
        if memory_budget_mb:
            cells += [str(row["largest_batch"]), ratio(row, "largest_batch_vs_full")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _worker() -> None:
    parser = argparse.ArgumentParser(description="one efficiency measurement (run by pelt bench)")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-pooler", action="store_true")
    parser.add_argument("--pooling", choices=["cls", "mean"], default=None)
    args = parser.parse_args()
    measured = measure_step(args.variant, args.model, args.batch_size, args.seq_len, args.steps, args.warmup,
                            train_pooler=args.train_pooler, pooling=args.pooling)
    print(json.dumps(asdict(measured)))


if __name__ == "__main__":
    _worker()
