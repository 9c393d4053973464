"""The method core every method shares: apply, trainable sets, parameter report, merge.

Saving and loading adapters live in `pelt.adapter_files`, BERT's pooler replacement in `pelt.pooling`.

`apply_method` records what it did in `model.pelt_state`; everything else reads that record, so the trainable
set saved to disk is the one the method declared, not whatever happens to have requires_grad at save time
(the two-stage recipe toggles those flags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pelt.arch import base_model, get_arch, head_module_names, is_layer_norm, pooler_path
from pelt.errors import PeltError
from pelt.methods import MethodConfig, get_method
from pelt.pooling import replace_pooler


@dataclass
class PeltState:
    """What apply_method did to a model."""

    config: MethodConfig
    added: list[str]  # parameters the method created
    unfrozen: list[str]  # existing base parameters it trains (LayerNorms, biases, all weights for full FT)
    head: list[str]  # task-head parameters (trained, reported apart)
    base_param_count: int
    train_pooler: bool = False
    merged: bool = False
    pooling: str | None = None  # "cls" or "mean" when BERT's pooler was replaced (see TokenPooling)

    @property
    def trainable(self) -> list[str]:
        return sorted(set(self.added) | set(self.unfrozen) | set(self.head))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_model_argument(model: Any, function: str) -> None:
    """The public functions take a transformers model: anything else is refused here, in one line, not by an
    AttributeError from deep inside."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise PeltError(f"{function} takes a transformers model (an nn.Module with a .config, e.g. from "
                        f"AutoModelForSequenceClassification.from_pretrained), got {type(model).__name__}")


def check_path_argument(path: Any, function: str) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise PeltError(f"{function} takes a folder path (str or pathlib.Path), got {type(path).__name__}")


def _state(model: nn.Module) -> PeltState:
    check_model_argument(model, "this function")
    state = getattr(model, "pelt_state", None)
    if state is None:
        raise PeltError("this model has no pelt method applied; call pelt.apply_method(model, config) first")
    return state


def head_parameter_names(model: nn.Module, *, train_pooler: bool = False) -> list[str]:
    modules = head_module_names(model)
    if train_pooler:
        pooler = pooler_path(model)
        if pooler is None:
            raise PeltError(f"train_pooler: this {type(model).__name__} has no pooler; leave the option off")
        modules.append(pooler)
    return [f"{m}.{n}" for m in modules for n, _ in model.get_submodule(m).named_parameters()]


def apply_method(
    model: nn.Module,
    config: MethodConfig,
    *,
    train_head: bool = True,
    train_pooler: bool = False,
    pooling: str | None = None,
) -> nn.Module:
    """Inject a method into a transformers model and freeze everything it does not train.

    The task head (a classifier outside the backbone) is trained too unless `train_head=False`. With
    `train_pooler`, BERT's pooler counts as part of the head: RoBERTa/ELECTRA/DeBERTa heads train the same
    dense layer from scratch, and checkpoints tuned without it (sentence-embedding models) leave it untrained.
    `pooling` ("cls" or "mean") instead replaces BERT's pooler by a parameter-free one (see TokenPooling).
    """
    check_model_argument(model, "apply_method")
    if not isinstance(config, MethodConfig):
        raise PeltError(f"apply_method takes a method config (e.g. pelt.HadamardConfig()), got {type(config).__name__}")
    if getattr(model, "pelt_state", None) is not None:
        raise PeltError("a pelt method is already applied to this model; start again from a fresh base model")
    if pooling is not None and train_pooler:
        raise PeltError(f"train_pooler trains BERT's pooler and pooling={pooling} removes it; pick one")
    arch = get_arch(model)
    method = get_method(config.method)
    base_count = count_parameters(base_model(model))
    head = head_parameter_names(model, train_pooler=train_pooler) if train_head else []
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    # the pooler goes before the method sees the model, so no method trains or projects its weights
    undo_pooling = replace_pooler(model, pooling) if pooling is not None else None
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        injection = method.inject(model, config, arch)
    except Exception:  # methods check sizes before replacing modules: give the model back as it came
        if undo_pooling is not None:
            undo_pooling()
        for name, p in model.named_parameters():
            if name in flags:
                p.requires_grad_(flags[name])
        raise
    state = PeltState(config, injection.added, injection.unfrozen, head, base_count, train_pooler, pooling=pooling)
    names = dict(model.named_parameters())
    missing = [n for n in state.trainable if n not in names]
    if missing:  # a method bug, not bad input
        raise RuntimeError(f"method '{method.name}' declared parameters that do not exist: {missing[:3]}")
    trainable = set(state.trainable)
    for name, p in names.items():  # parameters a method created but does not train (a frozen part) stay frozen
        p.requires_grad_(name in trainable)
    model.pelt_state = state
    return model


def set_trainable(model: nn.Module, *, method: bool = True, head: bool = True) -> None:
    """Switch the method's parameters and the head on or off (the two-stage recipe trains the head first)."""
    state = _state(model)
    on = set(state.added) | set(state.unfrozen) if method else set()
    if head:
        on |= set(state.head)
    for name, p in model.named_parameters():
        p.requires_grad_(name in on)


# ---- parameter report ----------------------------------------------------------------------------------------

GROUPS = ("method", "layernorm", "bias", "other", "head")


@dataclass
class ParameterReport:
    """Trained parameters by group, as the papers count them (percent of the base model's own parameters)."""

    method: str
    base_params: int
    groups: dict[str, int] = field(default_factory=dict)

    @property
    def method_total(self) -> int:
        """What the papers report: the method's weights plus the LayerNorms and biases it unfreezes."""
        return sum(v for k, v in self.groups.items() if k != "head")

    def percent(self, count: int) -> float:
        return 100.0 * count / self.base_params

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "base_params": self.base_params,
            "groups": dict(self.groups),
            "method_total": self.method_total,
            "method_percent": self.percent(self.method_total),
            "head": self.groups.get("head", 0),
        }

    def table(self) -> str:
        labels = {
            "method": "method weights",
            "layernorm": "LayerNorms",
            "bias": "biases",
            "other": "other base weights",
            "head": "task head",
        }
        rows = [(labels[g], self.groups[g]) for g in GROUPS if self.groups.get(g)]
        rows.append((f"total ({self.method}, without head)", self.method_total))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'group':<{width}}  {'params':>12}  {'% of base':>10}"]
        for label, count in rows:
            lines.append(f"{label:<{width}}  {count:>12,}  {self.percent(count):>9.4f}%")
        lines.append(f"{'base model':<{width}}  {self.base_params:>12,}")
        return "\n".join(lines)


def parameter_report(model: nn.Module) -> ParameterReport:
    state = _state(model)
    modules = dict(model.named_modules())
    added, head = set(state.added), set(state.head)
    groups = {g: 0 for g in GROUPS}
    for name, p in model.named_parameters():
        if name not in head and name not in added and name not in state.unfrozen:
            continue
        if name in head:
            group = "head"
        elif name in added:
            group = "method"
        elif is_layer_norm(modules[name.rpartition(".")[0]]):
            group = "layernorm"
        elif name.endswith("bias"):
            group = "bias"
        else:
            group = "other"
        groups[group] += p.numel()
    return ParameterReport(state.config.method, state.base_param_count, groups)


# ---- merge ---------------------------------------------------------------------------------------------------


def merge(model: nn.Module) -> None:
    """Fold the method into the base weights: same outputs, no extra inference cost. Reversible by unmerge."""
    state = _state(model)
    get_method(state.config.method).merge(model)
    state.merged = True


def unmerge(model: nn.Module) -> None:
    state = _state(model)
    get_method(state.config.method).unmerge(model)
    state.merged = False
