"""Mixed-task inference on one backbone: benchmarks/results/multitask.md.

On the bundled MiniLM, a batch of 64 examples (SST-2 dev sentences, padded to the batch's longest, and random
length-128 inputs), with 256 tasks of one method loaded (adapters moved away from their init, so nothing is an
identity) and T = 1, 8 or 64 distinct tasks in the batch. Per method, side by side in one run (A B A B ...):

- `alone`: the batch on one task's adapter loaded alone (`pelt.load_adapter`-style model, the plain path);
- `T=1`, `T=8`, `T=64`: the multi-task model, the batch's rows spread over T tasks;
- `grouped`: what users do today, the batch split by task (T=64) and each group run as a single-task batch with
  its adapter (on the multi-task model, one task per call, which costs what the adapter alone does: `T=1`);
- `peft` (LoRA, when peft is installed): the same LoRA weights as peft adapters, peft's own mixed batch
  (`adapter_names=`), at T = 8 and 64.

Then the memory a task adds (the bytes the model holds for it, and the process's resident memory over adding
all 256, against the adapter's own tensor bytes), and one task merged into the backbone against the bare
backbone with the same head.

    python benchmarks/multitask.py --data-dir ../shared/data          # every method (about 40 minutes on 2 cores)
    python benchmarks/multitask.py --methods hadamard lora --reps 3   # a quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import pelt  # noqa: E402
from pelt.methods import get_method, list_methods  # noqa: E402
from pelt.models import load_backbone, load_pretrained  # noqa: E402
from pelt.multitask import MultiTaskModel  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "multitask.md"
METHODS = [m for m in list_methods() if not get_method(m).sharing_refusal]  # full and intrinsic-said cannot share
ELEMENT_WISE = {"hadamard", "ia3", "bitfit"}
TARGET = {m: 0.95 if m in ELEMENT_WISE else 0.85 for m in METHODS}  # T=64 against the adapter alone
OPTIONS = {"prompt-tuning": {"num_tokens": 20}}  # 100 prompt tokens would dominate SST-2-length batches


def sst2_sentences(data_dir: Path | None, count: int) -> list[str]:
    path = data_dir / "glue" / "SST-2" / "dev.tsv" if data_dir else None
    if path is None or not path.is_file():
        raise SystemExit(f"SST-2's dev.tsv not found under {data_dir}; pass --data-dir (the folder holding glue/)")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:count]]


def batches(tokenizer: Any, sentences: list[str], batch: int) -> dict[str, dict[str, torch.Tensor]]:
    sst2 = tokenizer(sentences[:batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch, 128), generator=g)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    long = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {f"SST-2 (padded to {sst2['input_ids'].shape[1]})": dict(sst2), "length 128": long}


def perturbed(model: torch.nn.Module, seed: int) -> None:
    """Move every trained tensor away from its init (as training would), differently per task."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.pelt_state.trainable:
            p = model.get_parameter(name)
            p.add_(0.02 * torch.randn(p.shape, generator=g))


def rss_mb() -> float:
    """Resident memory, after handing freed heap pages back (growing a bank frees its previous, smaller copy;
    without the trim the allocator keeps those pages and the figure counts them)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds of each run, measured A B C A B C ... after one warm-up round."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            seconds[name].append(timed(run))
    return {name: statistics.median(values) for name, values in seconds.items()}


def peft_model(base_name: str | None, config: Any, state_names: list[dict[str, torch.Tensor]]) -> Any:
    """The same LoRA weights as peft adapters on one model (peft's names: base_model.model.<path>.lora_A.<name>)."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_pretrained(base_name, 2)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=["query", "value"], lora_dropout=0.0)
    model = get_peft_model(base, lora, adapter_name="t0")
    for i in range(1, len(state_names)):
        model.add_adapter(f"t{i}", lora)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for i, tensors in enumerate(state_names):
            for name, value in tensors.items():
                path = name.rsplit(".", 1)[0]
                part = "lora_A" if name.endswith("lora_A") else "lora_B"
                params[f"base_model.model.{path}.{part}.t{i}.weight"].copy_(value)
    return model.eval()


def measure_method(method: str, args: argparse.Namespace, inputs: dict[str, dict[str, torch.Tensor]]) -> dict:
    torch.manual_seed(0)
    single, tokenizer = load_pretrained(args.model, 2)
    pelt.apply_method(single, pelt.make_config(method, **OPTIONS.get(method, {})), pooling="mean")
    single.eval()
    backbone, _ = load_backbone(args.model)
    mt = MultiTaskModel(backbone, tokenizer)
    before_bytes = mt.stored_bytes()
    own = sum(p.nbytes for n, p in single.named_parameters() if n in single.pelt_state.trainable)
    lora_tensors = []
    quarter, quarter_rss = args.tasks // 4, 0.0
    started = time.perf_counter()
    for i in range(args.tasks):
        if i == quarter:  # from here on, each task's own memory: the first ones also pay one-time structures
            quarter_rss = rss_mb()
        perturbed(single, seed=i)
        mt.add_task(f"t{i}", single)
        if method == "lora" and i < 64:
            lora_tensors.append({n: single.get_parameter(n).detach().clone() for n in single.pelt_state.added})
    add_seconds = (time.perf_counter() - started) / args.tasks
    memory = {"own_bytes": own, "held_per_task": (mt.stored_bytes() - before_bytes) / args.tasks,
              "rss_per_task": (rss_mb() - quarter_rss) * 2**20 / (args.tasks - quarter), "add_ms": 1000 * add_seconds}
    # `single` now holds the last task's weights: the plain path's reference
    rows: dict[str, dict[str, float]] = {}
    peft = None
    if method == "lora" and args.peft:
        try:
            peft = peft_model(args.model, single.pelt_state.config, lora_tensors)
        except ImportError:
            print("peft is not installed (pip install peft): its columns stay empty", file=sys.stderr)
    for label, batch in inputs.items():
        n = batch["input_ids"].shape[0]
        row_tasks = {t: [f"t{i % t}" for i in range(n)] for t in (8, 64)}  # peft holds t0 ... t63 as well
        row_tasks[1] = [f"t{args.tasks - 1}"] * n  # the task `single` holds

        def groups() -> None:
            for name in dict.fromkeys(row_tasks[64]):
                index = [i for i, t in enumerate(row_tasks[64]) if t == name]
                group = {k: v[index] for k, v in batch.items()}
                width = int(group["attention_mask"].sum(1).max())
                mt(**{k: v[:, :width] for k, v in group.items()}, tasks=name)

        runs: dict[str, Callable[[], Any]] = {"alone": lambda: single(**batch)}
        runs.update({f"T={t}": (lambda t=t: mt(**batch, tasks=row_tasks[t])) for t in (1, 8, 64)})
        runs["grouped"] = groups
        if peft is not None:
            runs.update({f"peft T={t}": (lambda t=t: peft(**batch, adapter_names=row_tasks[t])) for t in (8, 64)})
        with torch.inference_mode():
            rows[label] = {k: n / v for k, v in interleaved(runs, args.reps).items()}  # examples per second
    return {"method": method, "memory": memory, "throughput": rows}


def measure_merged(args: argparse.Namespace, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """One Hadamard task merged into the backbone, against the bare backbone with the same head."""
    torch.manual_seed(0)
    plain, tokenizer = load_pretrained(args.model, 2)
    pelt.apply_method(plain, pelt.make_config("hadamard"), pooling="mean")
    perturbed(plain, seed=0)
    plain.eval()
    backbone, _ = load_backbone(args.model)
    mt = MultiTaskModel(backbone, tokenizer)
    mt.add_task("task", plain)
    mt.merge("task")
    bare, _ = load_pretrained(args.model, 2)
    pelt.apply_method(bare, pelt.make_config("bitfit"), pooling="mean")  # biases untouched: the bare backbone
    bare.eval()
    with torch.inference_mode():
        seconds = interleaved({"bare": lambda: bare(**batch), "merged": lambda: mt(**batch, tasks="task"),
                               "unmerged alone": lambda: plain(**batch)}, args.reps * 8)
    return seconds


def ratio(value: float | None, reference: float | None) -> str:
    return "–" if value is None or reference is None else f"{value / reference:.2f}×"


def report(results: list[dict], merged: dict[str, float] | None, args: argparse.Namespace) -> str:
    lines = [
        "# Mixed-task inference on one backbone",
        "",
        f"Produced by `python benchmarks/multitask.py {' '.join(args.argv)}` on {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}: the bundled all-MiniLM-L6-v2, batch "
        f"{args.batch}, {args.tasks} tasks of the method loaded (every trained tensor moved away from its init; "
        "mean pooling, a 2-label head per task; prompt tuning with 20 prompt tokens), median of "
        f"{args.reps} rounds run side by side (A B A B). Throughput in examples per second; `alone` is the batch on "
        "one task's adapter in the plain single-adapter model, `T=k` the multi-task model with the batch's rows "
        "spread over k tasks, `grouped` the batch split by task (T = 64) and each group run as a single-task batch, "
        "`peft` peft's own mixed batch (`adapter_names=`) on the same LoRA weights.",
        "",
    ]
    for label in results[0]["throughput"]:
        has_peft = any("peft T=8" in r["throughput"][label] for r in results)
        lines += [f"## {label}", "",
                  "| method | alone | T=1 | T=8 | T=64 | T=64 vs alone | target | grouped | T=64 vs grouped |"
                  + (" peft T=8 | peft T=64 | vs peft T=8 | vs peft T=64 |" if has_peft else ""),
                  "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if has_peft else "")]
        for r in results:
            t = r["throughput"][label]
            vs = t["T=64"] / t["alone"]
            mark = "" if vs >= TARGET[r["method"]] else f" (missed by {TARGET[r['method']] - vs:.2f})"
            line = (f"| {r['method']} | {t['alone']:.1f} | {t['T=1']:.1f} | {t['T=8']:.1f} | {t['T=64']:.1f} | "
                    f"{vs:.2f}×{mark} | ≥ {TARGET[r['method']]:.2f}× | {t['grouped']:.1f} | "
                    f"{ratio(t['T=64'], t['grouped'])} |")
            if has_peft:
                p8, p64 = t.get("peft T=8"), t.get("peft T=64")
                line += (f" {p8 and f'{p8:.1f}' or '–'} | {p64 and f'{p64:.1f}' or '–'} | "
                         f"{ratio(t['T=8'], p8)} | {ratio(t['T=64'], p64)} |")
            lines.append(line)
        lines.append("")
    lines += ["## Memory a task adds", "",
              "`own` is the adapter's trained tensors (method and head) in bytes; `held` what the multi-task model "
              f"holds for each of the {args.tasks} tasks (its banks); `resident` the process's resident memory "
              f"over adding the last {args.tasks - args.tasks // 4} tasks, per task (the first ones also pay one-time "
              "structures; after `malloc_trim`: growing a bank frees its previous copy, which the allocator would "
              "otherwise keep); `add` the time to add one task.", "",
              "| method | own (bytes) | held / own | resident / own | add (ms) |", "|---|---|---|---|---|"]
    for r in results:
        m = r["memory"]
        lines.append(f"| {r['method']} | {m['own_bytes']:,} | {m['held_per_task'] / m['own_bytes']:.3f}× | "
                     f"{m['rss_per_task'] / m['own_bytes']:.2f}× | {m['add_ms']:.0f} |")
    lines += ["", "## Targets", "", "| target | measured (worst over both input lengths) | met |", "|---|---|---|"]
    labels = list(results[0]["throughput"])

    def worst(method_filter: Callable[[dict], bool], value: Callable[[dict[str, float]], float | None]) -> float | None:
        values = [value(r["throughput"][label]) for r in results if method_filter(r) for label in labels]
        values = [v for v in values if v is not None]
        return min(values) if values else None

    checks = [(f"T=64 vs alone, {r['method']}: ≥ {TARGET[r['method']]}×",
               worst(lambda x: x is r, lambda t: t["T=64"] / t["alone"]), TARGET[r["method"]]) for r in results]
    checks.append(("T=64 vs grouped by task: ≥ 3×", worst(lambda r: True, lambda t: t["T=64"] / t["grouped"]), 3.0))
    for t in (8, 64):
        checks.append((f"T={t} vs peft's mixed LoRA: ≥ 1.5×", worst(
            lambda r: r["method"] == "lora", lambda v: v[f"T={t}"] / v[f"peft T={t}"] if f"peft T={t}" in v else None),
            1.5))
    for name, value, target in checks:
        verdict = "–" if value is None else "yes" if value >= target else f"no, by {target - value:.2f}×"
        lines.append(f"| {name} | {'–' if value is None else f'{value:.2f}×'} | {verdict} |")
    resident = max(r["memory"]["rss_per_task"] / r["memory"]["own_bytes"] for r in results)
    lines.append(f"| memory a task adds: ≤ 1.1× its tensor bytes | {resident:.2f}× (resident, worst method) | "
                 f"{'yes' if resident <= 1.1 else 'no'} |")
    if merged:
        slower = merged["merged"] / merged["bare"]
        lines.append(f"| one task merged vs the bare backbone: ≤ 1.01× | {slower:.3f}× | "
                     f"{'yes' if slower <= 1.01 else f'no, by {slower - 1.01:.3f}×'} |")
    if not torch.cuda.is_available():
        lines += ["", "What limits the throughput ratios on a CPU: the backbone's matrix products cost nearly the "
                  "same per row at any batch size here, so running the batch's tasks one group at a time "
                  "(`grouped`) only adds per-call overhead and smaller products, most at short inputs; and peft's "
                  "mixed batch loops over the adapters present with two small products each per LoRA layer, an "
                  "overhead of a few percent of a pass that the backbone dominates. The 3× and 1.5× targets need "
                  "a device where a forward pass of a few rows costs about what a full batch costs (a GPU); timings "
                  "on this shared machine also drift by several percent between rounds, which is the size of the "
                  "merged-vs-bare difference."]
        lines += ["", "## One task merged", "",
                  "A Hadamard task merged into the backbone (`MultiTaskModel.merge`), against the bare backbone "
                  f"with the same head (the length-128 batch, median of {args.reps * 8} rounds side by side).", "",
                  "| | seconds per batch | vs bare |", "|---|---|---|"]
        for name, seconds in merged.items():
            lines.append(f"| {name} | {seconds:.3f} | {seconds / merged['bare']:.3f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PELT_DATA_DIR", ROOT.parent.parent
                                                                              / "shared" / "data")))
    parser.add_argument("--model", default=None, help="default: the bundled MiniLM")
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-peft", dest="peft", action="store_false")
    parser.add_argument("--no-merged", dest="merged", action="store_false")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.argv = list(sys.argv[1:])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    _, tokenizer = load_backbone(args.model)
    inputs = batches(tokenizer, sst2_sentences(args.data_dir, args.batch), args.batch)
    partial = args.output.with_suffix(".json")  # every measurement as it comes: a rerun resumes
    saved = json.loads(partial.read_text()) if partial.is_file() else {"methods": [], "merged": None}
    done = {r["method"]: r for r in saved["methods"]}
    results = []
    for method in args.methods:
        if method not in done:
            print(f"{method} ...", file=sys.stderr, flush=True)
            done[method] = measure_method(method, args, inputs)
            saved["methods"] = list(done.values())
            partial.write_text(json.dumps(saved, indent=2) + "\n")
        results.append(done[method])
    if args.merged and saved["merged"] is None:
        saved["merged"] = measure_merged(args, inputs["length 128"])
        partial.write_text(json.dumps(saved, indent=2) + "\n")
    merged = saved["merged"] if args.merged else None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(results, merged, args))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
