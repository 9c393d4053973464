"""Where each supported architecture keeps its sublayers.

This is the only module that knows transformers' module paths. Methods ask it for "the attention output
projection of layer 3 of the encoder" and never spell out `attention.output.dense` themselves, so adding an
architecture means adding one entry here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Literal

from torch import nn

from pelt.errors import PeltError


@dataclass(frozen=True)
class LayerSites:
    """Module paths inside one transformer layer, relative to that layer."""

    attention_output: str  # the self-attention output projection W_o (its output is the sublayer output)
    attention_norm: str  # the LayerNorm that belongs to the self-attention sublayer
    ffn_output: str  # the FFN's last projection
    ffn_norm: str  # the LayerNorm that belongs to the FFN sublayer
    cross_attention_output: str | None = None  # decoder only
    cross_attention_norm: str | None = None
    attention_query: str | None = None  # the self-attention input projections
    attention_key: str | None = None
    attention_value: str | None = None
    ffn_input: str | None = None  # the FFN's first projection (T5 v1.1's gated FFN has two: wi_0, wi_1)


@dataclass(frozen=True)
class StackSpec:
    """One stack of layers (an encoder or a decoder)."""

    name: str
    layers: str  # path of the ModuleList, relative to the base model
    sites: LayerSites
    final_norm: str | None = None  # a LayerNorm after the last layer (pre-norm models), relative to base
    entry: str = ""  # the module whose forward takes this stack's input_ids/attention_mask, relative to base


@dataclass(frozen=True)
class ArchSpec:
    family: str
    stacks: tuple[StackSpec, ...]
    norm_position: Literal["post", "pre"]  # post: LN after the residual add (BERT); pre: LN before the sublayer (T5)
    # Where input-side prompts go: encoder classifiers read their first token ([CLS]/<s>), so prompts follow it.
    prompt_position: int = 0


_BERT_LIKE_SITES = LayerSites(
    attention_output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    ffn_output="output.dense",
    ffn_norm="output.LayerNorm",
    attention_query="attention.self.query",
    attention_key="attention.self.key",
    attention_value="attention.self.value",
    ffn_input="intermediate.dense",
)
_DEBERTA_SITES = dataclasses.replace(
    _BERT_LIKE_SITES,
    attention_query="attention.self.query_proj",
    attention_key="attention.self.key_proj",
    attention_value="attention.self.value_proj",
)


def _encoder_only(family: str, sites: LayerSites = _BERT_LIKE_SITES) -> ArchSpec:
    return ArchSpec(family, (StackSpec("encoder", "encoder.layer", sites),), "post", prompt_position=1)


_T5 = ArchSpec(
    "t5",
    (
        StackSpec(
            "encoder",
            "encoder.block",
            LayerSites(
                attention_output="layer.0.SelfAttention.o",
                attention_norm="layer.0.layer_norm",
                ffn_output="layer.1.DenseReluDense.wo",
                ffn_norm="layer.1.layer_norm",
                attention_query="layer.0.SelfAttention.q",
                attention_key="layer.0.SelfAttention.k",
                attention_value="layer.0.SelfAttention.v",
                ffn_input="layer.1.DenseReluDense.wi",
            ),
            final_norm="encoder.final_layer_norm",
            entry="encoder",
        ),
        StackSpec(
            "decoder",
            "decoder.block",
            LayerSites(
                attention_output="layer.0.SelfAttention.o",
                attention_norm="layer.0.layer_norm",
                ffn_output="layer.2.DenseReluDense.wo",
                ffn_norm="layer.2.layer_norm",
                cross_attention_output="layer.1.EncDecAttention.o",
                cross_attention_norm="layer.1.layer_norm",
                attention_query="layer.0.SelfAttention.q",
                attention_key="layer.0.SelfAttention.k",
                attention_value="layer.0.SelfAttention.v",
                ffn_input="layer.2.DenseReluDense.wi",
            ),
            final_norm="decoder.final_layer_norm",
            entry="decoder",
        ),
    ),
    "pre",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _encoder_only("bert"),
    "roberta": _encoder_only("roberta"),
    "electra": _encoder_only("electra"),
    "deberta-v2": _encoder_only("deberta-v2", _DEBERTA_SITES),
    "t5": _T5,
}
# model_type values whose modules are laid out exactly like a supported family.
ALIASES: dict[str, str] = {"xlm-roberta": "roberta", "camembert": "roberta", "mt5": "t5"}


def supported_families() -> list[str]:
    return sorted(ARCHITECTURES) + sorted(ALIASES)


def get_arch(model_or_config: nn.Module | object) -> ArchSpec:
    """The architecture table entry for a model (or its config); a clear error when unsupported."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    family = ALIASES.get(model_type, model_type)
    if family not in ARCHITECTURES:
        raise PeltError(
            f"unsupported model family '{model_type}'; pelt supports: {', '.join(supported_families())}"
        )
    return ARCHITECTURES[family]


def base_model_path(model: nn.Module) -> str:
    """Dotted path of the backbone inside a task model ('' when the model is the backbone itself)."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    return ""


def base_model(model: nn.Module) -> nn.Module:
    path = base_model_path(model)
    return model.get_submodule(path) if path else model


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


@dataclass(frozen=True)
class LayerRef:
    """One layer of one stack, with the full dotted path of the layer inside the model."""

    stack: StackSpec
    index: int  # index within its stack
    num_layers: int  # layers in its stack
    path: str

    def site(self, name: str) -> str | None:
        """Full path of a named site of this layer (None when the layer has no such site)."""
        relative = getattr(self.stack.sites, name)
        return join(self.path, relative) if relative else None


def iter_layers(model: nn.Module, arch: ArchSpec | None = None) -> Iterator[LayerRef]:
    """Every layer of every stack the model actually has (a T5 encoder-only model has no decoder)."""
    arch = arch or get_arch(model)
    prefix = base_model_path(model)
    found = False
    for stack in arch.stacks:
        list_path = join(prefix, stack.layers)
        try:
            layers = model.get_submodule(list_path)
        except AttributeError:
            continue
        found = True
        for i in range(len(layers)):
            yield LayerRef(stack, i, len(layers), f"{list_path}.{i}")
    if not found:
        raise PeltError(
            f"could not find the layers of this {arch.family} model ({type(model).__name__}); "
            "pass a transformers model of a supported family"
        )


def final_norm_paths(model: nn.Module, arch: ArchSpec | None = None) -> list[str]:
    """Paths of the LayerNorms after the last layer of each stack that exists."""
    arch = arch or get_arch(model)
    prefix = base_model_path(model)
    paths = []
    for stack in arch.stacks:
        if stack.final_norm:
            path = join(prefix, stack.final_norm)
            try:
                model.get_submodule(path)
            except AttributeError:
                continue
            paths.append(path)
    return paths


def head_module_names(model: nn.Module) -> list[str]:
    """The task head: the model's top-level children outside the backbone that hold parameters.

    A seq2seq LM (T5ForConditionalGeneration) is its own backbone, so it has no head here: its LM head is
    tied to the embeddings and stays frozen, as the Compacter paper does.
    """
    prefix = base_model_path(model)
    if not prefix:
        return []
    return [
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    ]


def pooler_path(model: nn.Module) -> str | None:
    """BERT's pretrained pooler (dense + tanh on [CLS]), the one part of its classifier that is not new."""
    path = join(base_model_path(model), "pooler")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return path if any(True for _ in module.parameters()) else None


def batch_shared_modules(backbone: nn.Module) -> set[str]:
    """Modules of a backbone (paths relative to it) that also run on an input every row of the batch shares:
    DeBERTa's relative-position embeddings pass through the embedding LayerNorm (norm_rel_ebd) and, with
    share_att_key, each layer's query and key projections. A change that differs per row has no row to follow
    there."""
    config = backbone.config
    if get_arch(config).family != "deberta-v2" or not getattr(config, "relative_attention", False):
        return set()
    paths = set()
    if "layer_norm" in str(getattr(config, "norm_rel_ebd", "none")).lower():
        paths.add("encoder.LayerNorm")
    if getattr(config, "share_att_key", False):
        for layer in iter_layers(backbone):
            paths |= {layer.site("attention_query"), layer.site("attention_key")}
    return {p for p in paths if p}


def position_limit(module: nn.Module) -> int | None:
    """How many tokens a model (or one of its stacks' entry modules) with absolute positions can take; None:
    relative positions (T5, DeBERTa-v3 without position embeddings), no limit."""
    for candidate in (module, base_model(module) if hasattr(module, "base_model_prefix") else module):
        table = getattr(getattr(candidate, "embeddings", None), "position_embeddings", None)
        if isinstance(table, nn.Embedding):
            offset = table.padding_idx + 1 if table.padding_idx is not None else 0  # RoBERTa counts from padding + 1
            return table.num_embeddings - offset
    return None


def is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")
