"""The small protocol every method implements, and the registry that names them.

A method is a config dataclass (its hyper-parameters, validated at construction) plus a `Method` object that
injects modules into a model and says which parameters it trains. Freezing, the parameter report, save/load
and merging live once, in `pelt.core`, and work for every registered method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from pelt.arch import ArchSpec, LayerRef, iter_layers
from pelt.errors import PeltError


@dataclass
class MethodConfig:
    """Base of every method's hyper-parameters. Subclasses set `method` and add fields with help metadata."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

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
    default_learning_rate: ClassVar[float] = 1e-3
    # The learning rate of the method's source (the Compacter authors' configs where they ran it): what a sweep
    # centres on. None: the default.
    reference_learning_rate: ClassVar[float | None] = None
    description: ClassVar[str] = ""

    def reference_lr(self, config: MethodConfig) -> float:
        return self.reference_learning_rate or self.default_learning_rate

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        raise NotImplementedError

    def check_input_length(self, model: nn.Module, max_length: int) -> None:
        """Refuse, before any work, inputs of `max_length` tokens that the adapted model could not take."""

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


# ---- layer selection, shared by every method that can be restricted to some layers --------------------------


@dataclass
class LayerSelection:
    """Mixin fields: which layers of each stack a method touches. Default: all of them."""

    layers: list[int] | None = option(None, "indices of the layers to adapt in each stack (default: all)")
    top_k: int | None = option(None, "adapt only the top k layers of each stack")

    def validate_layers(self) -> None:
        if self.layers is not None and self.top_k is not None:
            raise PeltError("give either layers or top_k, not both")
        if self.top_k is not None and self.top_k < 1:
            raise PeltError(f"top_k must be at least 1, got {self.top_k}")
        if self.layers is not None:
            if not self.layers:
                raise PeltError("layers is empty; give at least one layer index or leave it unset for all layers")
            if any(i < 0 for i in self.layers):
                raise PeltError(f"layer indices must be >= 0, got {self.layers}")

    def selected_layers(self, model: nn.Module, arch: ArchSpec) -> list[LayerRef]:
        refs = list(iter_layers(model, arch))
        for ref in refs:
            if self.top_k is not None and self.top_k > ref.num_layers:
                raise PeltError(
                    f"top_k={self.top_k} but the {ref.stack.name} has only {ref.num_layers} layers"
                )
            if self.layers is not None and max(self.layers) >= ref.num_layers:
                raise PeltError(
                    f"layer {max(self.layers)} does not exist: the {ref.stack.name} has layers "
                    f"0..{ref.num_layers - 1}"
                )
        if self.top_k is not None:
            return [r for r in refs if r.index >= r.num_layers - self.top_k]
        if self.layers is not None:
            wanted = set(self.layers)
            return [r for r in refs if r.index in wanted]
        return refs
