"""What each layer's self-attention sublayer puts out, and how fine-tuning changes it (the Hadamard paper's Fig. 1).

The captured tensor is the output of the attention output projection W_o of every layer: the sublayer output
before the residual add and its LayerNorm, which is exactly what the Hadamard adapter rescales. Forward hooks
read it and return nothing, so the model computes what it would without them; padding tokens are dropped.
"""

from __future__ import annotations

import inspect
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from pelt.arch import LayerRef, base_model_path, get_arch, iter_layers, join
from pelt.errors import PeltError

__all__ = ["AttentionNormStats", "attention_norm_statistics", "capture_sublayer_outputs", "encoder_batches",
           "encoder_layers", "plot_attention_norms"]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encoder_batches(encoded: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of a formulation-encoded split, model inputs only, in dataset order (so two models see the
    same tokens in the same places)."""
    columns = [c for c in MODEL_INPUTS if c in encoded.column_names]
    if "input_ids" not in columns:
        raise PeltError("the encoded data has no input_ids column; pass a split encoded by a task formulation")
    collator = DataCollatorWithPadding(tokenizer)
    for start in range(0, len(encoded), batch_size):
        rows = encoded.select(range(start, min(start + batch_size, len(encoded))))
        features = [{c: row[c] for c in columns} for row in rows]
        if isinstance(features[0]["input_ids"][0], list):  # multiple choice: one sequence per choice
            features = [{c: f[c][i] for c in columns} for f in features for i in range(len(f["input_ids"]))]
        yield dict(collator(features))


def encoder_layers(model: nn.Module) -> list[LayerRef]:
    """The layers of the model's first stack (the encoder), the ones the analyses look at."""
    stack = get_arch(model).stacks[0]
    return [ref for ref in iter_layers(model) if ref.stack is stack]


def _stack_entry(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The module that runs the encoder stack on input_ids, and that stack's attention output paths."""
    entry_path = join(base_model_path(model), get_arch(model).stacks[0].entry)
    entry = model.get_submodule(entry_path) if entry_path else model
    return entry, [ref.site("attention_output") for ref in encoder_layers(model)]


@torch.no_grad()
def capture_sublayer_outputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Per layer of the encoder stack, the self-attention sublayer output of every non-padding token:
    one float32 CPU tensor of shape (tokens, hidden) per layer, tokens in batch order."""
    entry, paths = _stack_entry(model)
    captured: list[list[torch.Tensor]] = [[] for _ in paths]
    mask: list[torch.Tensor] = []

    def hook(index: int) -> Any:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            captured[index].append(output[mask[0]].detach().float().cpu())
        return record

    handles = [model.get_submodule(path).register_forward_hook(hook(i)) for i, path in enumerate(paths)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    accepted = set(inspect.signature(entry.forward).parameters)
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS and k in accepted}
            mask[:] = [inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()]  # no mask: no padding
            entry(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not captured[0]:
        raise PeltError("no batches to capture: the data split is empty")
    return [torch.cat(parts) for parts in captured]


@dataclass
class AttentionNormStats:
    """Per layer, the norms of the sublayer outputs before and after fine-tuning and of their difference."""

    before: list[torch.Tensor]  # per layer: ‖A‖ of each token, base model
    after: list[torch.Tensor]  # per layer: ‖A‖ of each token, fine-tuned model
    difference: list[torch.Tensor]  # per layer: ‖A_after - A_before‖ of each token

    def rows(self) -> list[dict[str, float]]:
        rows = []
        for layer, (x, y, d) in enumerate(zip(self.before, self.after, self.difference)):
            rows.append({
                "layer": layer,
                "norm_before": float(x.mean()), "norm_before_std": float(x.std()),
                "norm_after": float(y.mean()), "norm_after_std": float(y.std()),
                "norm_change": float((y - x).mean()),  # how much longer (or shorter) the outputs became
                "difference": float(d.mean()),  # how far they moved
                "relative_difference": float((d / x.clamp_min(1e-12)).mean()),
            })
        return rows

    def markdown(self) -> str:
        lines = ["| layer | ‖A‖ before | ‖A‖ after | ‖A‖ after − before | ‖A_after − A_before‖ | relative to ‖A‖ before |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows():
            lines.append(f"| {r['layer']} | {r['norm_before']:.3f} ± {r['norm_before_std']:.3f} | "
                         f"{r['norm_after']:.3f} ± {r['norm_after_std']:.3f} | {r['norm_change']:+.3f} | "
                         f"{r['difference']:.3f} | {100 * r['relative_difference']:.1f}% |")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        rows = self.rows()
        most = max(rows, key=lambda r: r["relative_difference"])
        return {"tokens": int(self.before[0].numel()), "layers": len(rows),
                "mean_relative_difference": statistics.fmean(r["relative_difference"] for r in rows),
                "most_changed_layer": most["layer"]}


def attention_norm_statistics(before: list[torch.Tensor], after: list[torch.Tensor]) -> AttentionNormStats:
    """Norm statistics of captured outputs of the same tokens through two models (base, then fine-tuned)."""
    if len(before) != len(after) or any(x.shape != y.shape for x, y in zip(before, after)):
        raise PeltError("the two captures differ in layers or tokens; capture both models on the same batches")
    return AttentionNormStats([x.norm(dim=-1) for x in before], [y.norm(dim=-1) for y in after],
                              [(y - x).norm(dim=-1) for x, y in zip(before, after)])


def plot_attention_norms(stats: AttentionNormStats, path: str | Path, *, title: str = "") -> Path:
    """Three panels like the paper's Fig. 1: the norm distribution per layer before, after, and its change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(len(stats.before)))
    panels = [("(a) before fine-tuning: ‖A‖", stats.before),
              ("(b) after fine-tuning: ‖A‖", stats.after),
              ("(c) change: ‖A_after − A_before‖", stats.difference)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (label, values) in zip(axes, panels):
        ax.boxplot([v.numpy() for v in values], positions=layers, showfliers=False)
        ax.set_xlabel("layer")
        ax.set_title(label, fontsize=10)
    axes[0].set_ylabel("per-token norm of the self-attention output")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
