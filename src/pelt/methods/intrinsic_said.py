"""Intrinsic-SAID (Aghajanyan et al., 2021): train a d'-dimensional vector that a fixed random map spreads over
every weight of the model, `θ_i = θ_i⁰ + λ_i · P_i(z)`, with one learned scale λ_i per tensor ("structure aware").

Each P_i is a Fastfood projection regenerated from (seed, i), so an adapter file holds only z, the λ and the seed.
The projected tensors are every parameter of the embeddings and the transformer layers; the task head, BERT's
pooler (which `--train-pooler` trains directly) and an untied LM head are not projected (a tied LM head, as in
T5, reads the same θ⁰ + δ as the embeddings it is tied to). At z = 0 the model is exactly the base model.
Small tensors (N_i = 2^⌈log2 D_i⌉ < d') see only the first N_i coordinates of z, as in the Fastfood code of Li
et al. that SAID was built on; that also keeps their per-entry change at the reference's scale.

The base weights stay where they are, frozen; a parametrization adds `λ_i P_i(z)` when a module reads its weight,
computed once per forward pass of the model (T5 reads some weights several times per call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from pelt.arch import ArchSpec, base_model_path, join, pooler_path
from pelt.errors import PeltError
from pelt.methods.base import Injection, Method, MethodConfig, option, register_method
from pelt.methods.fastfood import FastfoodBank


@dataclass
class IntrinsicSAIDConfig(MethodConfig):
    method = "intrinsic-said"
    dim: int = option(20_000, "intrinsic dimension d' (the trained vector's size)")
    projection_seed: int = option(
        0, "seed of the random projections (saved with the adapter; the same seed regenerates the same P)"
    )

    def validate(self) -> None:
        if self.dim < 1:
            raise PeltError(f"dim must be at least 1, got {self.dim}")
        if not 0 <= self.projection_seed < 2**31:
            raise PeltError(f"projection_seed must be in [0, 2^31), got {self.projection_seed}")


class IntrinsicSubspace(nn.Module):
    """The trained vector z, the per-tensor scales λ, and one Fastfood projection per tensor."""

    def __init__(self, dim: int, shapes: list[torch.Size], seed: int, device: torch.device) -> None:
        super().__init__()
        self.intrinsic = nn.Parameter(torch.zeros(dim, device=device))
        self.scales = nn.Parameter(torch.ones(len(shapes), device=device))
        self.shapes = shapes
        self.bank = FastfoodBank(dim, [s.numel() for s in shapes], [seed * 1_000_003 + i for i in range(len(shapes))])
        self._cache: tuple[tuple, list[torch.Tensor]] | None = None
        self._forward_id: int | None = None
        self._forwards = 0

    def _apply(self, fn: Any, recurse: bool = True) -> "IntrinsicSubspace":
        super()._apply(fn, recurse)
        self._cache = None  # deltas on the old device or dtype
        return self

    def _cache_key(self) -> tuple | None:
        """When a computed delta may be reused: within one forward pass while training; across calls without
        gradients as long as z and λ are unchanged (evaluation, generation)."""
        if not torch.is_grad_enabled():
            return ("no-grad", self.intrinsic._version, self.scales._version)
        if self._forward_id is not None:
            return ("forward", self._forward_id)
        return None

    def deltas(self) -> list[torch.Tensor]:
        """λ_i P_i(z) for every tensor, in its shape: all at once, since the bank batches tensors by size."""
        key = self._cache_key()
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        projected = self.bank(self.intrinsic, self.scales)
        values = [v.view(shape) for v, shape in zip(projected, self.shapes)]
        if key is not None:
            self._cache = (key, values)
        return values

    def delta(self, index: int) -> torch.Tensor:
        return self.deltas()[index]

    def begin_forward(self, *_: Any) -> None:
        if torch.is_grad_enabled():
            self._cache = None  # a training step: drop what evaluation kept
        self._forwards += 1
        self._forward_id = self._forwards

    def end_forward(self, *_: Any) -> None:
        self._forward_id = None
        if torch.is_grad_enabled():
            self._cache = None  # the graph keeps what backward needs


class SubspaceDelta(nn.Module):
    """Parametrization of one base tensor: θ⁰ + λ_i P_i(z). Merge adds the delta into θ⁰; unmerge takes it out."""

    def __init__(self, subspace: IntrinsicSubspace, index: int, *, owns_original: bool = True) -> None:
        super().__init__()
        self._refs: list[Any] = [subspace]  # plain references: the subspace is registered once, in the backbone
        self.index = index
        self.owns_original = owns_original  # False on a tied copy (T5's LM head): merge must add the delta once
        self.merged = False
        self._merged_delta: torch.Tensor | None = None

    def attach(self, holder: nn.Module) -> None:
        """Remember the ParametrizationList that holds θ⁰ (`holder.original`)."""
        self._refs = [self._refs[0], holder]

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return original
        return original + self._refs[0].delta(self.index).to(original.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        original = self._refs[1].original
        self._merged_delta = self._refs[0].delta(self.index).to(original.dtype).clone()
        if self.owns_original:
            original.add_(self._merged_delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged or self._merged_delta is None:
            return
        if self.owns_original:
            self._refs[1].original.sub_(self._merged_delta)
        self._merged_delta = None
        self.merged = False


def _projected_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every backbone parameter except the pooler (trained as head or kept) and an untied LM head (frozen, as the
    Compacter paper keeps the output layer)."""
    prefix = base_model_path(model)
    backbone = model.get_submodule(prefix) if prefix else model
    excluded: set[int] = set()
    pooler = pooler_path(model)
    if pooler:
        excluded |= {id(p) for p in model.get_submodule(pooler).parameters()}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:  # an untied LM head stays frozen; a tied one follows the input embeddings
        tied = {id(p) for p in model.get_input_embeddings().parameters()}
        excluded |= {id(p) for p in output.parameters() if id(p) not in tied}
    return [(join(prefix, name), p) for name, p in backbone.named_parameters() if id(p) not in excluded]


@register_method
class IntrinsicSAID(Method):
    name = "intrinsic-said"
    config_class = IntrinsicSAIDConfig
    merge_module = SubspaceDelta
    default_learning_rate = 3e-2
    small_model_options = {"dim": 64}
    description = "a d'-dim vector spread over all weights by Fastfood projections, λ per tensor (Aghajanyan et al.)"
    sharing_refusal = ("method 'intrinsic-said' changes every weight of the backbone, so its task cannot share a "
                       "backbone with other tasks; merge it into a model of its own (pelt.load_adapter, then "
                       "pelt.merge)")

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, IntrinsicSAIDConfig)
        prefix = base_model_path(model)
        backbone = model.get_submodule(prefix) if prefix else model
        if hasattr(backbone, "intrinsic_said"):
            raise PeltError("this model already has an Intrinsic-SAID subspace; start from a fresh base model")
        targets = _projected_parameters(model)
        device = targets[0][1].device
        subspace = IntrinsicSubspace(config.dim, [p.shape for _, p in targets], config.projection_seed, device)
        backbone.intrinsic_said = subspace
        index_of = {id(p): i for i, (_, p) in enumerate(targets)}
        holders: dict[int, list[tuple[nn.Module, str]]] = {}  # every module that holds each projected tensor
        for module in model.modules():
            for attribute, param in module._parameters.items():
                if param is not None and id(param) in index_of:
                    holders.setdefault(index_of[id(param)], []).append((module, attribute))
        for index, (name, _) in enumerate(targets):
            owner_path, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_path) if owner_path else model
            self._parametrize(owner, attribute, SubspaceDelta(subspace, index))
            for module, tied_attribute in holders.get(index, []):
                if module is not owner:  # a tied copy (T5's LM head, v5's per-stack embed_tokens) reads θ⁰ + δ too
                    self._parametrize(module, tied_attribute, SubspaceDelta(subspace, index, owns_original=False))
        model.register_forward_pre_hook(subspace.begin_forward)
        model.register_forward_hook(subspace.end_forward)
        path = join(prefix, "intrinsic_said")
        return Injection(added=[f"{path}.intrinsic", f"{path}.scales"])

    @staticmethod
    def _parametrize(module: nn.Module, attribute: str, delta: SubspaceDelta) -> None:
        parametrize.register_parametrization(module, attribute, delta, unsafe=True)
        delta.attach(module.parametrizations[attribute])
