"""pelt: parameter-efficient language-model tuning.

    model = AutoModelForSequenceClassification.from_pretrained(...)
    pelt.apply_method(model, pelt.HadamardConfig(top_k=8))   # or pelt.CompacterConfig(n=4), ...
    print(pelt.parameter_report(model).table())
    ... train ...
    pelt.save_adapter(model, "out/adapter")
    pelt.load_adapter(fresh_model, "out/adapter")
    mt = pelt.MultiTaskModel.from_adapters({"sst2": "runs/sst2/adapter", "rte": "runs/rte/adapter"})
"""

__version__ = "0.1.0"

from pelt.core import ParameterReport, apply_method, merge, parameter_report, set_trainable, unmerge  # noqa: E402
from pelt.adapter_files import load_adapter, read_adapter_config, save_adapter  # noqa: E402
from pelt.errors import PeltError, PeltWarning  # noqa: E402
from pelt.methods import (  # noqa: E402
    AdapterConfig,
    AdapterDropConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    FullConfig,
    HadamardConfig,
    BitFitConfig,
    IA3Config,
    IntrinsicSAIDConfig,
    LoRAConfig,
    PromptTuningConfig,
    LowRankConfig,
    MethodConfig,
    PfeifferConfig,
    PHMAdapterConfig,
    get_method,
    list_methods,
    make_config,
)

def __getattr__(name: str):  # noqa: ANN202 (the multi-task model imports on first use: `import pelt` stays light)
    if name == "MultiTaskModel":
        from pelt.multitask import MultiTaskModel

        return MultiTaskModel
    raise AttributeError(f"module 'pelt' has no attribute {name!r}")


__all__ = [
    "AdapterConfig",
    "AdapterDropConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "FullConfig",
    "HadamardConfig",
    "BitFitConfig",
    "IA3Config",
    "IntrinsicSAIDConfig",
    "LoRAConfig",
    "PromptTuningConfig",
    "LowRankConfig",
    "MethodConfig",
    "MultiTaskModel",
    "PfeifferConfig",
    "PHMAdapterConfig",
    "ParameterReport",
    "PeltError",
    "PeltWarning",
    "apply_method",
    "get_method",
    "list_methods",
    "load_adapter",
    "make_config",
    "merge",
    "parameter_report",
    "read_adapter_config",
    "save_adapter",
    "set_trainable",
    "unmerge",
]
