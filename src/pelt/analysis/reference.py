"""The fine-tuned reference the analyses compare against, and the base model it started from.

Fig. 1 and Fig. 2 of the Hadamard paper compare a model before and after full fine-tuning on the same inputs.
`finetuned_reference` trains that model once per task (or reuses a saved one); `ReferencePair` loads it next to
a fresh copy of its base model, with the task's formulation and data splits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from torch import nn

from pelt.core import head_parameter_names
from pelt.pooling import replace_pooler
from pelt.errors import PeltError
from pelt.methods import FullConfig
from pelt.pipeline import adapter_base_model, finetune, load_adapted, load_task_model
from pelt.tasks import TaskSpec, load_splits, protocol_splits
from pelt.train import TrainConfig
from pelt.train.formulations import Formulation, formulation_for

__all__ = ["ReferencePair", "finetuned_reference", "load_reference_pair"]


def finetuned_reference(
    task: str,
    output_dir: str | os.PathLike,
    train_config: TrainConfig | None = None,
    *,
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    max_train_samples: int | None = None,
    split_protocol: str = "compacter",
    train_pooler: bool = True,
) -> Path:
    """The adapter folder of a fully fine-tuned model on `task`; trained into `output_dir` unless one is there."""
    folder = Path(output_dir)
    if (folder / "results.json").is_file() and (folder / "adapter").is_dir():
        return folder / "adapter"
    # an unfinished run there (no results.json) is this function's own: replaced
    config = replace(train_config, output_dir=str(folder), overwrite=True) if train_config \
        else TrainConfig(output_dir=str(folder), overwrite=True)
    finetune(task, FullConfig(), config, model=model, data_dir=data_dir, max_train_samples=max_train_samples,
             train_pooler=train_pooler, split_protocol=split_protocol)  # type: ignore[arg-type]
    return folder / "adapter"


@dataclass
class ReferencePair:
    """A fine-tuned model and a fresh copy of its base model, on the task they were trained for."""

    base: nn.Module
    finetuned: nn.Module
    tokenizer: Any
    spec: TaskSpec
    adapter_config: dict[str, Any]
    formulation: Formulation

    def splits(self, data_dir: str | os.PathLike | None, names: list[str] | None = None) -> DatasetDict:
        """The task's splits under the protocol the reference was trained with."""
        protocol = self.adapter_config.get("split_protocol", "standard")
        wanted = names or protocol_splits(self.spec, protocol)
        return load_splits(self.spec, data_dir, protocol=protocol, split_seed=self.adapter_config.get("split_seed", 42),
                           splits=wanted)

    def encode(self, split: Dataset, limit: int | None = None) -> Dataset:
        if limit is not None:
            split = split.select(range(min(limit, len(split))))
        return self.formulation.encode(split, training=False)

    def head_names(self) -> list[str]:
        """The fine-tuned model's task head, with the pooler when it was trained."""
        return head_parameter_names(self.finetuned, train_pooler=bool(self.adapter_config.get("train_pooler")))


def load_reference_pair(finetuned: str | os.PathLike, *, model: str | None = None) -> ReferencePair:
    """Load a saved full fine-tuning (or any adapter) and the base model it was trained on."""
    tuned, tokenizer, config, spec = load_adapted(finetuned, model=model)
    if getattr(tuned.config, "is_encoder_decoder", False):
        raise PeltError(f"the attention analyses compare encoder models with a task head; {finetuned} is a text-to-"
                        "text adapter of an encoder-decoder model (train the reference on an encoder)")
    base, _ = load_task_model(spec, adapter_base_model(config, model))
    if config.get("pooling"):  # the base model as the run saw it: its fitted maps feed the run's classifier
        replace_pooler(base, config["pooling"])
    base.eval()
    formulation = formulation_for(spec, tuned.config, tokenizer, int(config.get("max_length", 128)))
    return ReferencePair(base, tuned, tokenizer, spec, config, formulation)
