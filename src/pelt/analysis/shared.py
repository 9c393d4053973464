"""What the adapters of different tasks share, and one adapter shared by several tasks.

`adapter_similarity` compares per-task adapters layer by layer: how far each trained tensor moved from where
it started (W from 1, b from 0, the LayerNorm from its pretrained values), the cosine similarity of those moves
between tasks, and the share of dimensions that every task moves the same way (chance: 2^(1-T)).

`train_shared_adapter` trains one adapter on several tasks at once, each task with its own head: the task models
share every backbone module (the adapter's included) and keep their own classifier (and pooler, with
`train_pooler`). Batches of the tasks are interleaved in proportion to their sizes. Each task's adapter folder
is complete (shared weights + its head), so `pelt eval` and `load_adapter` take it as it is; what the sharing
saves is the stored parameters, reported next to the scores.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from torch import nn
from transformers import set_seed

from pelt.arch import base_model, pooler_path
from pelt.core import PeltState, apply_method, head_parameter_names, parameter_report
from pelt.pooling import default_pooling, replace_pooler
from pelt.adapter_files import load_trained_weights, read_adapter_config, read_adapter_tensors, save_adapter
from pelt.errors import PeltError
from pelt.files import write_json
from pelt.methods import MethodConfig, get_method
from pelt.models import checkpoint_name
from pelt.pipeline import adapter_base_model, finetune, fit_max_length, load_task_model, run_info
from pelt.run_settings import RunSettings, run_settings
from pelt.tasks import TaskSpec, get_task, load_splits
from pelt.train import TrainConfig, evaluate_model
from pelt.train.run_folder import RESULTS_FILE, claim_run_folder
from pelt.train.interleaved import train_interleaved
from pelt.train.trainer import Stage, adapter_metadata, recipe_of
from pelt.train.formulations import formulation_for

__all__ = ["adapter_similarity", "analyze_shared", "train_shared_adapter", "write_similarity_report"]

_LAYER = re.compile(r"^(?P<prefix>.*?)\.(?P<index>\d+)\.(?P<rest>.+)$")
_SHORT_NAMES = {"hadamard_weight": "W", "hadamard_bias": "b"}


def _layer_key(name: str) -> tuple[str, int, str] | None:
    """'bert.encoder.layer.3.attention.output.dense.hadamard_weight' -> ('bert.encoder.layer', 3, 'attention...')."""
    match = _LAYER.match(name)
    return (match["prefix"], int(match["index"]), match["rest"]) if match else None


def _short(rest: str) -> str:
    last = rest.rsplit(".", 1)[-1]
    if last in _SHORT_NAMES:
        return _SHORT_NAMES[last]
    if "layernorm" in rest.lower() or "layer_norm" in rest.lower():
        return "LN γ" if last == "weight" else "LN β"
    return rest


def _initial_values(adapter: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapter's trained tensors as they were before training: its method applied to a fresh base model."""
    config = read_adapter_config(adapter)
    spec = get_task(config["task"]) if config.get("task") else None
    if spec is None:
        raise PeltError(f"adapter {adapter} does not record its task; it cannot be compared")
    base, _ = load_task_model(spec, adapter_base_model(config))
    method = get_method(config["method"]).config_class.from_dict(config["method_config"])
    apply_method(base, method, train_pooler=bool(config.get("train_pooler")), pooling=config.get("pooling"))
    return {name: p.detach().clone() for name, p in base.named_parameters() if p.requires_grad}


def _base_identity(config: dict[str, Any]) -> tuple[Any, ...]:
    base = config["base_model"]
    name = checkpoint_name(str(base.get("name_or_path") or "")) or str(base.get("model_type"))
    return name, base.get("model_type"), base.get("hidden_size"), base.get("num_layers"), base.get("base_params")


def adapter_similarity(adapters: dict[str, str | os.PathLike]) -> dict[str, Any]:
    """Per layer and trained tensor: each task's move from its initial value, and how alike the moves are."""
    if len(adapters) < 2:
        raise PeltError(f"comparing adapters needs at least two tasks, got {len(adapters)}")
    configs = {task: read_adapter_config(path) for task, path in adapters.items()}
    methods = {task: config["method"] for task, config in configs.items()}
    if len(set(methods.values())) > 1:
        raise PeltError(f"the adapters use different methods ({', '.join(f'{t}: {m}' for t, m in methods.items())}); "
                        "compare adapters of one method")
    first = next(iter(adapters))
    for task, config in configs.items():  # adapters of other base models have other shapes, and mean nothing here
        if _base_identity(config) != _base_identity(configs[first]):
            raise PeltError(f"adapters {first} and {task} were trained on different base models "
                            f"({_base_identity(configs[first])[0]} and {_base_identity(config)[0]}); compare adapters "
                            "of one base model")
    moves: dict[str, dict[str, torch.Tensor]] = {}
    for task, path in adapters.items():
        trained, initial = read_adapter_tensors(path, configs[task]), _initial_values(path)
        moves[task] = {name: (tensor.double() - initial[name].double()).flatten()
                       for name, tensor in trained.items() if name in initial and _layer_key(name)}
    tasks = list(adapters)
    common = sorted(set.intersection(*(set(m) for m in moves.values())),
                    key=lambda n: (_layer_key(n)[0], _layer_key(n)[1], _layer_key(n)[2]))  # type: ignore[index]
    if not common:
        raise PeltError("the adapters have no per-layer tensor in common (different layers or models?)")
    for name in common:
        sizes = {t: moves[t][name].numel() for t in tasks}
        if len(set(sizes.values())) > 1:
            raise PeltError(f"{name} has {', '.join(f'{n:,} values in {t}' for t, n in sizes.items())}; compare "
                            "adapters trained with the same method options")
    rows = []
    for name in common:
        prefix, index, rest = _layer_key(name)  # type: ignore[misc]
        vectors = [moves[t][name] for t in tasks]
        pairs = {}
        for (a, va), (b, vb) in itertools.combinations(zip(tasks, vectors), 2):
            denominator = va.norm() * vb.norm()
            pairs[f"{a}~{b}"] = float(va @ vb / denominator) if denominator > 0 else float("nan")
        signs = torch.stack([v.sign() for v in vectors])
        moved = (signs != 0).all(0)
        agree = ((signs == signs[0]).all(0) & moved).double()
        rows.append({
            "name": name, "stack": prefix, "layer": index, "tensor": _short(rest), "size": vectors[0].numel(),
            "move_norm": {t: float(v.norm()) for t, v in zip(tasks, vectors)},
            "cosine": pairs,
            "mean_cosine": statistics.fmean(pairs.values()) if pairs else float("nan"),
            "same_direction": float(agree.sum() / moved.sum()) if moved.any() else float("nan"),
        })
    return {"tasks": tasks, "method": methods[tasks[0]], "chance_same_direction": 2.0 ** (1 - len(tasks)),
            "rows": rows}


def write_similarity_report(similarity: dict[str, Any], folder: str | os.PathLike) -> Path:
    """similarity.md / .json / .png: the per-layer table and a heat map of the pairwise cosines."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "similarity.json", similarity)
    tasks, rows = similarity["tasks"], similarity["rows"]
    pairs = list(rows[0]["cosine"])
    lines = [f"# What the {similarity['method']} adapters of {', '.join(tasks)} share", "",
             "Move = trained value − initial value (W from 1, b from 0, LayerNorm from the pretrained model). "
             f"Same direction: the share of dimensions every task moves the same way (chance "
             f"{100 * similarity['chance_same_direction']:.0f}%).", "",
             "| layer | tensor | " + " | ".join(f"‖move‖ {t}" for t in tasks) + " | " +
             " | ".join(f"cos {p}" for p in pairs) + " | same direction |",
             "|---|---|" + "---|" * (len(tasks) + len(pairs) + 1)]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['tensor']} | " + " | ".join(f"{r['move_norm'][t]:.3f}" for t in tasks) +
                     " | " + " | ".join(f"{r['cosine'][p]:+.2f}" for p in pairs) +
                     f" | {100 * r['same_direction']:.0f}% |")
    lines += ["", "![similarity](similarity.png)", ""]
    (out / "similarity.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["tensor"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds) + 1, 0.45 * len(layers) + 2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        grid = [[next((r["cosine"][p] for r in rows if r["layer"] == i and r["tensor"] == kind), math.nan)
                 for p in pairs] for i in layers]
        image = ax.imshow(grid, vmin=-1, vmax=1, cmap="coolwarm", aspect="auto")
        ax.set_xticks(range(len(pairs)), pairs, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
        if ax is axes[0][0]:
            ax.set_ylabel("layer")
        ax.set_title(kind, fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="cosine of the moves")
    fig.suptitle("how alike the tasks' adapters moved")
    fig.savefig(out / "similarity.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out / "similarity.md"


# ---- one adapter, several tasks ------------------------------------------------------------------------------


def _share_backbone(target: nn.Module, source: nn.Module, *, keep_pooler: bool) -> None:
    """Make `target` use `source`'s backbone modules (its own head, and its own pooler if asked)."""
    pooler = pooler_path(target) if keep_pooler else None
    pooler_name = pooler.rsplit(".", 1)[-1] if pooler else None
    source_backbone, target_backbone = base_model(source), base_model(target)
    for name, module in source_backbone.named_children():
        if name != pooler_name:
            setattr(target_backbone, name, module)


def shared_models(specs: list[TaskSpec], method: MethodConfig, model: str | None, *, train_pooler: bool = False,
                  pooling: str | None = None) -> tuple[list[nn.Module], Any]:
    """One model per task, all on the first one's backbone and adapter, each with its own head (and pooler when
    trained; under `pooling`, its own backbone object carries the masked-mean hook)."""
    models: list[nn.Module] = []
    tokenizer = None
    for spec in specs:
        task_model, tokenizer = load_task_model(spec, model)
        if getattr(task_model.config, "is_encoder_decoder", False):
            raise PeltError("shared adapters with separate heads need an encoder; T5 shares everything text to text")
        if not models:  # as pelt train chooses, so that the per-task adapters compare
            pooling = default_pooling(task_model, pooling, train_pooler)
            apply_method(task_model, method, train_pooler=train_pooler, pooling=pooling)
        else:
            first = models[0]
            if pooling is not None:
                replace_pooler(task_model, pooling)
            _share_backbone(task_model, first, keep_pooler=train_pooler)
            shared = first.pelt_state
            task_model.pelt_state = PeltState(shared.config, shared.added, shared.unfrozen,
                                              head_parameter_names(task_model, train_pooler=train_pooler),
                                              shared.base_param_count, train_pooler, pooling=pooling)
        models.append(task_model)
    return models, tokenizer


def _shared_tasks(tasks: list[str]) -> list[TaskSpec]:
    specs = [get_task(t) for t in tasks]
    if len({spec.name for spec in specs}) < 2:
        raise PeltError(f"a shared adapter needs at least two different tasks, got {', '.join(tasks) or 'none'}")
    for spec in specs:
        if spec.kind not in ("classification", "regression"):
            raise PeltError(f"shared adapters train classification and regression heads; {spec.name} is "
                            f"{spec.kind.replace('_', ' ')}")
    return specs


def train_shared_adapter(
    tasks: list[str],
    method: MethodConfig,
    train_config: TrainConfig,
    settings: RunSettings | None = None,
    *,
    log: Any = print,
    **fields: Any,
) -> dict[str, Any]:
    """Train one adapter on every task in `tasks` (heads separate); keep the epoch with the best mean validation
    score; write each task's adapter to `<output_dir>/<task>/adapter` and results.json to `output_dir`.
    Unset protocol settings (epochs, batch size, length, warm-up) take the first task's defaults. `settings` (or
    its fields as keyword arguments) as `pelt.pipeline.finetune` takes them; the split protocol defaults to the
    Compacter paper's."""
    run = run_settings(settings, fields, split_protocol="compacter")
    specs = _shared_tasks(tasks)
    config = train_config.for_task(specs[0])
    out = Path(config.output_dir)
    # one run at a time in the folder; with overwrite, results.json and every task's adapter are replaced together
    with claim_run_folder(out, overwrite=config.overwrite, parts=(RESULTS_FILE, *(spec.name for spec in specs))):
        set_seed(config.seed)
        models, tokenizer = shared_models(specs, method, run.model, train_pooler=run.train_pooler,
                                          pooling=run.pooling)
        config = fit_max_length(models[0], config, asked=train_config.max_length is not None, on_note=log)
        formulations = [formulation_for(spec, m.config, tokenizer, config.max_length) for spec, m in zip(specs, models)]
        data: list[DatasetDict] = []
        for spec in specs:
            data.append(load_splits(spec, run.data_dir, protocol=run.split_protocol,  # type: ignore[arg-type]
                                    split_seed=run.split_seed, max_train_samples=run.train_size(spec.name),
                                    seed=run.split_seed))  # as finetune: the data's seed
        selection = [next(s for s in d if s != "train") for d in data]
        two_stage, learning_rate = recipe_of(config, method)
        info = run_info(run)
        history: list[dict[str, Any]] = []
        best = {"score": -math.inf}

        def evaluate(splits: list[str] | None = None) -> list[dict[str, dict[str, float]]]:
            results = []
            for m, f, d, sel in zip(models, formulations, data, selection):
                wanted = splits or [sel]
                results.append(evaluate_model(m, f, DatasetDict({s: d[s] for s in wanted if s in d}),
                                              config.eval_batch_size))
            return results

        def after_epoch(stage: Stage, epoch: int) -> None:
            scores = evaluate()
            mains = {spec.name: s[sel][spec.main_metric] for spec, s, sel in zip(specs, scores, selection)}
            mean = statistics.fmean(mains.values())
            history.append({"stage": stage.name, "epoch": epoch, "mean": mean, **mains})
            log(f"[{stage.name}] epoch {epoch}: mean validation {mean:.4f} "
                f"({', '.join(f'{k} {v:.4f}' for k, v in mains.items())})")
            if stage.trains_method and mean > best["score"]:
                best.update(score=mean, epoch=epoch)
                for spec, m, f in zip(specs, models, formulations):
                    save_adapter(m, out / spec.name / "adapter",
                                 metadata={**adapter_metadata(f, config.max_length, info),
                                           "shared_with": [s.name for s in specs]})

        started = time.perf_counter()
        train_interleaved(models, [spec.name for spec in specs], formulations,
                          [f.encode(d["train"], training=True) for f, d in zip(formulations, data)], config, method,
                          on_epoch=after_epoch)
        train_seconds = time.perf_counter() - started
        for spec, m in zip(specs, models):
            load_trained_weights(m, out / spec.name / "adapter")
        final = evaluate([s for s in ("validation", "test")])
        report = parameter_report(models[0])
        heads = {spec.name: parameter_report(m).groups["head"] for spec, m in zip(specs, models)}
        results = {
            "tasks": [s.name for s in specs], "method": method.method, "method_config": method.to_dict(),
            "train_config": {**asdict(config), "learning_rate": learning_rate,
                             "recipe": "two-stage" if two_stage else "joint"},
            "split_protocol": run.split_protocol, "best_epoch": best.get("epoch"), "history": history,
            "metrics": {spec.name: m for spec, m in zip(specs, final)},
            "main_metrics": {spec.name: spec.main_metric for spec in specs},
            "parameters": {"shared": report.method_total, "heads": heads, "base_params": report.base_params,
                           "stored_shared": report.method_total + sum(heads.values()),
                           "stored_per_task": len(specs) * report.method_total + sum(heads.values())},
            "train_seconds": round(train_seconds, 2),
        }
        write_json(out / "results.json", results)
        return results


def _main_score(metrics: dict[str, dict[str, float]], main: str) -> str:
    return " / ".join(f"{100 * metrics[s][main]:.1f}" for s in ("validation", "test") if s in metrics)


def analyze_shared(
    tasks: list[str],
    method: MethodConfig,
    train_config: TrainConfig,
    output_dir: str | os.PathLike,
    settings: RunSettings | None = None,
    **fields: Any,
) -> Path:
    """Per-task adapters and one shared adapter, trained with the same settings (each skipped when its results
    are already there), their similarity, and shared.md comparing scores and stored parameters. `settings` (or its
    fields) as `train_shared_adapter` takes them."""
    run = run_settings(settings, fields, split_protocol="compacter")
    out = Path(output_dir)
    per_task: dict[str, dict[str, Any]] = {}
    runs = out / "runs"  # trained weights and full results (with this machine's paths) stay out of the report
    for spec in _shared_tasks(tasks):
        name = spec.name
        folder = runs / "per_task" / name
        if not (folder / "results.json").is_file():
            # an unfinished run there (no results.json) is this function's own: replaced
            finetune(name, method, replace(train_config, output_dir=str(folder), overwrite=True), run)
        per_task[name] = json.loads((folder / "results.json").read_text())
    shared_folder = runs / "shared"
    if not (shared_folder / "results.json").is_file():
        train_shared_adapter(tasks, method, replace(train_config, output_dir=str(shared_folder), overwrite=True), run)
    shared = json.loads((shared_folder / "results.json").read_text())
    similarity = adapter_similarity({t: runs / "per_task" / t / "adapter" for t in per_task})
    write_similarity_report(similarity, out)
    params = shared["parameters"]
    lines = [f"# One {method.method} adapter for {', '.join(per_task)} against one per task", "",
             "Same model, method, data and training settings; the shared adapter's tasks keep separate heads and "
             "interleave their batches. Scores ×100 (validation / test where the split protocol has one).", "",
             "| task | main metric | per-task adapter | shared adapter |", "|---|---|---|---|"]
    for task, result in per_task.items():
        main = result["main_metric"]
        lines.append(f"| {task} | {main} | {_main_score(result['metrics'], main)} | "
                     f"{_main_score(shared['metrics'][task], main)} |")
    per_task_mean = statistics.fmean(r["metrics"][r["selection_split"]][r["main_metric"]] for r in per_task.values())
    shared_mean = statistics.fmean(shared["metrics"][t]["validation"][shared["main_metrics"][t]] for t in per_task)
    lines += [f"| mean (validation) | | {100 * per_task_mean:.1f} | {100 * shared_mean:.1f} |", "",
              "## Stored parameters", "",
              "| | adapter (without heads) | heads | total stored |", "|---|---|---|---|",
              f"| one adapter per task | {len(per_task)} × {params['shared']:,} | {sum(params['heads'].values()):,} | "
              f"{params['stored_per_task']:,} |",
              f"| one shared adapter | {params['shared']:,} | {sum(params['heads'].values()):,} | "
              f"{params['stored_shared']:,} |", "",
              f"Sharing stores {100 * (1 - params['stored_shared'] / params['stored_per_task']):.1f}% fewer "
              f"parameters ({100 * params['shared'] / params['base_params']:.4f}% of the base model for the adapter; "
              "the heads dominate what remains).", "",
              "What the per-task adapters share is in [similarity.md](similarity.md).", ""]
    summary = {"tasks": list(per_task), "method": method.method, "parameters": params,
               "per_task": {t: {"metrics": r["metrics"], "main_metric": r["main_metric"],
                                "train_seconds": r["train_seconds"]} for t, r in per_task.items()},
               "shared": {k: shared[k] for k in ("metrics", "best_epoch", "history", "train_seconds")},
               "train_config": shared["train_config"] | {"output_dir": None}}
    write_json(out / "shared.json", summary)
    path = out / "shared.md"
    path.write_text("\n".join(lines))
    return path
