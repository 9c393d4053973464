"""Which layers and which parts of the Hadamard adapter matter (the Hadamard paper's Fig. 4 and Fig. 5).

Both ablations are grids of ordinary Hadamard runs, so they run through `pelt.harness.run_grid`: one process per
run, results in one JSON-lines file, resumable, failures recorded. Every configuration is written as one
canonical method variant (`hadamard:layers=3-5:train_bias=false`), so a run shared by the two ablations (the
adapter on every layer, or on the top layer only) is trained once when both use the same folder.

- Layer ablation: the adapter on the top k and on the bottom k layers, k = 1 … L.
- Module ablation: train W only, b only, the attention LayerNorm only, and their combinations, on every layer
  at once and on each layer alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pelt.analysis.capture import encoder_layers
from pelt.errors import PeltError
from pelt.harness import GridSettings, RunSpec, expand_grid, read_records, run_grid
from pelt.harness.sweep import RESULTS_NAME
from pelt.models import build_model_from_config, load_config

__all__ = ["MODULE_SETS", "AblationRun", "ablation_study", "encoder_depth", "hadamard_variant", "layer_ablation",
           "module_ablation", "read_reference", "run_ablation", "write_layer_report", "write_module_report"]

PARTS = ("W", "b", "LN")
# The paper's Fig. 5 parts and their combinations, in the order the tables list them.
MODULE_SETS: list[tuple[str, ...]] = [("W",), ("b",), ("LN",), ("W", "b"), ("W", "LN"), ("b", "LN"), ("W", "b", "LN")]


def _ranges(layers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (what `parse_int_list` reads back)."""
    parts, ordered = [], sorted(set(layers))
    start = prev = ordered[0]
    for value in ordered[1:] + [None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if value is not None:
            start = prev = value
    return ",".join(parts)


def hadamard_variant(layers: Sequence[int] | None = None, parts: Sequence[str] = PARTS, *, num_layers: int) -> str:
    """The canonical grid variant of a Hadamard configuration: defaults left out, layers as ranges."""
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise PeltError(f"Hadamard parts are {', '.join(PARTS)} (at least one), got {', '.join(parts) or 'none'}")
    text = "hadamard"
    if layers is not None and sorted(set(layers)) != list(range(num_layers)):
        if min(layers) < 0 or max(layers) >= num_layers:
            raise PeltError(f"layers {list(layers)} out of range: the model has layers 0..{num_layers - 1}")
        text += f":layers={_ranges(layers)}"
    for part, option in (("W", "train_weight"), ("b", "train_bias"), ("LN", "train_layernorm")):
        if part not in parts:
            text += f":{option}=false"
    return text


def encoder_depth(model: str | None) -> int:
    """Layers in the model's encoder, from its configuration alone (no weights loaded)."""
    return len(encoder_layers(build_model_from_config(load_config(model), device="meta")))


@dataclass(frozen=True)
class AblationRun:
    """One run of an ablation and where it sits in the figure."""

    spec: RunSpec
    layers: tuple[int, ...]  # the adapted layers
    parts: tuple[str, ...]  # the trained parts of the adapter
    label: str  # "top 3", "bottom 2", "all layers", "layer 4"


def _runs(task: str, configurations: list[tuple[tuple[int, ...], tuple[str, ...], str]], num_layers: int,
          learning_rate: float, seed: int, train_size: int | None) -> list[AblationRun]:
    variants = [hadamard_variant(layers, parts, num_layers=num_layers) for layers, parts, _ in configurations]
    runs = []
    for (layers, parts, label), variant in zip(configurations, variants):
        [spec] = expand_grid([variant], [task], [repr(learning_rate)], [seed], [train_size])
        runs.append(AblationRun(spec, layers, parts, label))
    return runs


def layer_ablation(task: str, num_layers: int, *, learning_rate: float = 5e-3, seed: int = 42,
                   train_size: int | None = None, ks: Sequence[int] | None = None) -> list[AblationRun]:
    """The adapter on the top k and the bottom k layers for each k (default 1 … L; k = L is every layer)."""
    ks = sorted(set(ks or range(1, num_layers + 1)))
    if any(k < 1 or k > num_layers for k in ks):
        raise PeltError(f"k must be in 1..{num_layers} for a {num_layers}-layer encoder, got {ks}")
    configurations = []
    for k in ks:
        top, bottom = tuple(range(num_layers - k, num_layers)), tuple(range(k))
        if k == num_layers:
            configurations.append((top, PARTS, "all layers"))
        else:
            configurations += [(top, PARTS, f"top {k}"), (bottom, PARTS, f"bottom {k}")]
    return _runs(task, configurations, num_layers, learning_rate, seed, train_size)


def module_ablation(task: str, num_layers: int, *, learning_rate: float = 5e-3, seed: int = 42,
                    train_size: int | None = None, module_sets: Sequence[Sequence[str]] | None = None,
                    per_layer: Sequence[int] | None = None) -> list[AblationRun]:
    """Each module set on every layer at once, then on each layer of `per_layer` alone (default: every layer)."""
    sets = [tuple(s) for s in (module_sets or MODULE_SETS)]
    layers = list(range(num_layers)) if per_layer is None else sorted(set(per_layer))
    if any(i < 0 or i >= num_layers for i in layers):
        raise PeltError(f"per-layer ablation layers must be in 0..{num_layers - 1}, got {layers}")
    everything = tuple(range(num_layers))
    configurations = [(everything, parts, "all layers") for parts in sets]
    configurations += [((i,), parts, f"layer {i}") for i in layers for parts in sets]
    return _runs(task, configurations, num_layers, learning_rate, seed, train_size)


def run_ablation(runs: list[AblationRun], grid_dir: str | os.PathLike, settings: GridSettings,
                 **grid_options: Any) -> list[dict[str, Any]]:
    """Train what has no record yet (resumable); return the records of these runs."""
    records = run_grid([r.spec for r in runs], grid_dir, settings, **grid_options)
    wanted = {r.spec.key for r in runs}
    return [r for r in records if r["key"] in wanted]


def read_reference(path: str | os.PathLike) -> dict[str, Any]:
    """A full fine-tuning run's results (its folder or its results.json), drawn as a line in the reports."""
    file = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise PeltError(f"--reference {path}: no results.json there; pass a `pelt train` run folder")
    return json.loads(file.read_text())


def ablation_study(
    kind: Literal["layers", "modules"],
    task: str,
    output_dir: str | os.PathLike,
    settings: GridSettings,
    *,
    learning_rate: float = 5e-3,
    seed: int = 42,
    train_size: int | None = None,
    ks: Sequence[int] | None = None,
    module_sets: Sequence[Sequence[str]] | None = None,
    per_layer: Sequence[int] | None = None,
    reference: str | os.PathLike | None = None,
    report_dir: str | os.PathLike | None = None,
    retry_failed: bool = False,
) -> Path:
    """The whole Fig. 4 (`layers`) or Fig. 5 (`modules`) study: its runs (resumable, in `output_dir`), then its
    table and figure (in `report_dir`, default `output_dir`). `reference`: a full fine-tuning run, read before
    any run starts."""
    num_layers = encoder_depth(settings.model)
    options = {"learning_rate": learning_rate, "seed": seed, "train_size": train_size}
    if kind == "layers":
        runs = layer_ablation(task, num_layers, ks=ks, **options)  # type: ignore[arg-type]
    elif kind == "modules":
        runs = module_ablation(task, num_layers, module_sets=module_sets, per_layer=per_layer,
                               **options)  # type: ignore[arg-type]
    else:
        raise PeltError(f"an ablation study is layers or modules, got {kind!r}")
    reference_results = read_reference(reference) if reference is not None else None
    run_ablation(runs, output_dir, settings, retry_failed=retry_failed)
    write = write_layer_report if kind == "layers" else write_module_report
    return write(runs, output_dir, Path(report_dir or output_dir), reference=reference_results)


def _scores(record: dict[str, Any]) -> tuple[float, float | None, str]:
    """(selection-split score, test score or None, main metric) of a finished run."""
    main = record["main_metric"]
    metrics = record["metrics"]
    test = metrics.get("test", {}).get(main)
    return metrics[record["selection_split"]][main], test, main


def _by_key(grid_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in read_records(Path(grid_dir) / RESULTS_NAME)}


def _cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "–"
    if record.get("status") != "ok":
        return "failed"
    validation, test, _ = _scores(record)
    return f"{100 * validation:.1f}" + (f" / {100 * test:.1f}" if test is not None else "")


def _head_only(records: list[dict[str, Any]]) -> float | None:
    """Stage (a) of the two-stage recipe: the best validation score of the head alone (the same in every run)."""
    for record in records:
        if record.get("status") == "ok":
            scores = [h for h in record.get("history") or [] if h.get("stage") == "head"]
            if scores:
                key = next(k for k in scores[0] if k.startswith("eval_"))
                return max(h[key] for h in scores)
    return None


def _reference_lines(reference: dict[str, Any] | None, records: list[dict[str, Any]]) -> list[str]:
    lines = []
    sizes = sorted({r["train_samples"] for r in records if r.get("train_samples")})
    if reference:
        main = reference["main_metric"]
        scores = " / ".join(f"{100 * reference['metrics'][s][main]:.1f}" for s in reference["metrics"])
        trained_on = reference.get("train_samples")
        # A reference trained on other data than the runs is still a useful line, but not a like-for-like one.
        apart = f", trained on {trained_on:,} examples" if trained_on and sizes and sizes != [trained_on] else ""
        lines.append(f"- full fine-tuning: {scores} ({' / '.join(reference['metrics'])}){apart}")
    if sizes:
        lines.append(f"- the adapter runs train on {' / '.join(f'{n:,}' for n in sizes)} examples")
    head = _head_only(records)
    if head is not None:
        lines.append(f"- the task head alone (stage (a) of the recipe): {100 * head:.1f} on validation")
    return [*lines, ""] if lines else []


def write_layer_report(runs: list[AblationRun], grid_dir: str | os.PathLike, folder: str | os.PathLike, *,
                       reference: dict[str, Any] | None = None, title: str = "") -> Path:
    """layers.md and layers.png: score against the number of adapted layers, from the top and from the bottom.
    `reference`: a full fine-tuning results.json, drawn as a line."""
    records = _by_key(grid_dir)
    task = runs[0].spec.task
    done = [records[r.spec.key] for r in runs if records.get(r.spec.key, {}).get("status") == "ok"]
    if not done:
        raise PeltError(f"no finished layer-ablation runs for {task} in {grid_dir}; run the ablation first")
    splits = _split_label(done[0])
    num_layers = max(len(r.layers) for r in runs)
    ks = sorted({len(r.layers) for r in runs})
    lines = [f"# {title or f'{task}: Hadamard adapter on the top k / bottom k layers'}", "",
             f"Scores ×100 ({splits}), main metric {done[0]['main_metric']}; the other layers have no adapter.", "",
             *_reference_lines(reference, done),
             "| k | top k | bottom k | trained % |", "|---|---|---|---|"]
    curves: dict[str, dict[int, float]] = {"top k": {}, "bottom k": {}}
    for k in ks:
        cells = []
        percent = None
        for direction in ("top", "bottom"):
            run = next((r for r in runs if len(r.layers) == k and (r.label == "all layers" or r.label.startswith(direction))), None)
            record = records.get(run.spec.key) if run else None
            cells.append(_cell(record))
            if record and record.get("status") == "ok":
                curves[f"{direction} k"][k] = _plotted(record)
                percent = record["parameters"]["method_percent"]
        lines.append(f"| {k} | {cells[0]} | {cells[1]} | {'–' if percent is None else f'{percent:.4f}'} |")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _plot_lines(curves, out / "layers.png", xlabel="adapted layers k", ylabel=_axis_label(done[0]),
                reference=reference, title=f"{task}: adapted layers (of {num_layers})")
    lines += ["", "![layers](layers.png)", ""]
    path = out / "layers.md"
    path.write_text("\n".join(lines))
    return path


def write_module_report(runs: list[AblationRun], grid_dir: str | os.PathLike, folder: str | os.PathLike, *,
                        reference: dict[str, Any] | None = None, title: str = "") -> Path:
    """modules.md and modules.png: the score of each trained part (and combination), on all layers and per layer."""
    records = _by_key(grid_dir)
    task = runs[0].spec.task
    done = [records[r.spec.key] for r in runs if records.get(r.spec.key, {}).get("status") == "ok"]
    if not done:
        raise PeltError(f"no finished module-ablation runs for {task} in {grid_dir}; run the ablation first")
    sets = list(dict.fromkeys(r.parts for r in runs))
    columns = list(dict.fromkeys(r.label for r in runs))
    lines = [f"# {title or f'{task}: which parts of the Hadamard adapter matter'}", "",
             f"Scores ×100 ({_split_label(done[0])}), main metric {done[0]['main_metric']}. W: the element-wise "
             "weight, b: the bias, LN: the attention LayerNorm; untrained parts stay at their initial values.", "",
             *_reference_lines(reference, done),
             "| trained | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    overall: dict[str, float] = {}
    curves: dict[str, dict[int, float]] = {}
    for parts in sets:
        name = " + ".join(parts)
        cells = []
        for column in columns:
            run = next((r for r in runs if r.parts == parts and r.label == column), None)
            record = records.get(run.spec.key) if run else None
            cells.append(_cell(record))
            if record and record.get("status") == "ok":
                if column == "all layers":
                    overall[name] = _plotted(record)
                else:
                    curves.setdefault(name, {})[run.layers[0]] = _plotted(record)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _plot_modules(overall, curves, out / "modules.png", ylabel=_axis_label(done[0]), reference=reference,
                  title=f"{task}: trained parts of the Hadamard adapter")
    lines += ["", "![modules](modules.png)", ""]
    path = out / "modules.md"
    path.write_text("\n".join(lines))
    return path


def _split_label(record: dict[str, Any]) -> str:
    return f"{record['selection_split']} / test" if "test" in record["metrics"] else record["selection_split"]


def _plotted(record: dict[str, Any]) -> float:
    """The figures show the test score where the split protocol has one, else the validation score."""
    validation, test, _ = _scores(record)
    return 100 * (test if test is not None else validation)


def _axis_label(record: dict[str, Any]) -> str:
    split = "test" if "test" in record["metrics"] else record["selection_split"]
    return f"{split} {record['main_metric']} ×100"


def _reference_score(reference: dict[str, Any] | None) -> float | None:
    if not reference:
        return None
    main, metrics = reference["main_metric"], reference["metrics"]
    split = "test" if "test" in metrics else next(iter(metrics))
    return 100 * metrics[split][main]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_lines(curves: dict[str, dict[int, float]], path: Path, *, xlabel: str, ylabel: str,
                reference: dict[str, Any] | None, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, points in curves.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    full = _reference_score(reference)
    if full is not None:
        ax.axhline(full, color="black", linestyle="--", label="full fine-tuning")
    ax.set_xticks(sorted({x for points in curves.values() for x in points}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_modules(overall: dict[str, float], curves: dict[str, dict[int, float]], path: Path, *, ylabel: str,
                  reference: dict[str, Any] | None, title: str) -> None:
    plt = _pyplot()
    # A panel only for what was run: an all-layer ablation alone draws no empty per-layer panel, and vice versa.
    panels = [p for p, data in (("overall", overall), ("per layer", curves)) if data]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    full = _reference_score(reference)
    values = [*overall.values(), *(v for p in curves.values() for v in p.values())] + ([full] if full else [])
    for ax, panel in zip(axes[0], panels):
        if panel == "overall":
            names = list(overall)
            ax.bar(range(len(names)), [overall[n] for n in names], color="tab:blue")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.set_title("(a) trained on every layer", fontsize=10)
        else:
            for name, points in curves.items():
                xs = sorted(points)
                ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
            ax.set_xticks(sorted({x for points in curves.values() for x in points}))
            ax.set_xlabel("the one adapted layer")
            ax.set_title("(b) trained on one layer", fontsize=10)
        ax.set_ylabel(ylabel)
        if full is not None:
            ax.axhline(full, color="black", linestyle="--", label="full fine-tuning")
        ax.set_ylim(min(values) - 5, max(values) + 3)
        if panel == "per layer":
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
