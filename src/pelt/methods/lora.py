"""LoRA (Hu et al., 2021): a trainable low-rank update `(alpha / r) · B A` added to chosen frozen projections.

`A` starts random and `B` at zero, so the adapted model equals the base model exactly until trained; the update
folds into the projection's weight (merge) for inference at no extra cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pelt.arch import ArchSpec
from pelt.errors import PeltError
from pelt.methods.base import (
    Injection,
    LayerSelection,
    Method,
    MethodConfig,
    modules_of_type,
    option,
    register_method,
    replace_module,
)
from pelt.methods.ops import LowRankUpdate, SiteOp

# target name -> the architecture table's site
TARGET_SITES = {
    "query": "attention_query",
    "key": "attention_key",
    "value": "attention_value",
    "attention_output": "attention_output",
    "ffn_input": "ffn_input",
    "ffn_output": "ffn_output",
}


def check_targets(targets: list[str], known: dict[str, str]) -> None:
    if not targets:
        raise PeltError(f"targets is empty; choose from {', '.join(known)}")
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise PeltError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if len(set(targets)) != len(targets):
        raise PeltError(f"targets lists a projection twice: {', '.join(targets)}")


def target_projections(model: nn.Module, config: LayerSelection, arch: ArchSpec, targets: list[str],
                       known: dict[str, str], wrapper: type[nn.Module]) -> list[tuple[str, nn.Linear]]:
    """(path, Linear) of every target in the selected layers; checked before anything is replaced."""
    found = []
    for layer in config.selected_layers(model, arch):
        for target in targets:
            path = layer.site(known[target])
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise PeltError(
                    f"this {arch.family} model has no '{target}' projection at {path} "
                    "(T5 v1.1's gated FFN has wi_0/wi_1); choose other targets"
                ) from None
            if isinstance(module, wrapper):
                raise PeltError(f"{path} is already adapted; apply the method to a fresh base model")
            if not isinstance(module, nn.Linear):
                raise PeltError(f"{path} is a {type(module).__name__}, expected a Linear projection")
            found.append((path, module))
    return found


@dataclass
class LoRAConfig(MethodConfig, LayerSelection):
    method = "lora"
    rank: int = option(8, "rank r of the update B A")
    alpha: float = option(16.0, "the update is scaled by alpha / rank")
    dropout: float = option(0.0, "dropout on the input of the low-rank branch")
    targets: list[str] = option(["query", "value"], f"projections to adapt, from: {', '.join(TARGET_SITES)}")

    def validate(self) -> None:
        self.validate_layers()
        if self.rank < 1:
            raise PeltError(f"rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise PeltError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise PeltError(f"alpha must be > 0, got {self.alpha}")
        check_targets(self.targets, TARGET_SITES)


class LoRALinear(nn.Module):
    """`base(x) + (alpha / r) · B A dropout(x)`; B = 0 at init."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def delta(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.scale * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight.add_(self.delta())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.sub_(self.delta())
            self.merged = False


@register_method
class LoRA(Method):
    name = "lora"
    config_class = LoRAConfig
    merge_module = LoRALinear
    default_learning_rate = 5e-4
    merge_variants = ({"targets": ["query", "value", "attention_output", "ffn_input", "ffn_output"]},)
    description = "low-rank updates (alpha/r)·BA of chosen projections (Hu et al., 2021)"

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, LoRAConfig)
        injection = Injection()
        for path, linear in target_projections(model, config, arch, config.targets, TARGET_SITES, LoRALinear):
            replace_module(model, path, LoRALinear(linear, config.rank, config.alpha, config.dropout))
            injection.added += [f"{path}.lora_A", f"{path}.lora_B"]
        return injection

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        return [LowRankUpdate(path, tensors[f"{path}.lora_A"], module.scale * tensors[f"{path}.lora_B"])
                for path, module in modules_of_type(model, LoRALinear)]
