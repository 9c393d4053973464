"""The Hadamard paper's analyses on the bundled MiniLM: RTE, SST-2 (8,000-sentence subsample) and MRPC.

    python benchmarks/hadamard_analysis.py --data-dir ../shared/data [--part all|reference|attention|layers|modules|shared]

Into benchmarks/results/analysis/<task>/ (the runs' adapters and logs go to runs/ folders, not committed):
- reference: full fine-tuning of each task (learning rate 5e-5), the "after" of Fig. 1 and Fig. 2;
- attention: `pelt analyze norms` (Fig. 1) and `pelt analyze fit`, independent and sequential fits (Fig. 2);
- layers: `pelt analyze layers`, the adapter on the top / bottom k of the 6 layers (Fig. 4);
- modules: `pelt analyze modules`, W, b, LN and their combinations on all layers for every task, and W, b, LN,
  W+b+LN on each layer alone for SST-2, whose 1,000 validation and 872 test sentences separate what RTE's
  138 / 139 cannot (Fig. 5); those 24 per-layer runs train on a 2,000-sentence subsample to fit in CPU hours;
- shared: one adapter for the three tasks against one per task, and their similarity, in analysis/shared/.

Every part is resumable: rerun the same command after an interruption (a finished norms or fit report is kept;
delete it to recompute). The Hadamard runs use the learning rate that did best on MiniLM in
benchmarks/results/minilm_glue.md (1e-2) and the grid's settings: 3 epochs after one head epoch, batch 32, 6%
warm-up, the compacter split protocol (validation picks the epoch, test reports it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "analysis"
TASKS = ["rte", "sst2", "mrpc"]
SUBSAMPLE = {"sst2": 8000}
HADAMARD_LR = "1e-2"
FULL_LR = "5e-5"
TRAIN_ARGS = "--epochs 3 --batch-size 32 --warmup-ratio 0.06 --train-pooler --head-epochs 1 --head-lr 1e-2"
PER_LAYER_TASK = "sst2"
PER_LAYER_SETS = ["W", "b", "LN", "W+b+LN"]
PER_LAYER_SAMPLES = 2000


def pelt(*args: str) -> None:
    cmd = [sys.executable, "-m", "pelt.cli", *args]
    print("[pelt]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def reference(task: str, data_dir: str, out: Path) -> Path:
    folder = out / "runs" / f"{task}-full"
    if not (folder / "results.json").is_file():
        size = ["--max-train-samples", str(SUBSAMPLE[task])] if task in SUBSAMPLE else []
        pelt("train", "--task", task, "--method", "full", "--lr", FULL_LR, "--data-dir", data_dir,
             "--output-dir", str(folder), "--overwrite", "--split-protocol", "compacter", *size, *TRAIN_ARGS.split())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("PELT_DATA_DIR"))
    parser.add_argument("--part", choices=["all", "reference", "attention", "layers", "modules", "shared"],
                        default="all")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("pass --data-dir (a data root holding glue/) or set PELT_DATA_DIR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = ["reference", "attention", "layers", "modules", "shared"] if args.part == "all" else [args.part]
    root: Path = args.results_dir
    grid = ["--lr", HADAMARD_LR, "--split-protocol", "compacter", "--data-dir", args.data_dir,
            "--train-args", TRAIN_ARGS]
    if "reference" in parts or "attention" in parts:
        for task in args.tasks:
            full = reference(task, args.data_dir, root)
            if "attention" in parts:
                out = str(root / task)
                if not (root / task / "attention_norms.json").is_file():
                    pelt("analyze", "norms", "--finetuned", str(full / "adapter"), "--data-dir", args.data_dir,
                         "--output-dir", out)
                for chained, report in (([], "fitting.json"), (["--sequential"], "fitting_sequential.json")):
                    if (root / task / report).is_file():
                        continue
                    pelt("analyze", "fit", "--finetuned", str(full / "adapter"), "--data-dir", args.data_dir,
                         "--output-dir", out, *chained)
    for kind in ("layers", "modules"):
        if kind not in parts:
            continue
        for task in args.tasks:
            size = ["--max-train-samples", str(SUBSAMPLE[task])] if task in SUBSAMPLE else []
            extra = [] if kind == "layers" else ["--per-layer", "none"]
            pelt("analyze", kind, "--task", task, "--output-dir", str(root / task), *size, *grid, *extra,
                 "--reference", str(reference(task, args.data_dir, root)))
        if kind == "modules" and PER_LAYER_TASK in args.tasks:
            task = PER_LAYER_TASK  # the same grid folder as its other runs (shared runs train once), report apart
            pelt("analyze", "modules", "--task", task, "--output-dir", str(root / task), "--module-sets",
                 *PER_LAYER_SETS, "--per-layer", "all", "--max-train-samples", str(PER_LAYER_SAMPLES), *grid,
                 "--reference", str(reference(task, args.data_dir, root)),
                 "--report-dir", str(root / task / "per_layer"))
    if "shared" in parts:
        sizes = [f"{t}={n}" for t, n in SUBSAMPLE.items() if t in args.tasks]
        pelt("analyze", "shared", "--tasks", *args.tasks, "--output-dir", str(root / "shared"),
             "--data-dir", args.data_dir, "--split-protocol", "compacter",
             *(["--max-train-samples", *sizes] if sizes else []), "--train-args", f"{TRAIN_ARGS} --lr {HADAMARD_LR}")


if __name__ == "__main__":
    main()
