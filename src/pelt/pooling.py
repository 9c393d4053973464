"""What a BERT classifier reads instead of its pooler: the [CLS] state or the masked token mean.

Sentence-embedding checkpoints (the bundled MiniLM) ship a pooler that was never trained; replacing it by a
parameter-free pooling means a task stores only its classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pelt.arch import pooler_path
from pelt.errors import PeltError

POOLINGS = ("cls", "mean")
KEEP_POOLER = "pooler"  # pelt train's --pooling value for "the checkpoint's own pooler, as it is"


def default_pooling(model: nn.Module, pooling: str | None, train_pooler: bool) -> str | None:
    """The pooling a run uses: as asked, or mean pooling when BERT's pooler was never trained.

    A pooler left untrained (sentence-embedding checkpoints such as the bundled MiniLM ship its bias all zeros)
    would either bottleneck a classifier as it is or have to be trained and stored with every task (147,840
    values on MiniLM, 94% of a Hadamard task); the masked token mean those checkpoints were tuned through scores
    as well and stores nothing. `pooling="pooler"` keeps the pooler as it is.
    """
    if pooling == KEEP_POOLER:
        return None
    if pooling is not None or train_pooler:
        return pooling
    path = pooler_path(model)
    bias = getattr(getattr(model.get_submodule(path), "dense", None), "bias", None) if path else None
    return "mean" if isinstance(bias, torch.Tensor) and not bool(bias.detach().abs().sum()) else None


class TokenPooling(nn.Module):
    """Stands in for BERT's pooler: the [CLS] state, or the mean of the real tokens' states, straight to the
    classifier.

    Nothing here is trained, so a task stores only its classifier. Sentence-embedding checkpoints were tuned
    through mean pooling and ship an untrained pooler, which would otherwise have to be trained (and stored) per
    task. BERT does not pass its pooler the attention mask, so for `mean` a forward hook on the backbone
    (`_masked_mean_output`) redoes the mean over the tokens the mask the backbone ran with keeps (a prompt's
    widened mask included); it holds no state, so model replicas (DataParallel) stay right.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0] if self.mode == "cls" else hidden_states.mean(dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of the states (batch × tokens × width) of the tokens the mask keeps."""
    if mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _masked_mean_output(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    """Forward hook of a BERT backbone under mean pooling: its pooled output, padding left out."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    if mask is None:  # every token is real: TokenPooling's plain mean is already the answer
        return None
    states = output[0]
    if mask.shape != states.shape[:2]:  # a method changed the sequence without widening the mask
        raise RuntimeError(f"mean pooling: mask {tuple(mask.shape)} does not cover states {tuple(states.shape[:2])}")
    pooled = masked_mean(states, mask)
    if isinstance(output, tuple):  # return_dict=False
        return (output[0], pooled, *output[2:])
    output["pooler_output"] = pooled
    return output


def replace_pooler(model: nn.Module, pooling: str) -> Callable[[], None]:
    """Swap a BERT model's pooler for a TokenPooling (and hook the masked mean); return what undoes it.

    `apply_method(..., pooling=...)` does this; analyses call it to rebuild the base model a run was trained on.
    """
    if pooling not in POOLINGS:
        raise PeltError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    path = pooler_path(model)
    if path is None:
        raise PeltError(f"pooling={pooling}: this {type(model).__name__} has no BERT-style pretrained pooler to "
                        "replace (only BERT classifiers have one); leave the option off")
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = getattr(parent, name)
    setattr(parent, name, TokenPooling(pooling))
    hook = parent.register_forward_hook(_masked_mean_output, with_kwargs=True) if pooling == "mean" else None

    def undo() -> None:
        setattr(parent, name, old)
        if hook is not None:
            hook.remove()
    return undo
