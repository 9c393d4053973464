"""Bottleneck adapters and their compact variants (the Compacter paper's adapter family).

Every method here inserts `h + U(f(D(h)))` after a sublayer's output projection, before the layer's residual add,
and trains the adapters with every LayerNorm of the backbone. They differ only in where the adapters go and in how
the projections D (d → k) and U (k → d) are parameterized:

| method          | placement                   | D and U                                             |
|-----------------|-----------------------------|-----------------------------------------------------|
| adapter         | attention and FFN (Houlsby) | dense                                               |
| pfeiffer        | one per layer (attention)   | dense                                               |
| adapterdrop     | Houlsby, first N layers off | dense                                               |
| adapter-lowrank | Houlsby                     | rank-r products                                     |
| phm-adapter     | Houlsby                     | PHM layers, each with its own A_i                   |
| compacter       | Houlsby                     | LPHM layers (rank-r B_i), one A_i set for the model |
| compacter++     | FFN only                    | as compacter                                        |

T5 decoders get adapters after self-attention and the FFN, never after cross-attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from pelt.arch import ArchSpec, base_model_path, is_layer_norm, join
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
from pelt.methods.ops import Bottleneck, Projection, SiteOp
from pelt.methods.phm import PATHS, PHMLinear, SharedRule, check_divisible

NON_LINEARITIES = ("gelu_new", "gelu", "relu", "silu", "tanh")
SHARED_NAME = "phm_shared_rule"  # where Compacter's shared A_i live, inside the backbone
PLACEMENTS = ("both", "attention", "ffn")
_SITES = {"both": ("attention_output", "ffn_output"), "attention": ("attention_output",), "ffn": ("ffn_output",)}


@dataclass
class BottleneckConfig(MethodConfig, LayerSelection):
    """Options every adapter of this family shares; each method's config changes some defaults."""

    reduction_factor: int = option(32, "bottleneck k = hidden size / reduction factor (the paper searches 32, 16, 8)")
    bottleneck: int | None = option(None, "bottleneck size k (overrides --reduction-factor)")
    non_linearity: Literal["gelu_new", "gelu", "relu", "silu", "tanh"] = option(
        "gelu_new", "non-linearity between the projections (gelu_new: GeLU, tanh approximation)",
        choices=NON_LINEARITIES)
    placement: Literal["both", "attention", "ffn"] = option(
        "both", "after the attention sublayer, the FFN sublayer, or both (Houlsby)", choices=PLACEMENTS)
    drop_first: int = option(0, "no adapters in the first N layers of each stack (AdapterDrop)")
    init_std: float = option(1e-3, "std of the normal init of the projection weights (near-identity start)")
    train_layernorm: bool = option(True, "also train every LayerNorm of the backbone (the Compacter paper does)")

    def validate(self) -> None:
        self.validate_layers()
        if self.reduction_factor < 1:
            raise PeltError(f"reduction_factor must be at least 1, got {self.reduction_factor}")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise PeltError(f"bottleneck must be at least 1, got {self.bottleneck}")
        if self.non_linearity not in NON_LINEARITIES:
            raise PeltError(f"non_linearity must be one of {', '.join(NON_LINEARITIES)}, got '{self.non_linearity}'")
        if self.placement not in PLACEMENTS:
            raise PeltError(f"placement must be one of {', '.join(PLACEMENTS)}, got '{self.placement}'")
        if self.drop_first < 0:
            raise PeltError(f"drop_first must be >= 0, got {self.drop_first}")
        if self.drop_first and (self.layers is not None or self.top_k is not None or self.bottom_k is not None):
            raise PeltError(
                f"drop_first={self.drop_first} and layers/top_k/bottom_k both choose the adapted layers; give one "
                "(adapterdrop drops 5 by default: pass drop_first 0 to choose layers with layers/top_k/bottom_k)"
            )
        if not self.init_std > 0:
            raise PeltError(f"init_std must be > 0, got {self.init_std}")

    def bottleneck_for(self, hidden_size: int) -> int:
        if self.bottleneck is not None:
            return self.bottleneck
        k = hidden_size // self.reduction_factor
        if k < 1:
            raise PeltError(
                f"reduction_factor={self.reduction_factor} leaves no bottleneck for hidden size {hidden_size}; "
                "use a smaller reduction factor or give --bottleneck"
            )
        return k


@dataclass
class HypercomplexOptions:
    """Mixin fields of the PHM-based adapters."""

    n: int = option(4, "number of Kronecker terms n (must divide the hidden size and the bottleneck)")
    phm_path: Literal["auto", "materialized", "factored"] = option(
        "auto", "compute W x by building W once per call or by the factored product (auto: the faster one)",
        choices=PATHS)

    def validate_hypercomplex(self, bottleneck: int | None) -> None:
        if self.phm_path not in PATHS:
            raise PeltError(f"phm_path must be one of {', '.join(PATHS)}, got '{self.phm_path}'")
        if bottleneck is not None:
            check_divisible(self.n, bottleneck=bottleneck)
        else:
            check_divisible(self.n)


# ---- modules -------------------------------------------------------------------------------------------------


class LowRankLinear(nn.Module):
    """`y = (L R) x + b` with L (out × r), R (r × in): r·(in + out) weights, applied as two thin matmuls."""

    def __init__(self, in_features: int, out_features: int, rank: int, init_std: float, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        factor_std = math.sqrt(init_std / math.sqrt(rank))  # so the product's entries have std ≈ init_std
        self.left = nn.Parameter(torch.empty(out_features, rank, **factory).normal_(0, factor_std))
        self.right = nn.Parameter(torch.empty(rank, in_features, **factory).normal_(0, factor_std))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.right), self.left, self.bias)


class BottleneckAdapter(nn.Module):
    """`h + U(f(D(h)))`: the adapter carries its own residual, so it starts near the identity."""

    def __init__(self, down: nn.Module, up: nn.Module, non_linearity: str) -> None:
        super().__init__()
        self.down, self.up = down, up
        self.non_linearity = ACT2FN[non_linearity]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.non_linearity(self.down(h)))


class AdaptedProjection(nn.Module):
    """A sublayer's output projection followed by its adapter, in the projection's place in the model."""

    def __init__(self, base_layer: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    # Some modeling code reads the projection's weight (T5 casts activations to its dtype).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))


# ---- methods -------------------------------------------------------------------------------------------------


class BottleneckMethod(Method):
    """Inject one adapter per chosen site; subclasses say how D and U are built."""

    init_output = "near"  # U f(D h) with small D, U: the change grows with the configured init std
    small_model_options = {"bottleneck": 8}  # the default d/32 would be 1 on a 32-wide model
    default_learning_rate = 3e-4

    def make_shared(self, config: BottleneckConfig, factory: dict) -> SharedRule | None:
        """Weights shared by every projection of the model (Compacter's A_i), or None."""
        return None

    def make_projection(self, config: BottleneckConfig, in_features: int, out_features: int,
                        shared: SharedRule | None, factory: dict) -> nn.Module:
        layer = nn.Linear(in_features, out_features, **factory)
        nn.init.normal_(layer.weight, std=config.init_std)
        nn.init.zeros_(layer.bias)
        return layer

    def check_sizes(self, config: BottleneckConfig, hidden_size: int, bottleneck: int) -> None:
        """Raise PeltError before the model is touched when the sizes do not fit this method."""

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, BottleneckConfig)
        layers = config.selected_layers(model, arch)
        if config.drop_first:
            for ref in layers:
                if config.drop_first >= ref.num_layers:
                    raise PeltError(f"drop_first={config.drop_first} leaves no layer of the {ref.stack.name} "
                                    f"({ref.num_layers} layers); use at most {ref.num_layers - 1}")
            layers = [ref for ref in layers if ref.index >= config.drop_first]
        sites = [ref.site(name) for ref in layers for name in _SITES[config.placement]]
        targets = []
        for path in sites:  # check everything first: a bad size must leave the model untouched
            target = model.get_submodule(path)
            if isinstance(target, AdaptedProjection):
                raise PeltError(f"{path} already has an adapter; apply the method to a fresh base model")
            if not isinstance(target, nn.Linear):
                raise PeltError(f"{path} is a {type(target).__name__}, expected a Linear projection")
            targets.append((path, target))
        hidden_size = targets[0][1].out_features
        bottleneck = config.bottleneck_for(hidden_size)
        self.check_sizes(config, hidden_size, bottleneck)

        weight = targets[0][1].weight
        shared = self.make_shared(config, {"device": weight.device, "dtype": weight.dtype})
        prefixes: tuple[str, ...] = tuple(f"{path}.adapter." for path in sites)
        if shared is not None:  # registered once, in the backbone; every adapter reads it from there
            holder = join(base_model_path(model), SHARED_NAME)
            model.get_submodule(base_model_path(model)).add_module(SHARED_NAME, shared)
            prefixes += (f"{holder}.",)
        for path, target in targets:
            d = target.out_features
            # Each adapter follows its own projection's device and dtype (T5 keeps `wo` in fp32 under bf16).
            factory = {"device": target.weight.device, "dtype": target.weight.dtype}
            adapter = BottleneckAdapter(
                self.make_projection(config, d, bottleneck, shared, factory),
                self.make_projection(config, bottleneck, d, shared, factory),
                config.non_linearity,
            )
            replace_module(model, path, AdaptedProjection(target, adapter))
        added = [name for name, _ in model.named_parameters() if name.startswith(prefixes)]
        unfrozen = []
        if config.train_layernorm:
            backbone = base_model_path(model)
            for name, module in model.named_modules():
                if is_layer_norm(module) and (not backbone or name.startswith(backbone + ".")):
                    unfrozen += [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        return Injection(added=added, unfrozen=unfrozen)

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        names = {id(p): name for name, p in model.named_parameters()}
        activation = model.pelt_state.config.non_linearity
        ops: list[SiteOp] = [
            Bottleneck(path, activation, _projection(module.adapter.down, names, tensors),
                       _projection(module.adapter.up, names, tensors))
            for path, module in modules_of_type(model, AdaptedProjection)
        ]
        return ops + trained_norm_ops(model, model.pelt_state.unfrozen, tensors)


def _projection(module: nn.Module, names: dict[int, str], tensors: dict[str, torch.Tensor]) -> Projection:
    """An adapter projection's trained tensors, by its parametrization."""
    def trained(parameter: nn.Parameter) -> torch.Tensor:
        return tensors[names[id(parameter)]]

    if isinstance(module, nn.Linear):
        return Projection("dense", {"weight": trained(module.weight)}, trained(module.bias))
    if isinstance(module, LowRankLinear):
        return Projection("lowrank", {"left": trained(module.left), "right": trained(module.right)},
                          trained(module.bias))
    assert isinstance(module, PHMLinear)
    rule = module.rule()
    shared = {"rule": names[id(rule)]} if module._shared else {}
    bias = trained(module.bias) if module.bias is not None else None
    if module.rank is None:
        return Projection("phm", {"rule": trained(rule), "weight": trained(module.phm_weight)}, bias, shared)
    return Projection("lphm", {"rule": trained(rule), "left": trained(module.phm_left),
                               "right": trained(module.phm_right)}, bias, shared)


@dataclass
class AdapterConfig(BottleneckConfig):
    method = "adapter"


@register_method
class HoulsbyAdapter(BottleneckMethod):
    name = "adapter"
    config_class = AdapterConfig
    description = "Houlsby bottleneck adapters after the attention and the FFN sublayers"


@dataclass
class PfeifferConfig(BottleneckConfig):
    method = "pfeiffer"
    placement: Literal["both", "attention", "ffn"] = option(
        "attention", "one adapter per layer, after the attention sublayer (best on T5 in the Compacter paper) "
        "or after the FFN (AdapterHub's default)", choices=PLACEMENTS)


@register_method
class PfeifferAdapter(BottleneckMethod):
    name = "pfeiffer"
    config_class = PfeifferConfig
    description = "one bottleneck adapter per layer (Pfeiffer-Adapter)"


@dataclass
class AdapterDropConfig(BottleneckConfig):
    method = "adapterdrop"
    drop_first: int = option(5, "no adapters in the first N layers of each stack (the paper: 5 of 12)")


@register_method
class AdapterDrop(BottleneckMethod):
    name = "adapterdrop"
    config_class = AdapterDropConfig
    description = "Houlsby adapters with none in the first N layers of each stack"
    small_model_options = {"bottleneck": 8, "drop_first": 1}  # of 3 layers


@dataclass
class LowRankConfig(BottleneckConfig):
    method = "adapter-lowrank"
    rank: int = option(1, "rank r of each projection's weight")

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise PeltError(f"rank must be at least 1, got {self.rank}")


@register_method
class AdapterLowRank(BottleneckMethod):
    name = "adapter-lowrank"
    config_class = LowRankConfig
    default_learning_rate = 3e-3
    description = "Houlsby adapters whose projections are rank-r products"

    def make_projection(self, config: BottleneckConfig, in_features: int, out_features: int,
                        shared: SharedRule | None, factory: dict) -> nn.Module:
        assert isinstance(config, LowRankConfig)
        return LowRankLinear(in_features, out_features, config.rank, config.init_std, **factory)


@dataclass
class PHMAdapterConfig(BottleneckConfig, HypercomplexOptions):
    method = "phm-adapter"
    init_std: float = option(1e-3, "std of the normal init of each projection's A_i (B_i: Glorot uniform)")

    def validate(self) -> None:
        super().validate()
        self.validate_hypercomplex(self.bottleneck)


@register_method
class PHMAdapter(BottleneckMethod):
    name = "phm-adapter"
    config_class = PHMAdapterConfig
    default_learning_rate = 3e-3
    description = "Houlsby adapters with PHM projections (sums of n Kronecker products), own A_i each"

    def check_sizes(self, config: BottleneckConfig, hidden_size: int, bottleneck: int) -> None:
        assert isinstance(config, HypercomplexOptions)
        check_divisible(config.n, hidden_size=hidden_size, bottleneck=bottleneck)

    def make_projection(self, config: BottleneckConfig, in_features: int, out_features: int,
                        shared: SharedRule | None, factory: dict) -> nn.Module:
        assert isinstance(config, PHMAdapterConfig)
        return PHMLinear(in_features, out_features, config.n, rule_init_std=config.init_std,
                         path=config.phm_path, **factory)


@dataclass
class CompacterConfig(BottleneckConfig, HypercomplexOptions):
    method = "compacter"
    rank: int = option(1, "rank r of the fast weights B_i = s_i t_iᵀ")
    init_std: float = option(1e-4, "std of the normal init of the shared A_i (as the Compacter configs); "
                                   "s_i, t_i: Glorot uniform")

    def validate(self) -> None:
        super().validate()
        self.validate_hypercomplex(self.bottleneck)
        if self.rank < 1:
            raise PeltError(f"rank must be at least 1, got {self.rank}")


@register_method
class Compacter(PHMAdapter):
    name = "compacter"
    config_class = CompacterConfig
    description = "Houlsby adapters with LPHM projections sharing one set of A_i across the model"

    def check_sizes(self, config: BottleneckConfig, hidden_size: int, bottleneck: int) -> None:
        super().check_sizes(config, hidden_size, bottleneck)
        assert isinstance(config, CompacterConfig)
        block = min(hidden_size, bottleneck) // config.n
        if config.rank >= block:
            raise PeltError(
                f"rank={config.rank} is not low-rank for blocks of {bottleneck // config.n}×{hidden_size // config.n}"
                f" (n={config.n}); use rank < {block}, or phm-adapter for full-rank blocks"
            )

    def make_shared(self, config: BottleneckConfig, factory: dict) -> SharedRule | None:
        assert isinstance(config, CompacterConfig)
        return SharedRule(config.n, config.init_std, **factory)

    def make_projection(self, config: BottleneckConfig, in_features: int, out_features: int,
                        shared: SharedRule | None, factory: dict) -> nn.Module:
        assert isinstance(config, CompacterConfig)
        return PHMLinear(in_features, out_features, config.n, rank=config.rank, shared=shared,
                         path=config.phm_path, **factory)


@dataclass
class CompacterPlusPlusConfig(CompacterConfig):
    method = "compacter++"
    placement: Literal["both", "attention", "ffn"] = option(
        "ffn", "Compacter++ keeps only the adapter after the FFN", choices=PLACEMENTS)


@register_method
class CompacterPlusPlus(Compacter):
    name = "compacter++"
    config_class = CompacterPlusPlusConfig
    description = "Compacter with one adapter per layer, after the FFN"

