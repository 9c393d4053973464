"""From a grid's records to the papers' tables and figures.

Selection follows the Compacter paper: for each method, task and training-set size, the learning rate whose
best checkpoints score highest on the validation split (mean over seeds) wins, and the test scores of its runs
are reported, averaged over seeds (never the test score that happens to be highest). The paper picks one rate
per method for all tasks (its Table 5); the report adds that table too. Written next to the results: report.md
(a table per task, a summary table in the papers' layout with an average column) and two figures: score vs %
trained parameters with peak memory as marker size (the Compacter paper's Fig. 2) and score vs training-set
size (its Fig. 4).
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pelt.errors import PeltError

__all__ = ["Selected", "latest_records", "select_best", "select_per_method", "write_report"]


@dataclass
class Selected:
    """The chosen learning rate of one method on one task at one training-set size, averaged over seeds."""

    variant: str
    task: str
    train_size: int | None
    learning_rate: float
    validation: float  # main metric on the selection split, mean over the seeds at the chosen rate
    test: dict[str, float]  # every test metric, mean over those seeds
    test_split: str
    main_metric: str
    method_percent: float
    peak_memory_mb: float | None
    ms_per_step: float | None
    seeds: int
    failed: int = 0  # failed runs of this method, task and size: the pick is among the others
    train_samples: int | None = None  # examples actually trained on (a subsample larger than the set is the set)


def _main(record: dict[str, Any], split: str) -> float:
    return float(record["metrics"][split][record["main_metric"]])


def latest_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run, the last one written (a failed run retried with --retry-failed has two)."""
    return list({r.get("key", id(r)): r for r in records}.values())


def _candidates(records: list[dict[str, Any]]) -> dict[tuple, dict[float, list[dict[str, Any]]]]:
    """(variant, task, size) -> learning rate -> its finished runs (one per seed)."""
    groups: dict[tuple, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get("status") == "ok":
            groups[(record["variant"], record["task"], record["train_size"])][record["learning_rate"]].append(record)
    return groups


def _mean_validation(runs: list[dict[str, Any]]) -> float:
    return statistics.fmean(_main(r, r["selection_split"]) for r in runs)


def _selected(variant: str, task: str, size: int | None, lr: float, runs: list[dict[str, Any]],
              failed: int) -> Selected:
    first = runs[0]
    report_split = "test" if "test" in first["metrics"] else first["selection_split"]
    test = {k: statistics.fmean(r["metrics"][report_split][k] for r in runs)
            for k in first["metrics"][report_split] if k != "invalid"}
    memory = [r["peak_memory_mb"] for r in runs if r.get("peak_memory_mb")]
    speed = [r["ms_per_step"] for r in runs if r.get("ms_per_step")]
    return Selected(variant, task, size, lr, _mean_validation(runs), test, report_split, first["main_metric"],
                    first["parameters"]["method_percent"], statistics.fmean(memory) if memory else None,
                    statistics.fmean(speed) if speed else None, len(runs), failed, first.get("train_samples"))


def _failed_counts(records: list[dict[str, Any]]) -> Counter:
    return Counter((r.get("variant"), r.get("task"), r.get("train_size")) for r in records
                   if r.get("status") == "failed")


def select_best(records: list[dict[str, Any]]) -> list[Selected]:
    """Each (method, task, size)'s learning rate by its mean validation score over seeds (ties: the smaller
    rate); the test scores of that rate's runs, averaged."""
    records = latest_records(records)
    failed = _failed_counts(records)
    selected = []
    for (variant, task, size), by_lr in _candidates(records).items():
        lr = max(by_lr, key=lambda rate: (_mean_validation(by_lr[rate]), -rate))
        selected.append(_selected(variant, task, size, lr, by_lr[lr], failed[(variant, task, size)]))
    return selected


def select_per_method(records: list[dict[str, Any]], sizes: dict[str, int | None]) -> list[Selected]:
    """The Compacter paper's rule (its Table 5): one learning rate per method for every task, the one whose mean
    validation score over the tasks (each at `sizes[task]`, seeds averaged) is highest; only rates run on every
    task of the method compete."""
    records = latest_records(records)
    failed = _failed_counts(records)
    candidates = _candidates(records)
    by_variant: dict[str, dict[str, dict[float, list[dict[str, Any]]]]] = defaultdict(dict)
    for (variant, task, size), by_lr in candidates.items():
        if task in sizes and size == sizes[task]:
            by_variant[variant][task] = by_lr
    selected = []
    for variant, tasks in by_variant.items():
        shared = set.intersection(*(set(by_lr) for by_lr in tasks.values()))
        if not shared:
            continue
        lr = max(shared, key=lambda rate: (statistics.fmean(_mean_validation(by_lr[rate]) for by_lr in tasks.values()),
                                           -rate))
        selected += [_selected(variant, task, sizes[task], lr, by_lr[lr], failed[(variant, task, sizes[task])])
                     for task, by_lr in tasks.items()]
    return selected


def _score(metrics: dict[str, float], main: str) -> str:
    """All of a task's metrics as the papers print them (×100, "acc / F1"), the combined mean left out."""
    shown = [v for k, v in metrics.items() if k != "combined"] or [metrics[main]]
    return " / ".join(f"{100 * v:.1f}" for v in shown)


def _order(names: list[str], first: str = "full") -> list[str]:
    return sorted(names, key=lambda n: (n != first, n))


def _task_label(task: str, size: int | None) -> str:
    return task if size is None else f"{task} (n={size:,})"


def _cell(pick: Selected) -> str:
    return _score(pick.test, pick.main_metric) + (" †" if pick.failed else "")


def _summary_rows(variants: list[str], tasks: list[str], picks: dict[tuple[str, str], Selected], *,
                  with_lr: bool = False) -> tuple[list[str], dict[str, float]]:
    """A row per method (tasks, then the average of the main metrics when every task is there)."""
    rows, averages = [], {}
    for variant in variants:
        found = [picks.get((variant, task)) for task in tasks]
        present = [p for p in found if p]
        if not present:
            continue
        cells = [_cell(p) if p else "–" for p in found]
        complete = len(present) == len(tasks)
        averages[variant] = statistics.fmean(p.test[p.main_metric] for p in present) if complete else math.nan
        average = f"{100 * averages[variant]:.1f}" if complete else "–"
        lr = [f"{present[0].learning_rate:g}"] if with_lr else []
        rows.append("| " + " | ".join([variant, f"{present[0].method_percent:.4f}", *lr, *cells, average]) + " |")
    return rows, averages


def write_report(records: list[dict[str, Any]], folder: str | os.PathLike, *, title: str = "Grid results") -> Path:
    """report.md plus scores_vs_params.png and (with several training-set sizes) scores_vs_train_size.png."""
    records = latest_records(records)
    selected = select_best(records)
    if not selected:
        raise PeltError(f"no finished runs to report in {folder}; run the grid first")
    folder = Path(folder)
    failed = [r for r in records if r.get("status") == "failed"]
    sizes = {s.task: _common_size(selected, s.task) for s in selected}
    full_size = [s for s in selected if s.train_size == sizes[s.task]]
    tasks = list(dict.fromkeys(s.task for s in full_size))
    variants = _order(list(dict.fromkeys(s.variant for s in full_size)))
    splits = {s.task: s.test_split for s in full_size}
    split = next(iter(splits.values())) if len(set(splits.values())) == 1 else \
        ", ".join(f"{t}: {sp}" for t, sp in splits.items())
    labels = [_task_label(t, sizes[t]) for t in tasks]
    by_key = {(s.variant, s.task): s for s in full_size}
    lines = [f"# {title}", "",
             f"Each method's learning rate is picked per task on the validation split (best checkpoint's main "
             f"metric, mean over seeds); the scores are the **{split}** metrics (×100) of that rate's runs, "
             f"averaged over seeds. Written by `pelt report`.", "",
             *_settings_lines(records),
             "## Summary", "",
             "| method | % trained | " + " | ".join(labels) + " | average |",
             "|---|---|" + "---|" * len(tasks) + "---|"]
    rows, averages = _summary_rows(variants, tasks, by_key)
    lines += rows
    if any(s.failed for s in full_size):
        lines += ["", "† a run of this method and task failed (listed at the end); the pick is among the others."]
    per_method = {(s.variant, s.task): s for s in select_per_method(records, {t: sizes[t] for t in tasks})}
    if len(tasks) > 1 and any(per_method.get(k, v).learning_rate != v.learning_rate for k, v in by_key.items()):
        rows, _ = _summary_rows(variants, tasks, per_method, with_lr=True)
        lines += ["", "## Summary, one learning rate per method", "",
                  "The Compacter paper's rule (its Table 5): each method keeps the one learning rate whose mean "
                  "validation score over these tasks is highest (only rates run on every task compete).", "",
                  "| method | % trained | lr | " + " | ".join(labels) + " | average |",
                  "|---|---|---|" + "---|" * len(tasks) + "---|", *rows]
    for task, label in zip(tasks, labels):
        main = next(s.main_metric for s in full_size if s.task == task)
        lines += ["", f"## {label}", "",
                  f"| method | lr (picked on validation) | validation {main} | {splits[task]} | % trained | "
                  "peak memory MB | ms/step | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        for variant in variants:
            pick = by_key.get((variant, task))
            if pick is None:
                continue
            lines.append(f"| {variant} | {pick.learning_rate:g} | {100 * pick.validation:.1f} | {_cell(pick)} | "
                         f"{pick.method_percent:.4f} | {_fmt(pick.peak_memory_mb)} | {_fmt(pick.ms_per_step)} | "
                         f"{pick.seeds} |")
        lines += _learning_rate_table(records, task, sizes[task], variants, by_key)
    curves = _curves(selected)
    if curves:
        lines += ["", "## Score vs training-set size", "", "| task | method | " +
                  " | ".join(str(n) for n in curves["sizes"]) + " |",
                  "|---|---|" + "---|" * len(curves["sizes"])]
        for (task, variant), points in curves["lines"].items():
            cells = [f"{100 * points[n]:.1f}" if n in points else "–" for n in curves["sizes"]]
            lines.append(f"| {task} | {variant} | " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r['key']}`: {r.get('error', '')}" for r in failed]
    figures = _plots(full_size, averages, curves, folder)
    lines += ["", *[f"![{name}]({name})" for name in figures]]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _learning_rate_table(records: list[dict[str, Any]], task: str, size: int | None, variants: list[str],
                         picks: dict[tuple[str, str], Selected]) -> list[str]:
    """Validation score at every learning rate run (mean over seeds), the pick in bold: how sensitive each method
    is to its learning rate. Empty when no method ran more than one."""
    scores: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "ok" and r["task"] == task and r["train_size"] == size:
            scores[r["variant"]][r["learning_rate"]].append(_main(r, r["selection_split"]))
    if all(len(by_lr) < 2 for by_lr in scores.values()):
        return []
    rates = sorted({lr for by_lr in scores.values() for lr in by_lr}, reverse=True)
    lines = ["", "Validation score at each learning rate (×100, mean over seeds; the pick in bold):", "",
             "| method | " + " | ".join(f"{lr:g}" for lr in rates) + " |", "|---|" + "---|" * len(rates)]
    for variant in (v for v in variants if v in scores):
        picked = picks[(variant, task)].learning_rate if (variant, task) in picks else None
        cells = []
        for lr in rates:
            values = scores[variant].get(lr)
            cell = f"{100 * statistics.fmean(values):.1f}" if values else "–"
            cells.append(f"**{cell}**" if values and lr == picked else cell)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _settings_lines(records: list[dict[str, Any]]) -> list[str]:
    """What the runs shared (model, split protocol, `pelt train` flags), as recorded by `pelt sweep`; runs made
    several at a time (`pelt sweep --jobs`) are said to be, as their times were measured side by side."""
    most_jobs: dict[str, int] = {}
    devices: dict[str, Counter] = defaultdict(Counter)
    for record in (r for r in records if r.get("settings")):
        settings = record["settings"]
        flags = f", `pelt train {settings['train_args']}`" if settings.get("train_args") else ""
        shared = f"Runs: {settings['model']}, split protocol {settings['split_protocol']}{flags}"
        most_jobs[shared] = max(most_jobs.get(shared, 1), settings.get("jobs", 1))
        if record.get("device"):
            devices[shared][record["device"]] += 1
    lines = []
    for shared, jobs in sorted(most_jobs.items()):
        on = devices[shared]
        where = "; on " + ", ".join(f"{d} ({n} run{'s' * (n != 1)})" if len(on) > 1 else d for d, n in on.most_common()) if on else ""
        side_by_side = f"; with up to {jobs} runs at a time (`--jobs {jobs}`), so times and ms/step may have been " \
            "measured side by side" if jobs > 1 else ""
        lines.append(f"{shared}{where}{side_by_side}.")
    return [*lines, ""] if lines else []


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _common_size(selected: list[Selected], task: str) -> int | None:
    """The training-set size a task's summary uses: its largest (None, the whole set, counts as largest)."""
    sizes = {s.train_size for s in selected if s.task == task}
    return None if None in sizes else max(sizes)


def _curves(selected: list[Selected]) -> dict[str, Any]:
    lines: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for s in selected:
        if s.train_size is not None:  # at the examples actually trained on: a task smaller than the size asked is whole
            size = min(s.train_size, s.train_samples) if s.train_samples else s.train_size
            lines[(s.task, s.variant)][size] = s.test[s.main_metric]
    task_sizes: dict[str, set[int]] = defaultdict(set)
    for (task, _), points in lines.items():
        task_sizes[task] |= set(points)
    # a task run at several sizes has a curve; every method of it is shown, even one with a single size so far
    lines = {k: v for k, v in lines.items() if len(task_sizes[k[0]]) > 1}
    if not lines:
        return {}
    return {"sizes": sorted({n for v in lines.values() for n in v}), "lines": dict(sorted(lines.items()))}


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]


def _plots(full_size: list[Selected], averages: dict[str, float], curves: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    points = [(v, next(s for s in full_size if s.variant == v)) for v, avg in averages.items() if not math.isnan(avg)]
    if points:
        from matplotlib.lines import Line2D

        fig, ax = plt.subplots(figsize=(9, 4.8))
        # a method's peak memory differs by task (lengths, head): its mean over the tasks of the average
        memory = [statistics.fmean([s.peak_memory_mb for s in full_size if s.variant == v and s.peak_memory_mb]
                                   or [0.0]) for v, _ in points]
        top = max(memory) or 1
        colors = plt.get_cmap("tab20").colors
        handles = []
        # Methods crowd around 0.1%: a legend (colour and shape per method) stays legible where labels would not.
        for index, ((variant, pick), mb) in enumerate(zip(points, memory)):
            color, marker = colors[index % len(colors)], _MARKERS[index % len(_MARKERS)]
            ax.scatter(max(pick.method_percent, 1e-4), 100 * averages[variant], s=40 + 600 * mb / top, alpha=0.6,
                       color=color, marker=marker, edgecolors="black", linewidths=0.5)
            handles.append(Line2D([], [], linestyle="", marker=marker, markersize=7, color=color,
                                  markeredgecolor="black", markeredgewidth=0.5, alpha=0.8,
                                  label=f"{variant} ({100 * averages[variant]:.1f})"))
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xscale("log")
        ax.set_xlabel("trained parameters (% of the base model, log scale)")
        ax.set_ylabel("average score")
        ax.set_title("score vs trained parameters (marker area: peak memory)")
        fig.tight_layout()
        fig.savefig(folder / "scores_vs_params.png", dpi=120)
        plt.close(fig)
        names.append("scores_vs_params.png")
    if curves:
        tasks = list(dict.fromkeys(task for task, _ in curves["lines"]))
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for (t, variant), line in curves["lines"].items():
                if t == task:
                    sizes = sorted(line)
                    ax.plot(sizes, [100 * line[n] for n in sizes], marker="o", label=variant)
            ax.set_xscale("log")
            ax.set_xlabel("training examples (log scale)")
            ax.set_ylabel("test score")
            ax.set_title(task)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "scores_vs_train_size.png", dpi=120)
        plt.close(fig)
        names.append("scores_vs_train_size.png")
    return names
