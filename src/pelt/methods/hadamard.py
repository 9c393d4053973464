"""Hadamard adapter (Chen et al., CIKM 2023): `A' = W ⊙ A + b` on each layer's self-attention output.

`W, b ∈ R^d` per layer, initialised to 1 and 0 so the adapted model starts equal to the base model. Trained with
the LayerNorm of the attention sublayer (and the task head), after a first stage that trains the head alone.
The map is element-wise linear, so it folds exactly into the attention output projection W_o.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    trained_norm_ops,
)
from pelt.methods.ops import Affine, SiteOp, fold_affine

PLACEMENTS = ("output", "input")


@dataclass
class HadamardConfig(MethodConfig, LayerSelection):
    method = "hadamard"
    placement: Literal["output", "input"] = option(
        "output",
        "where W ⊙ A + b acts: 'output' = after the attention output projection W_o (before the residual add "
        "and LayerNorm), 'input' = on the concatenated heads before W_o",
        choices=PLACEMENTS,
    )
    train_layernorm: bool = option(True, "also train the LayerNorm of each adapted attention sublayer")
    # The module ablation of the paper (its Fig. 5): a part that is not trained stays at its identity value.
    train_weight: bool = option(True, "train the element-wise weight W (off: W stays 1)")
    train_bias: bool = option(True, "train the bias b (off: b stays 0)")

    def validate(self) -> None:
        self.validate_layers()
        if self.placement not in PLACEMENTS:
            raise PeltError(f"placement must be one of {', '.join(PLACEMENTS)}, got '{self.placement}'")
        if not (self.train_weight or self.train_bias or self.train_layernorm):
            raise PeltError("train_weight, train_bias and train_layernorm are all off, so the adapter would train "
                            "nothing; turn at least one of them on")


class HadamardLinear(nn.Module):
    """Wraps a sublayer's output projection and applies the element-wise map before or after it."""

    def __init__(self, base_layer: nn.Linear, placement: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.placement = placement
        size = base_layer.out_features if placement == "output" else base_layer.in_features
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.hadamard_weight = nn.Parameter(torch.ones(size, **factory))
        self.hadamard_bias = nn.Parameter(torch.zeros(size, **factory))
        self.merged = False
        self._bias_added_by_merge = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.placement == "input":
            return self.base_layer(x * self.hadamard_weight + self.hadamard_bias)
        return self.base_layer(x) * self.hadamard_weight + self.hadamard_bias

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        # T5 projections have no bias: merging b adds one
        self._bias_added_by_merge = fold_affine(self.base_layer, self.placement, self.hadamard_weight,
                                                self.hadamard_bias)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        linear, w, b = self.base_layer, self.hadamard_weight, self.hadamard_bias
        if torch.any(w.abs() < 1e-8):
            raise PeltError(
                "cannot unmerge: some Hadamard weights are ~0, so the base weights cannot be recovered; "
                "reload the base model and the adapter instead"
            )
        if self.placement == "output":
            linear.weight.div_(w[:, None])
            linear.bias.sub_(b).div_(w)
        else:
            linear.weight.div_(w[None, :])
            linear.bias.sub_(linear.weight @ b)
        if self._bias_added_by_merge:
            linear.bias = None
            self._bias_added_by_merge = False
        self.merged = False


@register_method
class Hadamard(Method):
    name = "hadamard"
    config_class = HadamardConfig
    merge_module = HadamardLinear
    two_stage = True
    merge_variants = ({"placement": "output"}, {"placement": "input"})  # folded into W_o's rows or columns
    default_learning_rate = 5e-3
    description = "element-wise W ⊙ A + b on each self-attention output (Chen et al., 2023)"

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, HadamardConfig)
        injection = Injection()
        for layer in config.selected_layers(model, arch):
            path = layer.site("attention_output")
            target = model.get_submodule(path)
            if isinstance(target, HadamardLinear):
                raise PeltError(f"{path} already has a Hadamard adapter; apply the method to a fresh base model")
            if not isinstance(target, nn.Linear):
                raise PeltError(f"{path} is a {type(target).__name__}, expected a Linear projection")
            replace_module(model, path, HadamardLinear(target, config.placement))
            injection.added += [f"{path}.hadamard_{part}" for part, on in
                                (("weight", config.train_weight), ("bias", config.train_bias)) if on]
            if config.train_layernorm:
                norm_path = layer.site("attention_norm")
                injection.unfrozen += [f"{norm_path}.{n}" for n, _ in model.get_submodule(norm_path).named_parameters()]
        return injection

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        ops: list[SiteOp] = []
        for path, module in modules_of_type(model, HadamardLinear):
            weight, bias = tensors.get(f"{path}.hadamard_weight"), tensors.get(f"{path}.hadamard_bias")
            if weight is not None or bias is not None:  # W and b untrained (the LayerNorm-only ablation): identity
                ops.append(Affine(path, module.placement, weight, bias))
        return ops + trained_norm_ops(model, model.pelt_state.unfrozen, tensors)
