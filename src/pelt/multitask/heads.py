"""Task heads over a shared backbone: every task its own head, run for its rows without a loop over tasks.

A head is the chain of the task model's own head modules (a BERT classifier; RoBERTa's and ELECTRA's
classification heads; DeBERTa's pooler and classifier; the multiple-choice heads; BERT's pooler when it was
trained with the task), fed what the task model feeds it: the backbone's pooled output, its sequence output,
or the [CLS] state or masked token mean that replaced BERT's pooler. Heads of the same structure and shapes form
a group whose parameters are stacked; a group runs its modules' own forward once for all its rows, each row
with its own parameters (`torch.func.vmap` over `functional_call`), so tasks cost a loop over distinct head
shapes (label counts, pooling), not over tasks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from pelt.multitask.banks import Bank

HeadInput = Literal["pooled", "sequence", "cls", "mean"]


class HeadChain(nn.Module):
    """A task model's head modules in the order its forward applies them."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, module in modules:
            self.add_module(name.replace(".", "_"), module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class HeadGroup(Bank):
    """The stacked parameters of the heads of one structure, and that structure (on the meta device)."""

    def __init__(self, head_input: HeadInput, chain: HeadChain, like: torch.Tensor) -> None:
        shapes = {name: p.shape for name, p in chain.named_parameters()}
        super().__init__({name.replace(".", "__"): torch.zeros(shape, dtype=like.dtype, device=like.device)
                          for name, shape in shapes.items()})
        self.head_input = head_input
        self._chain = (chain.to("meta").eval(),)  # the structure only: every call passes the parameters
        self._names = dict(zip(self.fields, shapes))

    @staticmethod
    def signature(head_input: HeadInput, chain: HeadChain) -> tuple:
        return (head_input, tuple((type(m).__name__) for m in chain.modules()),
                tuple((name, tuple(p.shape)) for name, p in chain.named_parameters()))

    def apply(self, features: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Each row of `features` through its own task's head: (rows, outputs)."""
        params = {self._names[field]: self.gather(field, slots) for field in self.fields}
        chain = self._chain[0]

        def one(row_params: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            return functional_call(chain, row_params, (row.unsqueeze(0),)).squeeze(0)

        return vmap(one)(params, features)
