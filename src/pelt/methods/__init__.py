"""Every method module registers itself on import; importing this package fills the registry."""

from pelt.methods import (  # noqa: F401  (registration side effect)
    adapters,
    bitfit,
    full,
    hadamard,
    ia3,
    intrinsic_said,
    lora,
    prompt,
)
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
from pelt.methods.bitfit import BitFitConfig
from pelt.methods.ia3 import IA3Config
from pelt.methods.intrinsic_said import IntrinsicSAIDConfig
from pelt.methods.lora import LoRAConfig
from pelt.methods.prompt import PromptTuningConfig

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
    "BitFitConfig",
    "IA3Config",
    "IntrinsicSAIDConfig",
    "LoRAConfig",
    "PromptTuningConfig",
    "Injection",
    "Method",
    "MethodConfig",
    "get_method",
    "list_methods",
    "make_config",
    "register_method",
]
