"""BitFit (Ben Zaken et al., 2022): train only the bias terms of the backbone (and the task head).

Models that have biases (BERT, RoBERTa, ELECTRA, DeBERTa) train the ones they have, LayerNorm shifts included.
Models without them (T5) first get zero-initialised biases, so the adapted model is exactly the base model until
trained: on every linear layer that lacks one (T5: q, k, v, o of every attention, wi/wo of every FFN), on every
LayerNorm inside the layers, and on the LM head. The final LayerNorm of each stack gets none by default: the
Compacter authors' T5 builds it without their bias option, and their parameter count (0.126% of T5-base) is
what that gives; `final_norms=True` adds those two as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pelt.arch import ArchSpec, base_model_path, final_norm_paths, head_module_names, is_layer_norm, join
from pelt.methods.base import Injection, Method, MethodConfig, option, register_method
from pelt.methods.ops import Bias, SiteOp

# Modules whose own forward already adds `self.bias` once one is registered.
_NATIVE_BIAS = (nn.Linear, nn.LayerNorm)


@dataclass
class BitFitConfig(MethodConfig):
    method = "bitfit"
    add_missing: bool = option(
        True, "add zero-initialised biases where the model has none (T5's linear layers, LayerNorms, LM head)"
    )
    final_norms: bool = option(
        False, "also add a bias to the final LayerNorm of each stack (the paper's count leaves them out)"
    )


def _add_bias_after_forward(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.bias


@register_method
class BitFit(Method):
    name = "bitfit"
    config_class = BitFitConfig
    default_learning_rate = 3e-4
    description = "only the bias terms train; zero biases are added where the model has none (T5)"

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, BitFitConfig)
        prefix = base_model_path(model)
        heads = tuple(f"{h}." for h in head_module_names(model))
        skip_add = set() if config.final_norms else set(final_norm_paths(model, arch))
        injection = Injection()
        for path, module in model.named_modules():
            in_backbone = not prefix or path == prefix or path.startswith(f"{prefix}.")
            if not in_backbone or path.startswith(heads):  # the head trains whole, apart from the method
                continue
            if isinstance(module._parameters.get("bias"), nn.Parameter):
                injection.unfrozen.append(join(path, "bias"))
            elif config.add_missing and path not in skip_add and _takes_bias(module):
                self._add_bias(module)
                injection.added.append(join(path, "bias"))
        return injection

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        state = model.pelt_state
        return [Bias(name.rpartition(".")[0], tensors[name]) for name in [*state.unfrozen, *state.added]]

    @staticmethod
    def _add_bias(module: nn.Module) -> None:
        weight = module.weight
        size = weight.shape[0]  # out_features of a linear layer, the normalised size of a LayerNorm
        module.bias = nn.Parameter(torch.zeros(size, dtype=weight.dtype, device=weight.device))
        if not isinstance(module, _NATIVE_BIAS):
            module.register_forward_hook(_add_bias_after_forward)


def _takes_bias(module: nn.Module) -> bool:
    """Linear layers and LayerNorms with a weight vector/matrix and no bias."""
    if not isinstance(getattr(module, "weight", None), nn.Parameter):
        return False
    return isinstance(module, nn.Linear) or (is_layer_norm(module) and module.weight.dim() == 1)
