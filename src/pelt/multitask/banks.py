"""Banks: the tensors of many tasks stacked along a first "slot" dimension, applied per example with no loop.

Every input row of a forward pass carries a task id (`Routing`, set by `MultiTaskModel` for the length of one call).
A bank maps task ids to its slots (slot 0 is the identity: ones, zeros, or the base norm's own weights), gathers
each row's tensors and applies them broadcast (element-wise forms) or as batched matrix products (low-rank
updates, bottleneck adapters). Rows of tasks a bank does not hold read slot 0, so a site a task does not adapt
is exactly the identity for its rows. A `Site` hooks one module of the backbone and runs its banks in the order
the methods' formulas give: input scale/shift, the module, low-rank updates, output scale/shift, bottlenecks.

Tasks with the same shapes at a site share one bank; tasks of other shapes (another rank, bottleneck or method)
get banks of their own there, so the work of a forward pass grows with the number of distinct configurations
at a site, never with the number of tasks.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from pelt.errors import PeltError
from pelt.methods.ops import Projection
from pelt.methods.prompt import call_kwargs


@dataclass
class Routing:
    """The task of every input row of the forward pass in progress."""

    rows: torch.Tensor  # (R,) task ids, 0 = no task
    owner: object = None  # the model whose tasks the ids number: hooks of any other model stay out of it
    expansions: tuple[int, ...] = ()  # how many copies of each row a generation makes (beams, returned sequences)
    widened_mask: torch.Tensor | None = None  # the attention mask once prompts are in (set by the prompt hook)
    _expanded: dict[int, torch.Tensor] = field(default_factory=dict)

    def ids_for(self, batch: int) -> torch.Tensor:
        """Task ids for a module input of `batch` rows: the rows themselves, or each row repeated for its beams.
        Anything else is not the routed rows (say, position embeddings a model runs through a projection) and must
        never reach a site: refused, rather than read as rows."""
        count = self.rows.shape[0]
        if batch == count:
            return self.rows
        if batch not in self._expanded:
            factor = batch // count if batch % count == 0 else 0
            if factor not in self.expansions:
                raise RuntimeError(f"a hooked module saw {batch} rows for {count} routed rows")
            self._expanded[batch] = self.rows.repeat_interleave(factor)
        return self._expanded[batch]


ROUTING: contextvars.ContextVar[Routing | None] = contextvars.ContextVar("pelt_routing", default=None)


def routing_of(owner: object) -> Routing | None:
    """The routing of the forward pass in progress, if it is `owner`'s."""
    routing = ROUTING.get()
    return routing if routing is not None and routing.owner is owner else None


class Bank(nn.Module):
    """Named tensors of many tasks, stacked: `getattr(bank, name)[slot]`; slot 0 holds `identity`."""

    def __init__(self, identity: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.fields = tuple(identity)
        for name, value in identity.items():
            self.register_buffer(name, value.detach().clone().unsqueeze(0), persistent=False)
        self.register_buffer("slot_of", torch.zeros(1, dtype=torch.long), persistent=False)
        self.tasks: list[int] = []

    def add(self, task: int, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.fields:
            stacked = getattr(self, name)
            value = tensors[name].to(device=stacked.device, dtype=stacked.dtype).unsqueeze(0)
            setattr(self, name, torch.cat([stacked, value]))
        self.tasks.append(task)

    def remove(self, task: int) -> None:
        slot = self.tasks.index(task) + 1
        for name in self.fields:
            stacked = getattr(self, name)
            setattr(self, name, torch.cat([stacked[:slot], stacked[slot + 1:]]))
        self.tasks.remove(task)

    def reindex(self, capacity: int) -> None:
        """Rebuild the task id -> slot table for task ids below `capacity`."""
        table = torch.zeros(capacity, dtype=torch.long)
        table[torch.tensor(self.tasks, dtype=torch.long)] = torch.arange(1, len(self.tasks) + 1)
        self.slot_of = table.to(self.slot_of.device)

    def slots(self, routing: Routing, batch: int) -> torch.Tensor:
        return self.slot_of[routing.ids_for(batch)]

    def gather(self, name: str, slots: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)[slots]

    def stored_bytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.fields)


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(R, d) row vectors shaped to broadcast over the middle dimensions of `like` (R, ..., d)."""
    return values.view(values.shape[0], *([1] * (like.dim() - 2)), values.shape[-1])


class AffineBank(Bank):
    """`x ⊙ s + t` per row (Hadamard, (IA)³, BitFit's biases as shifts)."""

    def __init__(self, size: int, *, scale: bool, shift: bool, like: torch.Tensor) -> None:
        identity = {}
        if scale:
            identity["scale"] = torch.ones(size, dtype=like.dtype, device=like.device)
        if shift:
            identity["shift"] = torch.zeros(size, dtype=like.dtype, device=like.device)
        super().__init__(identity)

    def apply(self, x: torch.Tensor, routing: Routing, *, in_place: bool = False) -> torch.Tensor:
        """`in_place` on a module's fresh output (nothing else holds it yet): one pass over it instead of two."""
        slots = self.slots(routing, x.shape[0])
        if "scale" in self.fields:
            scale = _per_row(self.gather("scale", slots), x)
            x = x.mul_(scale) if in_place else x * scale
        if "shift" in self.fields:
            shift = _per_row(self.gather("shift", slots), x)
            x = x.add_(shift) if in_place else x + shift
        return x


class BiasBank(Bank):
    """Each row's own bias of a linear layer (BitFit), added by the layer's own matrix product: the bias rows are
    where the product accumulates, as a plain linear layer's bias is, so a row's bias costs no extra pass."""

    def __init__(self, linear: nn.Linear) -> None:
        bias = linear.bias if linear.bias is not None else torch.zeros_like(linear.weight[:, 0])
        super().__init__({"bias": bias.detach()})

    def linear(self, x: torch.Tensor, weight: torch.Tensor, routing: Routing) -> torch.Tensor:
        rows = self.gather("bias", self.slots(routing, x.shape[0]))
        if x.dim() < 2 or x.shape[0] == 0:
            return F.linear(x, weight) + (rows if x.dim() >= 2 else rows[0])
        flat = x.reshape(-1, x.shape[-1])
        per_row = flat.shape[0] // x.shape[0]
        if torch.is_grad_enabled() or torch.is_autocast_enabled():  # out= has neither autograd nor autocast
            start = rows.repeat_interleave(per_row, dim=0)
            return torch.addmm(start, flat, weight.t()).view(*x.shape[:-1], weight.shape[0])
        out = rows.new_empty(x.shape[0], per_row, weight.shape[0])
        out.copy_(rows.unsqueeze(1).expand_as(out))  # what a plain linear layer writes first: its bias, per row
        torch.addmm(out.view(flat.shape[0], -1), flat, weight.t(), out=out.view(flat.shape[0], -1))
        return out.view(*x.shape[:-1], weight.shape[0])


class LowRankBank(Bank):
    """`y + up · down · x` per row, as two batched matrix products (LoRA, scale folded into `up`)."""

    def __init__(self, rank: int, in_features: int, out_features: int, like: torch.Tensor) -> None:
        factory = {"dtype": like.dtype, "device": like.device}
        super().__init__({"down": torch.zeros(rank, in_features, **factory),
                          "up": torch.zeros(out_features, rank, **factory)})

    def apply(self, x: torch.Tensor, y: torch.Tensor, routing: Routing) -> torch.Tensor:
        slots = self.slots(routing, x.shape[0])
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        hidden = torch.bmm(rows, self.gather("down", slots).transpose(1, 2))
        return y + torch.bmm(hidden, self.gather("up", slots).transpose(1, 2)).view(y.shape)


# ---- bottleneck adapters ---------------------------------------------------------------------------------------


def projection_shapes(projection: Projection) -> tuple:
    return (projection.kind, tuple((k, tuple(v.shape)) for k, v in sorted(projection.tensors.items())),
            projection.bias is not None, tuple(sorted(projection.shared)))


class BottleneckBank(Bank):
    """`h + U f(D h)` per row. D and U keep the task's own parametrization (dense, low-rank, PHM, LPHM), so a
    task costs its own tensors; the dense weights of the rows' tasks are built per call (a few multiply-adds per
    weight, nothing next to the matrix products that use them)."""

    def __init__(self, activation: str, down: Projection, up: Projection, like: torch.Tensor,
                 shared: dict[str, "SharedBank"]) -> None:
        factory = {"dtype": like.dtype, "device": like.device}
        identity = {}
        for side, projection in (("down", down), ("up", up)):
            for name, value in projection.tensors.items():
                if name not in projection.shared:
                    identity[f"{side}_{name}"] = torch.zeros(value.shape, **factory)
            if projection.bias is not None:
                identity[f"{side}_bias"] = torch.zeros(projection.bias.shape, **factory)
        super().__init__(identity)
        self.kinds = {"down": down.kind, "up": up.kind}
        self.activation_name = activation
        self.activation = ACT2FN[activation]
        # name inside a projection -> the model's bank of that shared tensor (not a submodule: the model owns it)
        self._shared = {f"{side}_{name}": shared[key] for side, projection in (("down", down), ("up", up))
                        for name, key in projection.shared.items()}

    def _tensor(self, name: str, slots: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if name in self._shared:
            bank = self._shared[name]
            return bank.gather("value", bank.slot_of[ids])
        return self.gather(name, slots)

    def _project(self, side: str, x: torch.Tensor, slots: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        kind = self.kinds[side]

        def t(name: str) -> torch.Tensor:
            return self._tensor(f"{side}_{name}", slots, ids)

        if kind == "dense":
            y = torch.bmm(x, t("weight").transpose(1, 2))
        elif kind == "lowrank":
            y = torch.bmm(torch.bmm(x, t("right").transpose(1, 2)), t("left").transpose(1, 2))
        else:
            blocks = t("weight") if kind == "phm" else t("left") @ t("right").transpose(-1, -2)  # (R, n, P, Q)
            rule = t("rule")  # (R, n, n, n)
            rows, n, p, q = blocks.shape
            # Σ_i kron(A_i, B_i)[a·P + p, c·Q + q] = Σ_i A_i[a, c] · B_i[p, q], per row
            weight = torch.einsum("riac,ripq->rapcq", rule, blocks).reshape(rows, n * p, n * q)
            y = torch.bmm(x, weight.transpose(1, 2))
        bias = f"{side}_bias"
        if bias in self.fields:
            y = y + self.gather(bias, slots).unsqueeze(1)
        return y

    def apply(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        ids = routing.ids_for(h.shape[0])
        slots = self.slot_of[ids]
        rows = h.reshape(h.shape[0], -1, h.shape[-1])
        down = self.activation(self._project("down", rows, slots, ids))
        return h + self._project("up", down, slots, ids).view(h.shape)


class SharedBank(Bank):
    """A tensor a task holds once for several projections (Compacter's A_i), one slot per task."""

    def __init__(self, shape: tuple[int, ...], like: torch.Tensor) -> None:
        super().__init__({"value": torch.zeros(shape, dtype=like.dtype, device=like.device)})


# ---- norms -----------------------------------------------------------------------------------------------------


class NormBank(Bank):
    """A norm with per-row weight (and bias): the input normalized once, then each row's affine part. Slot 0 holds
    the base norm's own parameters."""

    def __init__(self, norm: nn.Module) -> None:
        identity = {"weight": norm.weight}
        if self.has_bias(norm):
            identity["bias"] = norm.bias
        super().__init__(identity)
        self.kind, self.eps, self.shape = self.kind_of(norm)

    @staticmethod
    def has_bias(norm: nn.Module) -> bool:
        return isinstance(getattr(norm, "bias", None), nn.Parameter)

    @staticmethod
    def kind_of(norm: nn.Module) -> tuple[str, float, tuple[int, ...]]:
        """How to normalize like `norm` ("layernorm" or T5's "rms"), with its epsilon and shape; refuses others."""
        if isinstance(norm, nn.LayerNorm):
            return "layernorm", norm.eps, tuple(norm.normalized_shape)
        if hasattr(norm, "variance_epsilon") and not NormBank.has_bias(norm):
            return "rms", norm.variance_epsilon, tuple(norm.weight.shape)
        raise PeltError(f"pelt cannot give each task its own {type(norm).__name__} in a mixed batch")

    def apply(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        slots = self.slots(routing, x.shape[0])
        weight = self.gather("weight", slots)
        if self.kind == "layernorm":
            normalized = F.layer_norm(x, self.shape, None, None, self.eps)
        else:  # as T5LayerNorm: the variance in fp32, the result in the weight's dtype
            variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
            normalized = x * torch.rsqrt(variance + self.eps)
            if weight.dtype in (torch.float16, torch.bfloat16):
                normalized = normalized.to(weight.dtype)
        if "bias" in self.fields:  # b + n ⊙ w in one pass
            return torch.addcmul(_per_row(self.gather("bias", slots), normalized), normalized,
                                 _per_row(weight, normalized))
        return _per_row(weight, normalized) * normalized


# ---- one hooked module -----------------------------------------------------------------------------------------


class Site(nn.Module):
    """The banks acting at one module of the backbone, and the hooks that run them while a routing is set.

    A norm whose weights differ per row, or a linear layer whose bias does, is computed by the site itself (the
    module's `forward` is the site's while attached), so the module's own result is not computed only to be
    replaced."""

    def __init__(self, module: nn.Module, owner: object) -> None:
        super().__init__()
        self._module = (module,)  # referenced, not registered: the backbone owns it
        self._owner = owner
        self.input_affine = nn.ModuleDict()
        self.output_affine = nn.ModuleDict()
        self.low_rank = nn.ModuleDict()
        self.bottleneck = nn.ModuleDict()
        self.norm: NormBank | None = None
        self.bias: BiasBank | None = None
        self._handles: list[Any] = []
        self._own_forward = self._forward  # one bound method, so that the module's can be recognised as ours
        self._previous_forward: Any = None  # an instance forward the module had (accelerate's offloading hooks)

    @property
    def module(self) -> nn.Module:
        return self._module[0]

    def banks(self) -> list[Bank]:
        groups = (self.input_affine, self.output_affine, self.low_rank, self.bottleneck)
        return [b for group in groups for b in group.values()] + [b for b in (self.norm, self.bias) if b is not None]

    def attach(self) -> None:
        if not self._handles:
            self._handles = [self.module.register_forward_pre_hook(self._before),
                             self.module.register_forward_hook(self._after)]
        self.sync_forward()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.sync_forward()

    def sync_forward(self) -> None:
        """The module computes through the site while attached with a per-row norm or bias, else as it was."""
        wanted = bool(self._handles) and (self.norm is not None or self.bias is not None)
        current = self.module.__dict__.get("forward")
        if wanted and current is not self._own_forward:
            self._previous_forward = current
            self.module.forward = self._own_forward  # an instance attribute: the class's forward stays as it is
        elif not wanted and current is self._own_forward:
            if self._previous_forward is None:
                del self.module.forward
            else:
                self.module.forward = self._previous_forward
            self._previous_forward = None

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        module, routing = self.module, routing_of(self._owner)
        if routing is not None and args and self.norm is not None:
            return self.norm.apply(args[0], routing)
        if routing is not None and args and self.bias is not None:
            return self.bias.linear(args[0], module.weight, routing)
        if self._previous_forward is not None:
            return self._previous_forward(*args, **kwargs)
        return type(module).forward(module, *args, **kwargs)

    def _before(self, module: nn.Module, args: tuple) -> tuple | None:
        routing = routing_of(self._owner)
        if routing is None or not self.input_affine or not args:
            return None
        x = args[0]
        for bank in self.input_affine.values():
            x = bank.apply(x, routing)
        return (x, *args[1:])

    def _after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        routing = routing_of(self._owner)
        if routing is None:
            return None
        y = output
        for bank in self.low_rank.values():
            y = bank.apply(args[0], y, routing)
        # the module's fresh output, which no one else holds yet (unless a hook registered earlier kept it)
        in_place = not (torch.is_grad_enabled() and y.requires_grad) and len(module._forward_hooks) == 1
        for bank in self.output_affine.values():
            y = bank.apply(y, routing, in_place=in_place)
        for bank in self.bottleneck.values():
            y = bank.apply(y, routing)
        return y


# ---- prompts ---------------------------------------------------------------------------------------------------


class PromptSite(nn.Module):
    """Per-row prompts at the module that embeds the input, one bank per prompt length.

    Each row is laid out as it would be alone — its first `position` tokens, its own prompt, its tokens — and the
    rows are right-padded to the longest, so a row without a prompt (or with a shorter one) keeps its positions.
    Decoders that attend to this input (T5) get the widened mask.
    """

    def __init__(self, module: nn.Module, position: int, max_positions: int | None,
                 decoders: list[nn.Module], owner: object) -> None:
        super().__init__()
        self._module = (module,)
        self._owner = owner
        self._decoders = tuple(decoders)
        self.position, self.max_positions = position, max_positions
        self.lengths = nn.ModuleDict()  # str(p) -> Bank of (p, width) prompts
        self._handles: list[Any] = []

    def banks(self) -> list[Bank]:
        return list(self.lengths.values())

    def attach(self) -> None:
        if not self._handles:
            self._handles = [self._module[0].register_forward_pre_hook(self._prepend, with_kwargs=True)]
            self._handles += [d.register_forward_pre_hook(self._widen_cross_attention, with_kwargs=True)
                              for d in self._decoders]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _prepend(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        routing = routing_of(self._owner)
        if routing is None:
            return None
        kwargs = call_kwargs(module, args, kwargs)
        embeds, ids = kwargs.get("inputs_embeds"), kwargs.get("input_ids")
        if embeds is None and ids is None:
            return None
        rows = (embeds if embeds is not None else ids).shape[0]
        lengths = torch.zeros(rows, dtype=torch.long, device=(embeds if embeds is not None else ids).device)
        gathered = []
        for size, bank in self.lengths.items():
            slots = bank.slots(routing, rows)
            lengths = lengths + (slots > 0).long() * int(size)
            gathered.append(bank.gather("vectors", slots))
        longest = int(lengths.max()) if rows else 0
        if longest == 0:
            return None
        if kwargs.get("position_ids") is not None:
            raise PeltError("prompt tuning builds its own positions; call the model without position_ids")
        if embeds is None:
            embeds = module.get_input_embeddings()(ids)
        prompts = embeds.new_zeros(rows, longest, embeds.shape[-1])
        for block in gathered:  # a row has one prompt at most: the others are zeros
            prompts[:, : block.shape[1]] += block.to(embeds.dtype)
        mask = kwargs.get("attention_mask")
        if mask is not None and bool(((mask[:, :1] == 0) & (mask.sum(dim=1, keepdim=True) > 0)).any()):
            raise PeltError("rows with prompts must be padded on the right (the tokenizer's padding_side='right')")
        layout = _PromptLayout(lengths, min(self.position, embeds.shape[1]), mask, embeds.shape[1])
        if self.max_positions is not None and layout.width > self.max_positions:
            raise PeltError(f"{layout.width} tokens with their prompts exceed this model's {self.max_positions} "
                            "positions; use a shorter max length")
        kwargs["inputs_embeds"] = layout.place(embeds, prompts)
        kwargs["input_ids"] = None
        widened = layout.mask(mask)
        kwargs["attention_mask"] = widened
        routing.widened_mask = widened
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = layout.place(kwargs["token_type_ids"], None)
        return (), kwargs

    def _widen_cross_attention(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        routing = routing_of(self._owner)
        if routing is None or routing.widened_mask is None:
            return None
        kwargs = call_kwargs(module, args, kwargs)
        states, mask = kwargs.get("encoder_hidden_states"), kwargs.get("encoder_attention_mask")
        if states is None or mask is None or mask.dim() != 2:
            return None
        widened = routing.widened_mask  # always: the widened rows can be as wide as the original ones
        if widened.shape[0] != mask.shape[0]:  # beams
            widened = widened.repeat_interleave(mask.shape[0] // widened.shape[0], dim=0)
        if widened.shape[1] != states.shape[1]:
            raise RuntimeError(f"prompt mask of width {widened.shape[1]} for {states.shape[1]} encoder states")
        kwargs["encoder_attention_mask"] = widened.to(mask.dtype)
        return (), kwargs


class _PromptLayout:
    """Where each output position of each row reads from: its tokens, or its prompt."""

    def __init__(self, lengths: torch.Tensor, start: int, mask: torch.Tensor | None, tokens: int) -> None:
        real = mask.sum(dim=1) if mask is not None else torch.full_like(lengths, tokens)
        self.width = int((real + lengths).max())
        j = torch.arange(self.width, device=lengths.device).unsqueeze(0)
        p = lengths.unsqueeze(1)
        self.is_prompt = (j >= start) & (j < start + p)
        source = torch.where(j < start, j, j - p)
        self.is_token = ~self.is_prompt & (source < tokens)
        self.source = source.clamp(0, tokens - 1)
        self.prompt_index = (j - start).clamp(min=0).expand_as(source)
        self.tokens = tokens

    def place(self, values: torch.Tensor, prompts: torch.Tensor | None) -> torch.Tensor:
        """Token values (R, T[, width]) at their new positions; prompt positions from `prompts` (zeros if None)."""
        index = self.source if values.dim() == 2 else self.source.unsqueeze(-1).expand(-1, -1, values.shape[-1])
        moved = values.gather(1, index)
        keep = self.is_token if values.dim() == 2 else self.is_token.unsqueeze(-1)
        moved = torch.where(keep, moved, torch.zeros_like(moved))
        if prompts is None:
            return moved
        index = self.prompt_index.clamp(max=prompts.shape[1] - 1).unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
        return torch.where(self.is_prompt.unsqueeze(-1), prompts.gather(1, index), moved)

    def mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(self.source.shape[0], self.tokens, dtype=torch.long, device=self.source.device)
        moved = self.place(mask, None)
        return torch.where(self.is_prompt, torch.ones_like(moved), moved)
