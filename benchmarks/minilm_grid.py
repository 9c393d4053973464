"""The MiniLM grid of the harness: every method × RTE, MRPC, STS-B, CoLA and a 2,000-example SST-2 subsample, each at
its reference learning rate and one neighbour, seed 42; then the low-resource curve on SST-2.

    python benchmarks/minilm_grid.py --data-dir ../shared/data [--part grid|lowres|bench|all|paper-grid]

Runs `pelt sweep` task by task (so each task's table completes before the next starts) and method group by
method group (the neighbour of the reference learning rate is ×10 or ÷10 per method, below), all into one grid
folder: benchmarks/results/minilm_grid/ (results.jsonl, report.md, figures; the runs' adapters and logs go to its
runs/ folder, not committed). Resumable: rerun the same command after an interruption. The low-resource curve
(full fine-tuning, Hadamard, Compacter++ on 100 ... 2,000 SST-2 sentences, the paper's epochs per size,
evaluation every 250 steps) goes to benchmarks/results/minilm_lowres/. `--part bench` (not in `all`: it needs the
cores to itself) writes the efficiency table of every method to benchmarks/results/minilm_efficiency/.

`--part paper-grid` (not in `all`: it is meant for a GPU) runs the paper's learning-rate grid instead of the
reference and one neighbour, every task in one sweep per method group, `--jobs` runs at a time, into
benchmarks/results/minilm_grid_gpu/ (or `--grid-name`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pelt.errors import EXIT_RUNS_FAILED

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]
# 3 epochs, batch 32, length-grouped batches, 6% warm-up (the protocol's 500 steps would be the whole run here);
# the bundled sentence-embedding checkpoint ships an untrained pooler, so it trains with the head; the Hadamard
# adapter's stage (a) is 1 epoch at 1e-2 (ignored by the other methods).
TRAIN_ARGS = "--epochs 3 --batch-size 32 --warmup-ratio 0.06 --train-pooler --head-epochs 1 --head-lr 1e-2"
# (methods, learning rates). The reference learning rates are the Compacter authors' (T5-base); the neighbour
# goes towards what a 22M-parameter encoder trained for 3 epochs needs: lower for full fine-tuning and for the
# methods whose reference diverged on MiniLM before (prompt tuning T, Intrinsic-SAID), higher for the rest.
GROUPS = [
    (["full"], ["ref", "ref/10"]),
    (["hadamard", "bitfit", "lora", "ia3", "adapter", "pfeiffer", "adapterdrop:drop_first=2", "compacter++",
      "compacter", "adapter-lowrank", "phm-adapter"], ["ref", "ref*10"]),
    (["prompt-tuning:init=random", "prompt-tuning:init=vocab", "intrinsic-said"], ["ref", "ref/10"]),
]
# The paper's grid, where a GPU makes it affordable: {3e-3, 3e-4, 3e-5}, 1e-3 more for the adapters, and the
# reference rate of the methods whose reference lies outside it (Hadamard, LoRA, prompt tuning, Intrinsic-SAID).
PAPER_GROUPS = [
    (["full", "bitfit", "ia3"], ["3e-3", "3e-4", "3e-5"]),
    (["hadamard", "lora", "prompt-tuning:init=random", "prompt-tuning:init=vocab", "intrinsic-said"],
     ["ref", "3e-3", "3e-4", "3e-5"]),
    (["adapter", "pfeiffer", "adapterdrop:drop_first=2", "compacter++", "compacter", "adapter-lowrank", "phm-adapter"],
     ["3e-3", "1e-3", "3e-4", "3e-5"]),
]
LOWRES = [("full", "3e-5"), ("hadamard", "5e-3"), ("compacter++", "3e-3")]
# The efficiency table: every method at the grid's shape (batch 32, length 128), frozen (head only) as a reference,
# the largest batch in 4 GiB, minutes per epoch of the 8,000-sentence SST-2 subsample the MiniLM benchmarks use.
# Prompt tuning's two initialisations cost the same, so one row stands for both.
BENCH = ["full", "frozen", "hadamard", "bitfit", "lora", "ia3", "adapter", "pfeiffer", "adapterdrop:drop_first=2",
         "compacter++", "compacter", "adapter-lowrank", "phm-adapter", "prompt-tuning", "intrinsic-said"]
BENCH_ARGS = ["--batch-size", "32", "--seq-len", "128", "--steps", "5", "--warmup", "2", "--memory-budget-mb", "4096",
              "--epoch-examples", "8000", "--train-pooler"]


def pelt(command: str, args: list[str]) -> None:
    """Run a pelt command; a sweep whose failed runs are recorded (EXIT_RUNS_FAILED) lets the next group go on,
    anything else that is not a success (bad input, Ctrl-C, a crash) ends this script with the same code."""
    cmd = [sys.executable, "-m", "pelt.cli", command, *args]
    print(f"[{command}]", " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0 and not (command == "sweep" and code == EXIT_RUNS_FAILED):
        sys.exit(code)


def sweep(args: list[str]) -> None:
    pelt("sweep", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"))
    parser.add_argument("--part", choices=["grid", "lowres", "bench", "all", "paper-grid"], default="all")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where the grid folders go (default: benchmarks/results next to this script)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (grid, paper-grid)")
    parser.add_argument("--grid-name", default="minilm_grid_gpu", help="the paper-grid's folder name")
    parser.add_argument("--device-name", default="GPU", help="named in the paper-grid report's title")
    args = parser.parse_args()
    if args.part == "bench":
        pelt("bench", ["--methods", *BENCH, *BENCH_ARGS, "--output-dir", str(args.results_dir / "minilm_efficiency")])
        return
    if not args.data_dir:
        sys.exit("pass --data-dir (a data root holding glue/) or set PELT_DATA_DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.part == "paper-grid":
        for methods, lrs in PAPER_GROUPS:
            sweep(["--grid-dir", str(args.results_dir / args.grid_name), "--methods", *methods, "--tasks", *args.tasks,
                   "--lrs", *lrs, "--seeds", "42", "--max-train-samples", "sst2=2000", "--jobs", str(args.jobs),
                   "--data-dir", args.data_dir, "--train-args", TRAIN_ARGS,
                   "--title", f"MiniLM, the paper's learning-rate grid (bundled all-MiniLM-L6-v2, {args.device_name})"])
        return
    if args.part in ("grid", "all"):
        # One at a time, task by task (each task's table completes first); with --jobs, every task in one sweep
        # per method group, so the job slots stay full.
        for tasks in ([[t] for t in args.tasks] if args.jobs == 1 else [args.tasks]):
            for methods, lrs in GROUPS:
                sweep(["--grid-dir", str(args.results_dir / "minilm_grid"), "--methods", *methods, "--tasks", *tasks,
                       "--lrs", *lrs, "--seeds", "42", "--max-train-samples", "sst2=2000", "--jobs", str(args.jobs),
                       "--data-dir", args.data_dir, "--train-args", TRAIN_ARGS,
                       "--title", "MiniLM grid: every method on GLUE (bundled all-MiniLM-L6-v2, CPU)"])
    if args.part in ("lowres", "all"):
        for method, lr in LOWRES:
            sweep(["--grid-dir", str(args.results_dir / "minilm_lowres"), "--methods", method, "--tasks", "sst2",
                   "--lrs", lr, "--seeds", "42", "--train-sizes", "100", "500", "1000", "2000", "--low-resource",
                   "--eval-steps", "250", "--data-dir", args.data_dir,
                   "--train-args", "--batch-size 32 --warmup-ratio 0.06 --train-pooler --head-epochs 1 --head-lr 1e-2",
                   "--title", "MiniLM low-resource curve on SST-2 (bundled all-MiniLM-L6-v2, CPU)"])


if __name__ == "__main__":
    main()
