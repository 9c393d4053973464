"""Every method module registers itself on import; importing this package fills the registry."""

from pelt.methods import adapters, bitfit, full, hadamard, ia3, intrinsic_said, lora, prompt  # noqa: F401  (registration side effect)
from pelt.methods.base import (
    METHODS,
    Injection,
    Method,
    MethodConfig,
    get_method,
    list_methods,
    make_config,
    register_method,
)
from pelt.methods.adapters import (
    AdapterConfig,
    AdapterDropConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    LowRankConfig,
    PfeifferConfig,
    PHMAdapterConfig,
)
from pelt.methods.full import FullConfig
from pelt.methods.hadamard import HadamardConfig, HadamardLinear
from pelt.methods.ia3 import IA3Config
from pelt.methods.lora import LoRAConfig

__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterDropConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "LowRankConfig",
    "PfeifferConfig",
    "PHMAdapterConfig",
    "FullConfig",
    "HadamardConfig",
    "HadamardLinear",
    "IA3Config",
    "LoRAConfig",
    "Injection",
    "Method",
    "MethodConfig",
    "get_method",
    "list_methods",
    "make_config",
    "register_method",
]
