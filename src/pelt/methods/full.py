"""Full fine-tuning as a method, so every comparison table has its reference row."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pelt.arch import ArchSpec
from pelt.methods.base import Injection, Method, MethodConfig, register_method


@dataclass
class FullConfig(MethodConfig):
    method = "full"


@register_method
class FullFineTuning(Method):
    name = "full"
    config_class = FullConfig
    default_learning_rate = 5e-5
    reference_learning_rate = 3e-4  # the Compacter authors' T5 configs
    description = "every parameter of the model is trained (the reference)"
    sharing_refusal = ("method 'full' changes every weight of the backbone, so its task cannot share a backbone "
                       "with other tasks; load it into a model of its own (pelt.load_adapter, or pelt eval)")

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        return Injection(unfrozen=[name for name, _ in model.named_parameters()])
