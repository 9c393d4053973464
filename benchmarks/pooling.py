"""What the pooler costs on the bundled MiniLM: BERT's pooler trained with the head (`--train-pooler`, what the MiniLM
grid does, as the checkpoint ships it untrained) against no pooler at all (`--pooling cls`, `--pooling mean`).

    python benchmarks/pooling.py --data-dir ../shared/data [--methods hadamard compacter++] [--tasks sst2 mrpc rte]

The pooler is 147,840 of the 148,610 head parameters a MiniLM task stores; without it a Hadamard task stores
~10k. Each pooling is a resumable `pelt sweep` (the grid's settings: 3 epochs, batch 32, 6% warm-up, Hadamard after
one head epoch, the method's reference learning rate and ×10, picked on validation) into
benchmarks/results/minilm_pooling/<pooling>/; the comparison goes to benchmarks/results/minilm_pooling/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pelt.errors import EXIT_RUNS_FAILED
from pelt.harness import read_records, select_best

RESULTS = Path(__file__).resolve().parent / "results" / "minilm_pooling"
BASE_ARGS = "--epochs 3 --batch-size 32 --warmup-ratio 0.06 --head-epochs 1 --head-lr 1e-2"
POOLINGS = {"train-pooler": "--train-pooler", "cls": "--pooling cls", "mean": "--pooling mean"}


def comparison(folder: Path) -> str:
    rows = []
    for name in POOLINGS:
        results = folder / name / "results.jsonl"
        records = read_records(results) if results.exists() else []
        by_key = {(r["variant"], r["task"], r["learning_rate"]): r for r in records if r.get("status") == "ok"}
        for pick in sorted(select_best(records), key=lambda s: (s.variant, s.task)):
            run = by_key[(pick.variant, pick.task, pick.learning_rate)]
            stored = run["parameters"]["method_total"] + run["parameters"]["head"]
            rows.append(f"| {pick.task} | {pick.variant} | {name} | {pick.learning_rate:g} | "
                        f"{100 * pick.validation:.1f} | {100 * pick.test[pick.main_metric]:.1f} | {stored:,} | "
                        f"{run['train_seconds']:.0f} |")
    rows.sort()
    return "\n".join([
        "# Pooler or none: MiniLM tasks (bundled all-MiniLM-L6-v2, CPU)", "",
        "Produced by `python benchmarks/pooling.py`. `train-pooler` trains BERT's pooler (dense + tanh on [CLS]) with",
        "the head; `cls` and `mean` replace it by the [CLS] state or the mean of the tokens' states, so a task stores",
        "only its classifier. Learning rate picked on validation among the method's reference and ×10; scores ×100,",
        "main metric, split protocol `compacter` (validation picks, test reports); SST-2 is a 2,000-sentence",
        "subsample; seed 42.", "",
        "| task | method | pooling | lr | validation | test | stored params per task | train s |",
        "|---|---|---|---|---|---|---|---|",
        *rows, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"))
    parser.add_argument("--methods", nargs="+", default=["hadamard"])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md from the runs so far")
    args = parser.parse_args()
    if not args.report_only:
        if not args.data_dir:
            sys.exit("pass --data-dir (a data root holding glue/) or set PELT_DATA_DIR")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for name, flag in POOLINGS.items():
            cmd = [sys.executable, "-m", "pelt.cli", "sweep", "--grid-dir", str(args.results_dir / name),
                   "--methods", *args.methods, "--tasks", *args.tasks, "--lrs", "ref", "ref*10", "--seeds", "42",
                   "--max-train-samples", "sst2=2000", "--data-dir", args.data_dir,
                   "--train-args", f"{BASE_ARGS} {flag}", "--title", f"MiniLM, pooling: {name}"]
            print("[sweep]", " ".join(cmd), flush=True)
            code = subprocess.run(cmd).returncode
            if code not in (0, EXIT_RUNS_FAILED):  # failed runs are recorded and shown; anything else stops here
                sys.exit(code)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "README.md").write_text(comparison(args.results_dir))
    print((args.results_dir / "README.md").read_text())


if __name__ == "__main__":
    main()
