"""Prompt tuning (Lester et al., 2021): p trainable vectors prepended to the input embeddings; all else frozen.

The prompt enters where the model embeds its input: the backbone of an encoder classifier, the encoder stack of
T5 (the decoder's cross-attention mask is extended to match, so generation works too). Encoder classifiers read
their first token ([CLS], <s>), so there the prompt follows that token instead of preceding it. The attention
mask is extended with ones over the prompt, token-type ids with the first segment's 0.

Init "random" draws uniform(-0.5, 0.5) as the Compacter authors' code does; init "vocab" copies the embeddings
of p distinct tokens sampled from the vocabulary (their code copies the first p rows, which in most vocabularies
are special or unused tokens), or of the token ids given in `init_token_ids`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pelt.arch import ArchSpec, base_model_path, join, position_limit
from pelt.errors import PeltError
from pelt.methods.base import Injection, Method, MethodConfig, modules_of_type, option, register_method
from pelt.methods.ops import Prompt, SiteOp

INITS = ("random", "vocab")
_SPECIAL_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                         "unk_token_id", "mask_token_id", "decoder_start_token_id")


@dataclass
class PromptTuningConfig(MethodConfig):
    method = "prompt-tuning"
    num_tokens: int = option(100, "number of trainable prompt vectors p")
    init: Literal["random", "vocab"] = option(
        "random", "random: uniform(-init_range, init_range); vocab: embeddings of tokens from the vocabulary",
        choices=INITS,
    )
    init_range: float = option(0.5, "half-width of the uniform random init")
    init_token_ids: list[int] | None = option(
        None, "with init=vocab: start from these token ids (cycled to p) instead of sampling", keep_order=True
    )

    def validate(self) -> None:
        if self.num_tokens < 1:
            raise PeltError(f"num_tokens must be at least 1, got {self.num_tokens}")
        if self.init not in INITS:
            raise PeltError(f"init must be one of {', '.join(INITS)}, got '{self.init}'")
        if self.init_range <= 0:
            raise PeltError(f"init_range must be positive, got {self.init_range}")
        if self.init_token_ids is not None:
            if self.init != "vocab":
                raise PeltError("init_token_ids needs init=vocab")
            if not self.init_token_ids or min(self.init_token_ids) < 0:
                raise PeltError(f"init_token_ids must be a non-empty list of token ids >= 0, got {self.init_token_ids}")


@functools.lru_cache(maxsize=None)
def _positional_names(module_type: type) -> tuple[str, ...]:
    parameters = list(inspect.signature(module_type.forward).parameters.values())[1:]  # without self
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def call_kwargs(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A forward call's arguments all by name, so a hook can replace input_ids by inputs_embeds."""
    if not args:
        return dict(kwargs)
    names = _positional_names(type(module))
    if len(args) > len(names):
        raise PeltError(f"prompt tuning cannot map {len(args)} positional arguments of {type(module).__name__}")
    return {**dict(zip(names, args)), **kwargs}


def _insert(tensor: torch.Tensor, position: int, block: torch.Tensor) -> torch.Tensor:
    return torch.cat([tensor[:, :position], block, tensor[:, position:]], dim=1)


class PromptEmbedding(nn.Module):
    """The prompt vectors and the hooks that put them into the input and widen the masks to cover them."""

    def __init__(self, init: torch.Tensor, position: int, max_positions: int | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)
        self.position = position
        self.max_positions = max_positions

    @property
    def num_tokens(self) -> int:
        return self.weight.shape[0]

    def prepend(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        """Forward pre-hook of the module that embeds the input."""
        kwargs = call_kwargs(module, args, kwargs)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            if kwargs.get("input_ids") is None:
                return None
            embeds = module.get_input_embeddings()(kwargs["input_ids"])
        if kwargs.get("position_ids") is not None:
            raise PeltError("prompt tuning builds its own positions; call the model without position_ids")
        batch, length = embeds.shape[:2]
        p, k = self.num_tokens, min(self.position, length)
        if self.max_positions is not None and length + p > self.max_positions:
            raise PeltError(
                f"{length} input tokens + {p} prompt tokens exceed this model's {self.max_positions} positions; "
                f"use a max length of at most {self.max_positions - p} or fewer prompt tokens"
            )
        prompt = self.weight.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = _insert(embeds, k, prompt)
        kwargs["input_ids"] = None
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise PeltError("prompt tuning needs a 2-D attention mask (batch × tokens)")
            kwargs["attention_mask"] = _insert(mask, k, mask.new_ones(batch, p))
        token_types = kwargs.get("token_type_ids")
        if token_types is not None:
            kwargs["token_type_ids"] = _insert(token_types, k, token_types.new_zeros(batch, p))
        return (), kwargs

    def extend_cross_attention_mask(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        """Forward pre-hook of a decoder stack: its cross-attention mask must cover the prompt too."""
        kwargs = call_kwargs(module, args, kwargs)
        states, mask = kwargs.get("encoder_hidden_states"), kwargs.get("encoder_attention_mask")
        if states is None or mask is None or mask.dim() != 2 or mask.shape[1] + self.num_tokens != states.shape[1]:
            return None
        k = min(self.position, mask.shape[1])
        kwargs["encoder_attention_mask"] = _insert(mask, k, mask.new_ones(mask.shape[0], self.num_tokens))
        return (), kwargs


def _vocab_init(config: PromptTuningConfig, embeddings: nn.Embedding, model_config: Any) -> torch.Tensor:
    vocab = embeddings.num_embeddings
    if config.init_token_ids is not None:
        bad = [i for i in config.init_token_ids if i >= vocab]
        if bad:
            raise PeltError(f"init_token_ids {bad[:3]} are outside this model's vocabulary of {vocab} tokens")
        ids = torch.tensor(config.init_token_ids)
        ids = ids.repeat(-(-config.num_tokens // len(ids)))[: config.num_tokens]
    else:
        special = {getattr(model_config, f, None) for f in _SPECIAL_TOKEN_FIELDS}
        candidates = torch.tensor([i for i in range(vocab) if i not in special])
        order = torch.randperm(len(candidates))
        if config.num_tokens > len(candidates):  # tiny vocabularies: draw with repetition
            order = torch.randint(len(candidates), (config.num_tokens,))
        ids = candidates[order[: config.num_tokens]]
    return embeddings.weight.detach()[ids.to(embeddings.weight.device)].clone()


@register_method
class PromptTuning(Method):
    name = "prompt-tuning"
    config_class = PromptTuningConfig
    default_learning_rate = 3e-2
    init_output = "changed"  # the prompt's tokens are part of the input from the start
    small_model_options = {"num_tokens": 4}

    def reference_lr(self, config: MethodConfig) -> float:
        """The Compacter authors': 3e-2 for a random prompt (R), 3e-1 for one copied from the vocabulary (T)."""
        return 3e-1 if getattr(config, "init", "random") == "vocab" else 3e-2
    description = "p trainable vectors prepended to the input embeddings (Lester et al., 2021)"

    def inject(self, model: nn.Module, config: MethodConfig, arch: ArchSpec) -> Injection:
        assert isinstance(config, PromptTuningConfig)
        prefix = base_model_path(model)
        entries = []
        for stack in arch.stacks:
            try:
                entries.append((join(prefix, stack.entry), model.get_submodule(join(prefix, stack.entry))))
            except AttributeError:
                continue
        entry_path, entry = entries[0]
        if hasattr(entry, "prompt_tuning"):
            raise PeltError(f"{entry_path or 'the model'} already has a prompt; start from a fresh base model")
        embeddings = entry.get_input_embeddings()
        weight = embeddings.weight
        if config.init == "vocab":
            init = _vocab_init(config, embeddings, model.config)
        else:
            init = torch.empty(config.num_tokens, weight.shape[1], device=weight.device, dtype=weight.dtype)
            init.uniform_(-config.init_range, config.init_range)
        limit = position_limit(entry)
        if limit is not None and config.num_tokens >= limit:
            raise PeltError(
                f"{config.num_tokens} prompt tokens leave no room for input in this model's {limit} positions; "
                "use fewer prompt tokens"
            )
        prompt = PromptEmbedding(init, arch.prompt_position, limit)
        entry.prompt_tuning = prompt
        entry.register_forward_pre_hook(prompt.prepend, with_kwargs=True)
        for _, later in entries[1:]:
            later.register_forward_pre_hook(prompt.extend_cross_attention_mask, with_kwargs=True)
        return Injection(added=[join(entry_path, "prompt_tuning.weight")])

    def mixed_batch_ops(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[SiteOp]:
        return [Prompt(path.rpartition(".")[0], tensors[f"{path}.weight"], prompt.position, prompt.max_positions)
                for path, prompt in modules_of_type(model, PromptEmbedding)]

    def extra_positions(self, config: MethodConfig) -> int:
        return config.num_tokens  # type: ignore[attr-defined]

    def check_input_length(self, model: nn.Module, max_length: int) -> None:
        super().check_input_length(model, max_length)
        for _, prompt in modules_of_type(model, PromptEmbedding):
            limit, p = prompt.max_positions, prompt.num_tokens
            if limit is not None and max_length + p > limit:
                raise PeltError(
                    f"max length {max_length} + {p} prompt tokens exceed this model's {limit} positions; "
                    f"use --max-length {limit - p} or fewer prompt tokens"
                )
