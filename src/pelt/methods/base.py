"""The small protocol every method implements, and the registry that names them.

A method is a config dataclass (its hyper-parameters, validated at construction) plus a `Method` object that
injects modules into a model and says which parameters it trains. Freezing, the parameter report, save/load
and merging live once, in `pelt.core` and `pelt.adapter_files`, and work for every registered method.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from pelt.arch import ArchSpec, LayerRef, is_layer_norm, iter_layers, position_limit
from pelt.errors import PeltError
from pelt.methods.ops import NormParams, SiteOp


@dataclass
class MethodConfig:
    """Base of every method's hyper-parameters. Subclasses set `method` and add fields with help metadata."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Every option of the type its field declares (floats finite), so that a config read from JSON or
        built in a notebook fails here, in one line, and not deep inside a model."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = typing.get_type_hints(type(self))[f.name]
            if value is None and type(None) in typing.get_args(hint):
                continue
            checked = _typed_value(option_type(type(self), f.name), value)
            if checked is _WRONG:
                raise PeltError(f"{f.name} must be {_describe_type(option_type(type(self), f.name))} (an option of "
                                f"method '{self.method}'), got {value!r}")
            setattr(self, f.name, checked)

    def validate(self) -> None:
        """Raise PeltError for impossible values; called at construction so errors surface before any work."""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MethodConfig":
        values = {k: v for k, v in values.items() if k != "method"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PeltError(
                f"unknown option(s) {', '.join(unknown)} for method '{cls.method}'; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        return cls(**values)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with help text; the CLI turns each field into a flag."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


_WRONG = object()  # _typed_value's answer for a value of the wrong type


def _typed_value(kind: Any, value: Any) -> Any:
    """`value` as an option of type `kind` (an int where a float is asked becomes a float, a tuple where a list
    is asked a list), or _WRONG."""
    if kind is bool:
        return value if isinstance(value, bool) else _WRONG
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return _WRONG
        return float(value)
    if kind is str:
        return value if isinstance(value, str) else _WRONG
    if typing.get_origin(kind) is typing.Literal:
        return value if isinstance(value, str) and value in typing.get_args(kind) else _WRONG
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        (item,) = typing.get_args(kind) or (Any,)
        items = [_typed_value(item, v) for v in value]
        return _WRONG if any(v is _WRONG for v in items) else items
    return value


def _describe_type(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (Any,)
        return f"a list of {_describe_type(item).removeprefix('an ').removeprefix('a ')}s"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(kind, str(kind))


def parse_int_list(text: str) -> list[int]:
    """'8,9,10' or '4-11' or '0,2,6-11' -> a sorted list of layer indices (ValueError when it is not one)."""
    values: set[int] = set()
    for part in text.split(","):
        if "-" in part.strip()[1:]:
            lo, hi = part.split("-", 1)
            values.update(range(int(lo), int(hi) + 1))
        else:
            values.add(int(part))
    return sorted(values)


def parse_int_sequence(text: str) -> list[int]:
    """'101,2054,2003' -> [101, 2054, 2003], order and repeats kept (token ids)."""
    return [int(part) for part in text.split(",")]


def option_type(config_class: type[MethodConfig], name: str) -> Any:
    """The type of an option with `X | None` unwrapped to X."""
    kind = typing.get_type_hints(config_class)[name]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def parse_option(config_class: type[MethodConfig], name: str, text: str) -> Any:
    """An option value written as text (`layers=0-5`, `train_bias=false`), typed by the config's field."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if name not in fields:
        raise PeltError(f"unknown option '{name}' for method '{config_class.method}'; "
                        f"known: {', '.join(sorted(fields)) or 'none'}")
    kind = option_type(config_class, name)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if typing.get_origin(kind) is list:
            if typing.get_args(kind) == (str,):
                return [t.strip() for t in text.split(",")]
            return parse_int_sequence(text) if fields[name].metadata.get("keep_order") else parse_int_list(text)
        if kind in (int, float):
            return kind(text)
    except ValueError:
        example = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a list like 0,1,2 or 0-5")
        raise PeltError(f"option {name}={text!r} of method '{config_class.method}' must be {example}") from None
    return text


def format_option(value: Any) -> str:
    """The text `parse_option` reads back: lists as 0,1,2."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Injection:
    """What a method did to a model: parameters it added, and existing parameters it unfroze."""

    added: list[str] = field(default_factory=list)
    unfrozen: list[str] = field(default_factory=list)


class Method:
    """Base class of a method. Subclasses set `name`, `config_class` and implement `inject`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Train the task head alone first, then the method (the Hadamard paper's recipe).
    two_stage: ClassVar[bool] = False
    # What the adapted model computes before training: "exact" (the base model's outputs, bit for bit), "near"
    # (a small change set by the method's init std: the bottleneck family) or "changed" (prompt tuning adds
    # tokens). The generic test suite checks each method by its declaration.
    init_output: ClassVar[Literal["exact", "near", "changed"]] = "exact"
    # Options that fit a small model (hidden 32, 3 layers per stack): what the generic test suite applies to its
    # tiny models of every family (the defaults may need more width, e.g. a bottleneck of d/32).
    small_model_options: ClassVar[dict[str, Any]] = {}
    # Options whose merge arithmetic differs: each is merged and unmerged by the generic suite.
    merge_variants: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    default_learning_rate: ClassVar[float] = 1e-3
    # The learning rate of the method's source (the Compacter authors' configs where they ran it): what a sweep
    # centres on. None: the default.
    reference_learning_rate: ClassVar[float | None] = None
    description: ClassVar[str] = ""

    def reference_lr(self, config: MethodConfig) -> float:
        return self.reference_learning_rate or self.default_learning_rate

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        raise NotImplementedError

    def extra_positions(self, config: MethodConfig) -> int:
        """Positions the method adds to every input (prompt tokens): a max length must leave room for them."""
        return 0

    def check_input_length(self, model: nn.Module, max_length: int) -> None:
        """Refuse, before any work, inputs of `max_length` tokens that the adapted model could not take (the
        first batch that long would fail inside the model)."""
        limit = position_limit(model)
        if limit is not None and max_length > limit:
            raise PeltError(f"max length {max_length} exceeds this model's {limit} positions; use --max-length "
                            f"{limit} or less")

    # Why a task of this method cannot share a backbone with other tasks (None: it can, see mixed_batch_ops).
    sharing_refusal: ClassVar[str | None] = None

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        """What one trained task of this method does at each site, for a backbone shared by many tasks in one
        batch (`pelt.multitask`). `model` has this method applied (on the meta device: only its structure and
        names count); `tensors` are the task's trained tensors by name."""
        raise PeltError(self.sharing_refusal or f"method '{self.name}' has no mixed-batch form")

    # Mergeable methods name the module type they inject; each such module has merge() and unmerge().
    merge_module: ClassVar[type[nn.Module] | None] = None

    @property
    def mergeable(self) -> bool:
        return self.merge_module is not None

    def merge(self, model: nn.Module) -> None:
        for module in self._merge_modules(model):
            module.merge()

    def unmerge(self, model: nn.Module) -> None:
        for module in self._merge_modules(model):
            module.unmerge()

    def _merge_modules(self, model: nn.Module) -> list[nn.Module]:
        if self.merge_module is None:
            raise PeltError(f"method '{self.name}' cannot be merged into the base weights")
        return [module for _, module in modules_of_type(model, self.merge_module)]


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by name to the API, the CLI and the test suite."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    if cls.config_class.method != cls.name:
        raise ValueError(f"{cls.__name__}.config_class.method must be {cls.name!r}")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    key = name.strip().lower().replace("_", "-")
    if key not in METHODS:
        raise PeltError(f"unknown method '{name}'; available methods: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def list_methods() -> list[str]:
    return sorted(METHODS)


def make_config(method: str, **options: Any) -> MethodConfig:
    """Build a method's config by name, e.g. make_config('hadamard', top_k=8)."""
    return get_method(method).config_class.from_dict(options)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def modules_of_type(model: nn.Module, cls: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]


def trained_norm_ops(model: nn.Module, names: list[str], tensors: dict[str, torch.Tensor]) -> list[NormParams]:
    """The norms among `names` (a method's unfrozen parameters) as per-task norm parameters."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        path, _, leaf = name.rpartition(".")
        if is_layer_norm(model.get_submodule(path)):
            by_module.setdefault(path, {})[leaf] = tensors[name]
    if any("weight" not in parts for parts in by_module.values()):
        raise RuntimeError("a norm with only its bias trained is a bias change: declare it as Bias ops")
    return [NormParams(path, parts["weight"], parts.get("bias")) for path, parts in by_module.items()]


# ---- layer selection, shared by every method that can be restricted to some layers --------------------------


@dataclass
class LayerSelection:
    """Mixin fields: which layers of each stack a method touches. Default: all of them."""

    layers: list[int] | None = option(None, "indices of the layers to adapt in each stack (default: all)")
    top_k: int | None = option(None, "adapt only the top k layers of each stack")
    bottom_k: int | None = option(None, "adapt only the bottom k layers of each stack")

    def validate_layers(self) -> None:
        given = [name for name in ("layers", "top_k", "bottom_k") if getattr(self, name) is not None]
        if len(given) > 1:
            raise PeltError(f"give one of layers, top_k and bottom_k, not {' and '.join(given)}")
        for name in ("top_k", "bottom_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PeltError(f"{name} must be at least 1, got {value}")
        if self.layers is not None:
            if not self.layers:
                raise PeltError("layers is empty; give at least one layer index or leave it unset for all layers")
            if any(i < 0 for i in self.layers):
                raise PeltError(f"layer indices must be >= 0, got {self.layers}")

    def selected_layers(self, model: nn.Module, arch: ArchSpec) -> list[LayerRef]:
        refs = list(iter_layers(model, arch))
        for ref in refs:
            for name in ("top_k", "bottom_k"):
                value = getattr(self, name)
                if value is not None and value > ref.num_layers:
                    raise PeltError(f"{name}={value} but the {ref.stack.name} has only {ref.num_layers} layers")
            if self.layers is not None and max(self.layers) >= ref.num_layers:
                raise PeltError(
                    f"layer {max(self.layers)} does not exist: the {ref.stack.name} has layers "
                    f"0..{ref.num_layers - 1}"
                )
        if self.top_k is not None:
            return [r for r in refs if r.index >= r.num_layers - self.top_k]
        if self.bottom_k is not None:
            return [r for r in refs if r.index < self.bottom_k]
        if self.layers is not None:
            wanted = set(self.layers)
            return [r for r in refs if r.index in wanted]
        return refs
