"""Training and evaluation of an adapted encoder classifier on a GLUE-style task, on transformers' Trainer.

The Trainer does the loop, progress bar, schedule and evaluation; pelt adds the two-stage recipe, a checkpoint
callback that keeps the best adapter by the task's validation metric (saved atomically, so an interrupted run
always leaves a loadable checkpoint), and a results JSON with metrics, trained parameters, time and memory.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import DatasetDict
from torch import nn
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from pelt import __version__
from pelt.core import load_trained_weights, parameter_report, save_adapter, set_trainable
from pelt.errors import PeltError
from pelt.methods import get_method
from pelt.tasks import TaskSpec, compute_metrics
from pelt.train.memory import PeakMemory

ADAPTER_DIR = "adapter"  # the best checkpoint by validation metric
LAST_DIR = "last"  # the most recent checkpoint
RESULTS_FILE = "results.json"


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. learning_rate=None takes the method's default."""

    output_dir: str
    epochs: float = 3.0
    learning_rate: float | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    seed: int = 42
    recipe: Literal["auto", "two-stage", "joint"] = "auto"  # auto: the method's own recipe
    head_epochs: float = 1.0  # stage (a) of the two-stage recipe: the head alone
    head_learning_rate: float = 1e-3
    logging_steps: int = 50
    max_eval_samples: int | None = None

    def validate(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "max_length": self.max_length, "head_learning_rate": self.head_learning_rate}
        if self.learning_rate is not None:
            positive["learning_rate"] = self.learning_rate
        for name, value in positive.items():
            if not value > 0:
                raise PeltError(f"{name} must be positive, got {value}")
        if self.head_epochs < 0:
            raise PeltError(f"head_epochs must be >= 0, got {self.head_epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise PeltError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.recipe not in ("auto", "two-stage", "joint"):
            raise PeltError(f"recipe must be auto, two-stage or joint, got '{self.recipe}'")


def tokenize(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, task: TaskSpec, max_length: int) -> DatasetDict:
    """Tokenize without padding (batches are padded to their longest sequence) and keep lengths for grouping."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(*[batch[f] for f in task.text_fields], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    columns = list(task.text_fields)
    return data.map(encode, batched=True, remove_columns=columns, desc="tokenizing").rename_column("label", "labels")


def _metrics_fn(task: TaskSpec):
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = logits.squeeze(-1) if task.is_regression else np.argmax(logits, axis=-1)
        return compute_metrics(task, predicted, prediction.label_ids)

    return compute


class _CheckpointCallback(TrainerCallback):
    """After each evaluation: save the last checkpoint, and the best one by the task's main metric."""

    def __init__(self, model: nn.Module, output_dir: Path, metric_key: str, metadata: dict[str, Any]) -> None:
        self.model, self.output_dir, self.metric_key, self.metadata = model, output_dir, metric_key, metadata
        self.best: float = -math.inf
        self.best_epoch: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.stage = ""
        self.step_seconds: list[float] = []
        self._step_start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.step_seconds.append(time.perf_counter() - self._step_start)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        value = float(metrics[self.metric_key])
        record = {"stage": self.stage, "epoch": round(float(state.epoch or 0), 2), self.metric_key: value}
        self.history.append(record)
        meta = {**self.metadata, "checkpoint": record}
        save_adapter(self.model, self.output_dir / LAST_DIR, metadata=meta)
        if value > self.best:
            self.best, self.best_epoch = value, record
            save_adapter(self.model, self.output_dir / ADAPTER_DIR, metadata=meta)


def _training_arguments(config: TrainConfig, epochs: float, learning_rate: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="no",  # pelt saves only the trained weights, in its callback
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        train_sampling_strategy="group_by_length",
        seed=config.seed,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def train_classifier(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskSpec,
    data: DatasetDict,
    config: TrainConfig,
    *,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train an adapted classifier, keep the best checkpoint, evaluate it on every eval split, write results."""
    config.validate()
    state = model.pelt_state
    method = get_method(state.config.method)
    two_stage = config.recipe == "two-stage" or (config.recipe == "auto" and method.two_stage)
    learning_rate = config.learning_rate or method.default_learning_rate
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "train" not in data:
        raise PeltError(f"no training split for {task.name}; the data folder needs a train file")

    encoded = tokenize(data, tokenizer, task, config.max_length)
    eval_splits = [s for s in task.eval_splits if s in encoded]
    if not eval_splits:
        raise PeltError(f"no validation split for {task.name}; the data folder needs its dev file")
    if config.max_eval_samples:
        for split in eval_splits:
            encoded[split] = encoded[split].select(range(min(config.max_eval_samples, len(encoded[split]))))
    metric_key = f"eval_{task.main_metric}"
    metadata = {"task": task.name, "label_names": list(task.label_names or []), "max_length": config.max_length,
                **(run_info or {})}
    callback = _CheckpointCallback(model, output_dir, metric_key, metadata)
    collator = DataCollatorWithPadding(tokenizer)

    def run_stage(stage: str, epochs: float, lr: float) -> None:
        callback.stage = stage
        trainer = Trainer(
            model=model,
            args=_training_arguments(config, epochs, lr),
            data_collator=collator,
            train_dataset=encoded["train"],
            eval_dataset=encoded[eval_splits[0]],
            compute_metrics=_metrics_fn(task),
            callbacks=[callback],
        )
        trainer.train()

    report = parameter_report(model)
    started = time.perf_counter()
    with PeakMemory() as memory:
        if two_stage and config.head_epochs > 0 and state.head:
            set_trainable(model, method=False, head=True)
            run_stage("head", config.head_epochs, config.head_learning_rate)
        set_trainable(model, method=True, head=True)
        run_stage("method", config.epochs, learning_rate)
    train_seconds = time.perf_counter() - started

    load_trained_weights(model, output_dir / ADAPTER_DIR)
    metrics = evaluate_classifier(model, tokenizer, task, DatasetDict({s: data[s] for s in eval_splits}),
                                  config.max_length, config.eval_batch_size, encoded=encoded)
    steps = callback.step_seconds
    results = {
        "pelt_version": __version__,
        "task": task.name,
        "method": state.config.method,
        "method_config": state.config.to_dict(),
        "train_config": {**asdict(config), "learning_rate": learning_rate,
                         "recipe": "two-stage" if two_stage else "joint"},
        "train_samples": len(data["train"]),
        "metrics": metrics,
        "main_metric": task.main_metric,
        "best_checkpoint": callback.best_epoch,
        "history": callback.history,
        "parameters": report.to_dict(),
        "train_seconds": round(train_seconds, 2),
        "optimizer_steps": len(steps),
        "ms_per_step": round(1000 * float(np.mean(steps)), 1) if steps else None,
        "peak_memory_mb": memory.peak_mb,
        "memory_kind": memory.kind,
        **(run_info or {}),
    }
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def evaluate_classifier(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: TaskSpec,
    data: DatasetDict,
    max_length: int = 128,
    batch_size: int = 64,
    *,
    encoded: DatasetDict | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the model on each split of `data` (already-tokenized splits may be passed as `encoded`)."""
    encoded = encoded if encoded is not None else tokenize(data, tokenizer, task, max_length)
    args = TrainingArguments(output_dir=".", per_device_eval_batch_size=batch_size, report_to=[],
                             use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=_metrics_fn(task))
    trainer.remove_callback(PrinterCallback)  # it would print the raw metrics dict to stdout
    results = {}
    for split in data:
        raw = trainer.evaluate(eval_dataset=encoded[split], metric_key_prefix=split)
        prefix = f"{split}_"
        results[split] = {k[len(prefix):]: v for k, v in raw.items()
                          if k.startswith(prefix) and k[len(prefix):] in task.metrics}
    return results
