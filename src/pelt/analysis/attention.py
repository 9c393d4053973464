"""The two analyses of a fine-tuned reference against its base model, written as tables and figures.

`analyze_attention_norms` is the Hadamard paper's Fig. 1 (how far fine-tuning moves each layer's self-attention
output); `analyze_fitting` its Fig. 2 (which function class maps the outputs before fine-tuning to the ones after,
and what the task scores when that map replaces fine-tuning).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from torch import nn

from pelt.analysis.capture import (
    attention_norm_statistics,
    capture_sublayer_outputs,
    encoder_batches,
    encoder_layers,
    plot_attention_norms,
)
from pelt.analysis.fitting import (
    FIT_FUNCTIONS,
    IdentityMap,
    MappedSublayer,
    SublayerMap,
    fit_errors,
    fit_map,
    spectrum,
)
from pelt.analysis.reference import ReferencePair, load_reference_pair
from pelt.errors import PeltError
from pelt.files import write_json as _write_json
from pelt.methods.base import replace_module
from pelt.train import evaluate_model

__all__ = ["Captures", "analyze_attention_norms", "analyze_fitting", "fit_layer_maps", "model_with_fitted_maps"]


def _eval_split(data: DatasetDict) -> str:
    return next(name for name in data if name != "train")


def _relative(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """`path` as seen from `folder`: the results name their inputs without this machine's directories."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def analyze_attention_norms(
    finetuned: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    model: str | None = None,
    max_examples: int = 512,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Per-layer norms of the self-attention outputs on the validation split, before and after fine-tuning
    (attention_norms.md / .json / .png in `output_dir`)."""
    pair = load_reference_pair(finetuned, model=model)
    data = pair.splits(data_dir)
    split = _eval_split(data)
    encoded = pair.encode(data[split], max_examples)
    before = capture_sublayer_outputs(pair.base, encoder_batches(encoded, pair.tokenizer, batch_size))
    after = capture_sublayer_outputs(pair.finetuned, encoder_batches(encoded, pair.tokenizer, batch_size))
    stats = attention_norm_statistics(before, after)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{pair.spec.name}: self-attention outputs before and after full fine-tuning ({split}, {len(encoded)} examples)"
    plot_attention_norms(stats, folder / "attention_norms.png", title=title)
    result = {"task": pair.spec.name, "finetuned": _relative(finetuned, folder), "split": split,
              "examples": len(encoded), **stats.summary(), "layers": stats.rows()}
    _write_json(folder / "attention_norms.json", result)
    (folder / "attention_norms.md").write_text(
        f"# {title}\n\n{result['tokens']:,} tokens; ‖A‖ is the per-token norm of the attention output projection's "
        f"output (mean ± std over tokens).\n\n{stats.markdown()}\n\n![attention norms](attention_norms.png)\n")
    return result


def model_with_fitted_maps(pair: ReferencePair, maps: list[SublayerMap], *, finetuned_layernorms: bool = False
                           ) -> nn.Module:
    """The base model with each layer's attention output passed through its fitted map, under the fine-tuned
    task head (and, optionally, the fine-tuned attention LayerNorms, which the Hadamard adapter also trains)."""
    model = copy.deepcopy(pair.base)
    layers = encoder_layers(model)
    if len(maps) != len(layers):
        raise PeltError(f"{len(maps)} fitted maps for {len(layers)} layers; fit one per layer")
    copied = list(pair.head_names())
    if finetuned_layernorms:
        copied += [f"{ref.site('attention_norm')}.{name}" for ref in layers
                   for name, _ in model.get_submodule(ref.site("attention_norm")).named_parameters()]
    tuned = dict(pair.finetuned.named_parameters())
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name in copied:
            own[name].copy_(tuned[name])
    for ref, fitted in zip(layers, maps):
        path = ref.site("attention_output")
        replace_module(model, path, MappedSublayer(model.get_submodule(path), fitted))
    return model.eval()


@dataclass
class Captures:
    """The sublayer outputs of the fit and held-out batches through the base (x) and the fine-tuned (y) model."""

    fit_batches: list[dict[str, torch.Tensor]]
    heldout_batches: list[dict[str, torch.Tensor]]
    x_fit: list[torch.Tensor]
    y_fit: list[torch.Tensor]
    x_held: list[torch.Tensor]
    y_held: list[torch.Tensor]

    @classmethod
    def of(cls, pair: ReferencePair, fit_batches: list[dict[str, torch.Tensor]],
           heldout_batches: list[dict[str, torch.Tensor]]) -> "Captures":
        return cls(fit_batches, heldout_batches,
                   capture_sublayer_outputs(pair.base, fit_batches), capture_sublayer_outputs(pair.finetuned, fit_batches),
                   capture_sublayer_outputs(pair.base, heldout_batches),
                   capture_sublayer_outputs(pair.finetuned, heldout_batches))


def fit_layer_maps(pair: ReferencePair, function: str, captures: Captures, *, sequential: bool = False,
                   **options: float) -> tuple[list[SublayerMap], list[dict[str, Any]]]:
    """One fitted map per layer and its held-out errors. Independent: layer i maps the base output to the
    fine-tuned one on the same input. Sequential: layer i is fitted on its output in the base model whose lower
    layers already carry their fitted maps (the inputs the map will meet when the maps replace fine-tuning)."""
    layers = len(captures.x_fit)
    maps: list[SublayerMap] = []
    errors = []
    for i in range(layers):
        x_fit, x_held = captures.x_fit[i], captures.x_held[i]
        if sequential and i > 0:
            below = model_with_fitted_maps(pair, maps + [IdentityMap() for _ in range(layers - i)])
            x_fit = capture_sublayer_outputs(below, captures.fit_batches)[i]
            x_held = capture_sublayer_outputs(below, captures.heldout_batches)[i]
        maps.append(fit_map(function, x_fit, captures.y_fit[i], **options))
        errors.append(fit_errors(maps[i], x_held, captures.y_held[i]))
    return maps, errors


def analyze_fitting(
    finetuned: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    model: str | None = None,
    functions: list[str] | None = None,
    fit_examples: int = 512,
    heldout_examples: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    mlp_steps: int = 400,
    sequential: bool = False,
) -> dict[str, Any]:
    """Fit each function class per layer on training examples' outputs, measure it on held-out ones, and score
    the task with the fitted maps in place of fine-tuning (fitting.md / .json / .png in `output_dir`; with
    `sequential`, fitting_sequential.*). Independent fits compare the layers as the paper's Fig. 2 does; sequential
    ones fit each map on the inputs it meets once the maps replace fine-tuning (see `fit_layer_maps`)."""
    functions = list(functions or FIT_FUNCTIONS)
    unknown = [f for f in functions if f not in FIT_FUNCTIONS]
    if unknown:
        raise PeltError(f"unknown fitting function(s) {', '.join(unknown)}; available: {', '.join(FIT_FUNCTIONS)}")
    pair = load_reference_pair(finetuned, model=model)
    data = pair.splits(data_dir)
    split = _eval_split(data)
    fit_rows = pair.encode(data["train"].shuffle(seed=seed), fit_examples)
    held_rows = pair.encode(data[split], heldout_examples)

    captures = Captures.of(pair, list(encoder_batches(fit_rows, pair.tokenizer, batch_size)),
                           list(encoder_batches(held_rows, pair.tokenizer, batch_size)))
    maps: dict[str, list[SublayerMap]] = {}
    per_layer: list[dict[str, Any]] = []
    for function in functions:
        options = {"steps": mlp_steps, "seed": seed} if function == "mlp" else {}
        maps[function], errors = fit_layer_maps(pair, function, captures, sequential=sequential, **options)
        per_layer += [{"function": function, "layer": i, "parameters": fitted.num_parameters, **error}
                      for i, (fitted, error) in enumerate(zip(maps[function], errors))]
    x_fit, x_held, y_held = captures.x_fit, captures.x_held, captures.y_held
    tuned_outputs = [{"mean_value": float(y.double().mean()), **spectrum(y)} for y in y_held]

    evaluation = DatasetDict({name: split_data for name, split_data in data.items() if name != "train"})
    scores = [{"model": "full fine-tuning", "layernorms": "fine-tuned",
               "metrics": evaluate_model(pair.finetuned, pair.formulation, evaluation)}]
    for function in functions:
        for tuned_norms in (False, True):
            mapped = model_with_fitted_maps(pair, maps[function], finetuned_layernorms=tuned_norms)
            scores.append({"model": f"base + {function} maps", "function": function,
                           "layernorms": "fine-tuned" if tuned_norms else "base",
                           "metrics": evaluate_model(mapped, pair.formulation, evaluation)})
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = "fitting_sequential" if sequential else "fitting"
    result = {"task": pair.spec.name, "finetuned": _relative(finetuned, folder), "main_metric": pair.spec.main_metric,
              "fits": "sequential" if sequential else "independent",
              "fit_examples": len(fit_rows), "fit_tokens": int(x_fit[0].shape[0]), "heldout_split": split,
              "heldout_examples": len(held_rows), "heldout_tokens": int(x_held[0].shape[0]),
              "finetuned_outputs": tuned_outputs, "per_layer": per_layer, "scores": scores}
    _write_json(folder / f"{name}.json", result)
    _plot_fitting(result, functions, folder / f"{name}.png")
    (folder / f"{name}.md").write_text(_fitting_markdown(result, functions, name))
    return result


def _fitting_markdown(result: dict[str, Any], functions: list[str], name: str) -> str:
    main = result["main_metric"]
    layers = sorted({r["layer"] for r in result["per_layer"]})
    cell = {(r["function"], r["layer"]): r for r in result["per_layer"]}
    lines = [f"# {result['task']}: fitting the self-attention outputs after fine-tuning from the ones before", "",
             f"Fitted on {result['fit_tokens']:,} tokens of {result['fit_examples']} training examples, measured on "
             f"{result['heldout_tokens']:,} tokens of {result['heldout_examples']} {result['heldout_split']} examples. "
             "Unexplained change = ‖Y − f(X)‖² / ‖Y − X‖² (identity = 1, perfect = 0). " +
             ("Sequential fits: layer i is fitted on what it puts out once the layers below carry their fitted maps."
              if result["fits"] == "sequential" else
              "Independent fits: each layer maps the base model's output to the fine-tuned one on the same input."),
             "",
             "## Unexplained change per layer (held out)", "",
             "| function | parameters per layer | " + " | ".join(f"layer {i}" for i in layers) + " |",
             "|---|---|" + "---|" * len(layers)]
    for function in functions:
        params = cell[(function, layers[0])]["parameters"]
        lines.append(f"| {function} | {params:,} | " +
                     " | ".join(f"{cell[(function, i)]['unexplained_change']:.3f}" for i in layers) + " |")
    lines += ["", "## R² per layer (held out)", "",
              "| function | " + " | ".join(f"layer {i}" for i in layers) + " |", "|---|" + "---|" * len(layers)]
    for function in functions:
        lines.append(f"| {function} | " + " | ".join(f"{cell[(function, i)]['r2']:.4f}" for i in layers) + " |")
    lines += ["", "## Mean characteristic value per layer (held out)", "",
              "The mean eigenvalue of the outputs' covariance over tokens (the paper's Fig. 2c): the fine-tuned "
              "outputs' own, then each fitted map's.", "",
              "| outputs | " + " | ".join(f"layer {i}" for i in layers) + " |", "|---|" + "---|" * len(layers),
              "| fine-tuned | " + " | ".join(f"{t['mean_eigenvalue']:.4f}" for t in result["finetuned_outputs"]) + " |"]
    for function in functions:
        lines.append(f"| {function} | " +
                     " | ".join(f"{cell[(function, i)]['mean_eigenvalue']:.4f}" for i in layers) + " |")
    splits = list(result["scores"][0]["metrics"])
    lines += ["", f"## Task score ({main} ×100) with the fitted maps in place of fine-tuning", "",
              "Base model, each layer's attention output through its fitted map, the fine-tuned head on top; the "
              "attention LayerNorms either the base model's or the fine-tuned ones.", "",
              "| model | attention LayerNorms | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
    for score in result["scores"]:
        lines.append(f"| {score['model']} | {score['layernorms']} | " +
                     " | ".join(f"{100 * score['metrics'][s][main]:.1f}" for s in splits) + " |")
    lines += ["", f"![fitting]({name}.png)", ""]
    return "\n".join(lines)


def _plot_fitting(result: dict[str, Any], functions: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.2))
    for function in functions:
        rows = sorted((r for r in result["per_layer"] if r["function"] == function), key=lambda r: r["layer"])
        layers = [r["layer"] for r in rows]
        left.plot(layers, [max(r["unexplained_change"], 1e-6) for r in rows], marker="o", label=function)
        middle.plot(layers, [r["mean_value"] for r in rows], marker="o", label=function)
        right.plot(layers, [r["mean_eigenvalue"] for r in rows], marker="o", label=function)
    tuned = result["finetuned_outputs"]
    for ax, key in ((middle, "mean_value"), (right, "mean_eigenvalue")):
        ax.plot(range(len(tuned)), [t[key] for t in tuned], color="black", linestyle="--", marker="s",
                label="fine-tuned")
        ax.set_xlabel("layer")
        ax.legend(fontsize=8)
    left.set_yscale("log")
    left.set_xlabel("layer")
    left.set_ylabel("unexplained change ‖Y − f(X)‖² / ‖Y − X‖²")
    left.set_title("(a) fit error on held-out tokens", fontsize=10)
    left.legend(fontsize=8)
    middle.set_ylabel("mean output value")
    middle.set_title("(b) mean value of the attention output", fontsize=10)
    right.set_ylabel("mean eigenvalue of the output covariance")
    right.set_title("(c) mean characteristic value", fontsize=10)
    fig.suptitle(f"{result['task']}: fitting fine-tuned attention outputs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
