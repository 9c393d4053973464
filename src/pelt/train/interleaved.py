"""Several task models trained as one, on the same Trainer, recipe, schedule and divergence guard as `train_model`.

The task models share their backbone modules (one adapter) and keep their own heads. Every batch holds one
task's examples (length-grouped within the task, as `train_model` groups them), and the tasks' batches are
interleaved in one shuffled order per epoch, so each task is seen in proportion to its size.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Sampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from pelt.core import set_trainable
from pelt.errors import PeltError
from pelt.methods import MethodConfig
from pelt.train.formulations import Formulation
from pelt.train.trainer import Stage, TrainConfig, _DivergenceGuard, recipe_stages, training_arguments

__all__ = ["train_interleaved"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class _TaskRouter(nn.Module):
    """The task models as one module: a batch goes to its task's model. Modules the models share are one set of
    parameters here (the optimizer and the guard see each once)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.tasks = nn.ModuleList(models)

    def forward(self, task: int, batch: dict[str, torch.Tensor]) -> Any:
        return self.tasks[task](**batch)


class _Tagged(torch.utils.data.Dataset):
    def __init__(self, encoded: Dataset, task: int) -> None:
        self.encoded, self.task = encoded, task

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.encoded[index], "task": self.task}


class _TaskBatches(Sampler[list[int]]):
    """Batches of one task each, in one shuffled order of all tasks' batches; another order every epoch."""

    def __init__(self, lengths: Sequence[Sequence[int]], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.offsets = [0, *itertools.accumulate(len(task) for task in lengths)][:-1]
        self.epoch = 0

    def __len__(self) -> int:
        return sum(-(-len(task) // self.batch_size) for task in self.lengths)

    def __iter__(self) -> Iterator[list[int]]:
        seed, self.epoch = self.seed + self.epoch, self.epoch + 1
        batches = []
        for offset, lengths in zip(self.offsets, self.lengths):
            order = list(LengthGroupedSampler(self.batch_size, lengths=list(lengths),
                                              generator=torch.Generator().manual_seed(seed)))
            batches += [[offset + i for i in order[start:start + self.batch_size]]
                        for start in range(0, len(order), self.batch_size)]
        random.Random(seed).shuffle(batches)
        return iter(batches)


class _InterleavedTrainer(Trainer):
    """The Trainer, fed the interleaved batches; a non-finite loss stops the run naming its task."""

    def __init__(self, *args: Any, batches: _TaskBatches, collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
                 task_names: Sequence[str], stage: Stage, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches, self.collate, self.task_names, self.stage = batches, collate, task_names, stage

    def get_train_dataloader(self) -> DataLoader:
        return self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=self.batches,
                                                   collate_fn=self.collate, num_workers=0))

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if not torch.isfinite(loss):
            raise PeltError(f"training diverged at step {self.state.global_step + 1} ({self.stage.name} stage, "
                            f"learning rate {self.stage.learning_rate:g}): the loss of "
                            f"{self.task_names[inputs['task']]} is {loss.item()}; lower the learning rate and train "
                            "again")
        return result


class _AtEpochEnd(TrainerCallback):
    def __init__(self, stage: Stage, guard: _DivergenceGuard, on_epoch: Callable[[Stage, int], None]) -> None:
        self.stage, self.guard, self.on_epoch, self.epochs = stage, guard, on_epoch, 0

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.guard.check_weights(state.global_step)  # before `on_epoch` can save them
        self.epochs += 1
        self.on_epoch(self.stage, self.epochs)


def train_interleaved(
    models: Sequence[nn.Module],
    task_names: Sequence[str],
    formulations: Sequence[Formulation],
    encoded: Sequence[Dataset],
    config: TrainConfig,
    method: MethodConfig,
    *,
    on_epoch: Callable[[Stage, int], None],
) -> None:
    """Train the task models together through the recipe's stages; `on_epoch(stage, epoch)` runs after every
    epoch (to evaluate and keep the best adapter: the Trainer itself evaluates nothing here)."""
    router = _TaskRouter(models)
    for task_model in models:
        set_trainable(task_model, method=True, head=True)
    trained = [name for name, p in router.named_parameters() if p.requires_grad]
    stages = recipe_stages(config, method)
    guard = _DivergenceGuard(router, trained, {s.name: s.learning_rate for s in stages}, config.logging_steps)
    columns = [[c for c in _MODEL_INPUTS if c in e.column_names] for e in encoded]
    dataset = ConcatDataset([_Tagged(e.select_columns(c), t) for t, (e, c) in enumerate(zip(encoded, columns))])
    collators = [f.collator(m) for f, m in zip(formulations, models)]
    lengths = [list(e["length"]) for e in encoded]

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        task = items[0]["task"]
        return {"task": task, "batch": collators[task]([{k: v for k, v in item.items() if k != "task"}
                                                        for item in items])}

    for stage in stages:
        guard.stage = stage.name
        for task_model in models:
            set_trainable(task_model, method=stage.trains_method, head=True)
        trainer = _InterleavedTrainer(
            model=router,
            args=training_arguments(config, formulations[0], stage, {"eval_strategy": "no", "eval_steps": None}),
            train_dataset=dataset,
            batches=_TaskBatches(lengths, config.batch_size, config.seed),
            collate=collate, task_names=task_names, stage=stage,
            callbacks=[guard, _AtEpochEnd(stage, guard, on_epoch)],
        )
        trainer.train()
