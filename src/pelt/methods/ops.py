"""What a trained task is at each site of the backbone, in a form many tasks can share in one batch.

A method says, for one adapted model, which of these few operations it applies where
(`Method.mixed_batch_ops`); `pelt.multitask` then runs every task's operations in one forward pass, each example
reading its own task's tensors. The forms are the methods' formulas, written once:

| op             | at a module (path relative to the model)         | methods                                    |
|----------------|--------------------------------------------------|--------------------------------------------|
| Affine         | `x ⊙ s + t` on its input or output                | hadamard, ia3                              |
| Bias           | its bias becomes `b` (added where it has none)    | bitfit                                     |
| NormParams     | a norm's own weight (and bias)                    | hadamard's LayerNorm, the adapters' norms  |
| LowRankUpdate  | `y + up · down · x`                               | lora (the scale folded into `up`)          |
| Bottleneck     | `h + U f(D h)` on its output, D/U of four kinds   | the adapter family                         |
| Prompt         | vectors inserted into the input at a position     | prompt-tuning                              |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from pelt.errors import PeltError


@dataclass(frozen=True)
class Affine:
    path: str
    side: Literal["input", "output"]
    scale: torch.Tensor | None = None  # None: 1
    shift: torch.Tensor | None = None  # None: 0


@dataclass(frozen=True)
class Bias:
    path: str
    value: torch.Tensor


@dataclass(frozen=True)
class NormParams:
    path: str
    weight: torch.Tensor
    bias: torch.Tensor | None = None  # None: the base norm's own bias (or none)


@dataclass(frozen=True)
class LowRankUpdate:
    path: str
    down: torch.Tensor  # (r, in)
    up: torch.Tensor  # (out, r), the update's scale included


ProjectionKind = Literal["dense", "lowrank", "phm", "lphm"]


@dataclass(frozen=True)
class Projection:
    """One adapter projection `W x + b`, W given by its own parametrization:

    dense: weight (out, in); lowrank: left (out, r) @ right (r, in); phm: Σ_i rule_i ⊗ weight_i with rule (n, n, n)
    and weight (n, out/n, in/n); lphm: as phm with weight_i = left_i @ right_iᵀ, left (n, out/n, r), right
    (n, in/n, r). `shared` names tensors that several projections of one task hold once (Compacter's rule).
    """

    kind: ProjectionKind
    tensors: dict[str, torch.Tensor]
    bias: torch.Tensor | None = None
    shared: dict[str, str] = field(default_factory=dict)  # tensor name -> key of the task's shared tensor


@dataclass(frozen=True)
class Bottleneck:
    path: str
    activation: str
    down: Projection
    up: Projection


@dataclass(frozen=True)
class Prompt:
    path: str  # the module whose forward embeds the input
    vectors: torch.Tensor  # (p, embedding width)
    position: int  # inserted after this many input tokens
    max_positions: int | None  # the model's absolute positions (None: relative)


SiteOp = Affine | Bias | NormParams | LowRankUpdate | Bottleneck | Prompt


@torch.no_grad()
def fold_affine(module: nn.Module, side: str, scale: torch.Tensor | None, shift: torch.Tensor | None) -> bool:
    """Fold `⊙ s + t` on a linear layer's input or output, or on a norm's output, into its weight and bias (exact:
    the map is linear). Returns whether a bias had to be added (T5's projections have none)."""
    linear = isinstance(module, nn.Linear)
    added = shift is not None and getattr(module, "bias", None) is None
    if added:
        if not linear:  # T5's norms compute no bias
            raise PeltError(f"a shift on a {type(module).__name__} without a bias cannot be merged into its weights")
        module.bias = nn.Parameter(torch.zeros_like(module.weight[:, 0]), requires_grad=False)
    if side == "output":  # (W x + b) ⊙ s + t = (diag(s) W) x + (s ⊙ b + t); a norm's weight is the diagonal
        if scale is not None:
            module.weight.mul_(scale[:, None] if linear else scale)
            if getattr(module, "bias", None) is not None:
                module.bias.mul_(scale)
        if shift is not None:
            module.bias.add_(shift)
    else:  # W (x ⊙ s + t) + b = (W diag(s)) x + (W t + b)
        if shift is not None:
            module.bias.add_(module.weight @ shift)
        if scale is not None:
            module.weight.mul_(scale[None, :])
    return added
