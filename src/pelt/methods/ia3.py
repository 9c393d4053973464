"""(IA)³ (Liu et al., 2022): learned rescaling of attention keys and values and of the FFN's inner activations.

One vector per target, initialised to ones (the base model exactly), no bias. Keys and values are rescaled at the
output of their projections; the FFN activations at the input of the FFN's output projection. Each vector folds
into the weight it touches (merge).

How it differs from the Hadamard adapter: the Hadamard adapter applies `W ⊙ A + b` — a scale *and* a shift —
to the attention sublayer's output (after W_o), and trains that sublayer's LayerNorm; (IA)³ only scales, and
does so inside the sublayers (keys, which change the attention pattern; values; the d_ff-wide FFN activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
from pelt.methods.ops import Affine, SiteOp, fold_affine
from pelt.methods.lora import check_targets, target_projections

# target -> (site, which side of the projection is scaled)
TARGETS = {"key": ("attention_key", "output"), "value": ("attention_value", "output"), "ffn": ("ffn_output", "input")}


@dataclass
class IA3Config(MethodConfig, LayerSelection):
    method = "ia3"
    targets: list[str] = option(["key", "value", "ffn"], "activations to rescale, from: key, value, ffn")

    def validate(self) -> None:
        self.validate_layers()
        check_targets(self.targets, TARGETS)


class ScaledLinear(nn.Module):
    """A projection whose output (side='output') or input (side='input') is multiplied by a learned vector."""

    def __init__(self, base_layer: nn.Linear, side: str) -> None:
        super().__init__()
        self.base_layer, self.side = base_layer, side
        size = base_layer.out_features if side == "output" else base_layer.in_features
        self.ia3_scale = nn.Parameter(torch.ones(size, device=base_layer.weight.device, dtype=base_layer.weight.dtype))
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.side == "input":
            return self.base_layer(x * self.ia3_scale)
        return self.base_layer(x) * self.ia3_scale

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        fold_affine(self.base_layer, self.side, self.ia3_scale, None)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        linear, s = self.base_layer, self.ia3_scale
        if torch.any(s.abs() < 1e-8):
            raise PeltError("cannot unmerge: some (IA)³ scales are ~0; reload the base model and the adapter")
        if self.side == "output":
            linear.weight.div_(s[:, None])
            if linear.bias is not None:
                linear.bias.div_(s)
        else:
            linear.weight.div_(s[None, :])
        self.merged = False


@register_method
class IA3(Method):
    name = "ia3"
    config_class = IA3Config
    merge_module = ScaledLinear
    default_learning_rate = 3e-3
    description = "learned rescaling of keys, values and FFN activations (Liu et al., 2022)"

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, IA3Config)
        sites = {t: site for t, (site, _) in TARGETS.items()}
        injection = Injection()
        projections = target_projections(model, config, arch, config.targets, sites, ScaledLinear)
        sides = [TARGETS[t][1] for _ in config.selected_layers(model, arch) for t in config.targets]
        for (path, linear), side in zip(projections, sides):
            replace_module(model, path, ScaledLinear(linear, side))
            injection.added.append(f"{path}.ia3_scale")
        return injection

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        return [Affine(path, module.side, scale=tensors[f"{path}.ia3_scale"])
                for path, module in modules_of_type(model, ScaledLinear)]
