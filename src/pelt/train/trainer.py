"""Training and evaluation of an adapted model on a task, on transformers' Trainer (the seq2seq one for T5).

The Trainer does the loop, progress bar, schedule and evaluation; pelt adds the two-stage recipe, a checkpoint
callback that keeps the best adapter by the task's validation metric (saved atomically, so an interrupted run
always leaves a loadable checkpoint), and a results JSON with metrics on every evaluation split (validation and,
under a split protocol with one, test), trained parameters, time and memory. What the model reads and how its
output is scored is the formulation's business (`pelt.train.formulations`).
"""

from __future__ import annotations

import math
import sys
import time
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import DatasetDict
from torch import nn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from pelt import __version__
from pelt.core import parameter_report, set_trainable
from pelt.adapter_files import load_trained_weights, non_finite_tensors, save_adapter
from pelt.errors import PeltError
from pelt.files import write_json
from pelt.methods import MethodConfig, get_method
from pelt.tasks import TaskSpec, protocol_defaults
from pelt.train.formulations import Formulation
from pelt.train.memory import PeakMemory
from pelt.train.run_folder import ADAPTER_DIR, LAST_DIR, RESULTS_FILE, claim_run_folder

__all__ = ["ADAPTER_DIR", "LAST_DIR", "RESULTS_FILE", "Stage", "TrainConfig", "evaluate_model", "recipe_stages",
           "train_model", "training_arguments"]


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. None takes a default: the learning rate the method's; epochs, batch size, max
    length and warm-up the task's protocol defaults (`pelt.tasks.protocol_defaults`)."""

    output_dir: str
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    eval_batch_size: int = 64
    max_length: int | None = None
    weight_decay: float = 0.0
    warmup_ratio: float | None = None  # a fraction of the training steps, or
    warmup_steps: int | None = None  # a number of steps (the protocol's default)
    seed: int = 42
    recipe: Literal["auto", "two-stage", "joint"] = "auto"  # auto: the method's own recipe
    head_epochs: float = 1.0  # stage (a) of the two-stage recipe: the head alone
    head_learning_rate: float = 1e-3
    logging_steps: int = 50
    eval_steps: int | None = None  # evaluate (and checkpoint) every N optimizer steps instead of every epoch
    max_eval_samples: int | None = None
    target_style: Literal["names", "ids"] = "names"  # text to text: label names or ids as targets
    task_prefix: bool = True  # text to text: start the input with the task name
    overwrite: bool = False  # replace a run already in output_dir (its results and checkpoints)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise PeltError(f"{f.name} must be a finite number, got {value}")
        if not self.output_dir or not str(self.output_dir).strip():
            raise PeltError("the output folder (--output-dir) is empty; give the folder the run writes into")
        positive = {"eval_batch_size": self.eval_batch_size, "head_learning_rate": self.head_learning_rate}
        for name in ("epochs", "batch_size", "max_length", "learning_rate"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not value > 0:
                raise PeltError(f"{name} must be positive, got {value}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise PeltError(f"eval_steps must be a positive number of steps, got {self.eval_steps}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise PeltError(f"max_eval_samples must be at least 1 (or unset: every example), "
                            f"got {self.max_eval_samples}")
        if self.seed < 0:
            raise PeltError(f"seed must be at least 0, got {self.seed}")
        if self.weight_decay < 0:
            raise PeltError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.head_epochs < 0:
            raise PeltError(f"head_epochs must be >= 0, got {self.head_epochs}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise PeltError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise PeltError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise PeltError("give either warmup_ratio or warmup_steps, not both")
        if self.recipe not in ("auto", "two-stage", "joint"):
            raise PeltError(f"recipe must be auto, two-stage or joint, got '{self.recipe}'")
        if self.target_style not in ("names", "ids"):
            raise PeltError(f"target_style must be names or ids, got '{self.target_style}'")

    def for_task(self, task: TaskSpec | str) -> TrainConfig:
        """A copy with every unset protocol setting filled from the task's defaults."""
        self.validate()
        defaults = protocol_defaults(task)
        filled = {k: defaults[k] for k in ("epochs", "batch_size", "max_length") if getattr(self, k) is None}
        if self.warmup_ratio is None and self.warmup_steps is None:
            filled["warmup_steps"] = defaults["warmup_steps"]
        return replace(self, **filled)


class _CheckpointCallback(TrainerCallback):
    """After each evaluation: save the last checkpoint, and the best one by the task's main metric.

    An evaluation whose metric is not a number ranks below every other, but still gives a best checkpoint when
    no evaluation does better (the run ends with an adapter to load).
    """

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
        main = state.is_world_process_zero  # under DDP every rank holds the same weights: one writes them
        if main:
            save_adapter(self.model, self.output_dir / LAST_DIR, metadata=meta)
        score = value if math.isfinite(value) else -math.inf
        if self.best_epoch is None or score > self.best:
            self.best, self.best_epoch = score, record
            if main:
                save_adapter(self.model, self.output_dir / ADAPTER_DIR, metadata=meta)


class _DivergenceGuard(TrainerCallback):
    """Stop a run the moment its loss or trained weights stop being numbers (a learning rate far too high, a
    NaN option), naming the step, before an evaluation could save those weights as a checkpoint."""

    # Up to this many trained values the weights are checked after every step (a few ms on a CPU step of
    # seconds); above it (full fine-tuning of a large model) at each logging step and before each evaluation.
    CHECK_EVERY_STEP_UP_TO = 50_000_000

    def __init__(self, model: nn.Module, names: list[str], learning_rate: dict[str, float],
                 logging_steps: int) -> None:
        self.model, self.names, self.learning_rate = model, names, learning_rate
        self.stage = ""
        values = sum(model.get_parameter(n).numel() for n in names)
        self.every = 1 if values <= self.CHECK_EVERY_STEP_UP_TO else max(1, logging_steps)

    def _stop(self, step: int, what: str) -> typing.NoReturn:
        lr = self.learning_rate.get(self.stage)
        rate = f", learning rate {lr:g}" if lr else ""
        raise PeltError(f"training diverged at step {step} ({self.stage} stage{rate}): {what}; lower the learning "
                        "rate (--lr, --head-lr) and train again")

    def check_weights(self, step: int) -> None:
        bad = non_finite_tensors({n: self.model.get_parameter(n) for n in self.names})
        if bad:
            self._stop(step, f"{len(bad)} trained tensors hold NaN or infinite values ({bad[0]}, ...)")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step % self.every == 0:
            self.check_weights(state.global_step)

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001
        self.check_weights(state.global_step)  # before the checkpoint callback saves them

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self._stop(state.global_step, f"the training loss is {loss}")


def recipe_of(config: TrainConfig, method: MethodConfig) -> tuple[bool, float]:
    """(two-stage?, learning rate of the method stage): the config's, else the method's own recipe and rate."""
    spec = get_method(method.method)
    two_stage = config.recipe == "two-stage" or (config.recipe == "auto" and spec.two_stage)
    return two_stage, config.learning_rate or spec.default_learning_rate


@dataclass(frozen=True)
class Stage:
    """One pass of the Trainer: the head alone (stage a of the two-stage recipe), or the method with the head."""

    name: Literal["head", "method"]
    epochs: float
    learning_rate: float
    trains_method: bool


def recipe_stages(config: TrainConfig, method: MethodConfig, *, has_head: bool = True) -> list[Stage]:
    """The stages a run trains, in order. Every training path (one task's, the shared adapter's) takes its recipe
    and learning rates from here; a model without a head of its own (text to text) has no head stage."""
    two_stage, learning_rate = recipe_of(config, method)
    stages = []
    if two_stage and config.head_epochs > 0 and has_head:
        stages.append(Stage("head", config.head_epochs, config.head_learning_rate, trains_method=False))
    stages.append(Stage("method", config.epochs, learning_rate, trains_method=True))  # type: ignore[arg-type]
    return stages


def training_arguments(config: TrainConfig, formulation: Formulation, stage: Stage, extra: dict[str, Any]
                       ) -> TrainingArguments:
    """The Trainer's arguments for one stage; `extra` (the formulation's, or a caller's) overrides."""
    warmup = config.warmup_ratio if config.warmup_ratio is not None else int(config.warmup_steps or 0)
    settings: dict[str, Any] = dict(
        output_dir=config.output_dir,
        num_train_epochs=stage.epochs,
        learning_rate=stage.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        weight_decay=config.weight_decay,
        warmup_steps=warmup,  # a float below 1 is a fraction of the steps
        lr_scheduler_type="linear",
        eval_strategy="steps" if config.eval_steps else "epoch",
        eval_steps=config.eval_steps,
        save_strategy="no",  # pelt saves only the trained weights, in its callback
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        train_sampling_strategy="group_by_length",
        seed=config.seed,
        report_to=[],
        logging_nan_inf_filter=False,  # a NaN loss is reported (and stops the run), not averaged away
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    return formulation.arguments_class(**{**settings, **extra})


def _eval_splits(data: DatasetDict) -> list[str]:
    return [s for s in data if s != "train"]


def _encode_all(formulation: Formulation, data: DatasetDict, max_eval_samples: int | None) -> tuple[DatasetDict, DatasetDict]:
    raw = DatasetDict({name: split for name, split in data.items()})
    if max_eval_samples:
        for name in _eval_splits(raw):
            raw[name] = raw[name].select(range(min(max_eval_samples, len(raw[name]))))
    encoded = DatasetDict({name: formulation.encode(split, training=name == "train") for name, split in raw.items()})
    return raw, encoded


def adapter_metadata(formulation: Formulation, max_length: int, run_info: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """What a saved adapter records so `pelt eval` can put the task to it the same way (and where it came from)."""
    task = formulation.task
    return {"task": task.name, "label_names": list(task.label_names or []), "max_length": max_length,
            **formulation.metadata(), **(run_info or {})}


def train_model(
    model: nn.Module,
    formulation: Formulation,
    data: DatasetDict,
    config: TrainConfig,
    *,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train an adapted model, keep the best checkpoint by the first evaluation split, evaluate it on every
    evaluation split, write results.json. The output folder is held for the run (`claim_run_folder`)."""
    config = config.for_task(formulation.task)
    if "train" not in data:
        raise PeltError(f"no training split for {formulation.task.name}; the data folder needs a train file")
    if not _eval_splits(data):
        raise PeltError(f"no validation split for {formulation.task.name}; the data folder needs its dev file")
    with claim_run_folder(config.output_dir, overwrite=config.overwrite) as output_dir:
        return _train_in(output_dir, model, formulation, data, config, run_info)


def _train_in(output_dir: Path, model: nn.Module, formulation: Formulation, data: DatasetDict, config: TrainConfig,
              run_info: dict[str, Any] | None) -> dict[str, Any]:
    task = formulation.task
    state = model.pelt_state
    two_stage, learning_rate = recipe_of(config, state.config)
    eval_splits = _eval_splits(data)

    raw, encoded = _encode_all(formulation, data, config.max_eval_samples)
    selection = eval_splits[0]
    metric_key = f"eval_{task.main_metric}"
    metadata = adapter_metadata(formulation, config.max_length, run_info)
    callback = _CheckpointCallback(model, output_dir, metric_key, metadata)
    stages = recipe_stages(config, state.config, has_head=bool(state.head))
    guard = _DivergenceGuard(model, state.trainable, {stage.name: stage.learning_rate for stage in stages},
                             config.logging_steps)
    collator = formulation.collator(model)
    extra = formulation.arguments(encoded)

    def run_stage(stage: Stage) -> Trainer:
        callback.stage = guard.stage = stage.name
        set_trainable(model, method=stage.trains_method, head=True)
        trainer = formulation.trainer_class(
            model=model,
            args=training_arguments(config, formulation, stage, extra),
            data_collator=collator,
            train_dataset=encoded["train"],
            eval_dataset=encoded[selection],
            compute_metrics=formulation.metrics_fn(encoded[selection], raw[selection]),
            callbacks=[guard, callback],  # the guard first: diverged weights are never saved
        )
        trainer.train()
        return trainer

    total_steps = math.ceil(len(encoded["train"]) / config.batch_size) * config.epochs
    if config.warmup_steps and config.warmup_steps >= total_steps:
        print(f"pelt: warning: {config.warmup_steps} warm-up steps >= the {total_steps:g} training steps: the learning "
              "rate never reaches its peak; pass --warmup-steps or --warmup-ratio", file=sys.stderr, flush=True)
    report = parameter_report(model)
    started = time.perf_counter()
    with PeakMemory() as memory:
        for stage in stages:
            trainer = run_stage(stage)
    trainer.accelerator.wait_for_everyone()  # the best checkpoint is on disk before any rank reads it
    train_seconds = time.perf_counter() - started

    load_trained_weights(model, output_dir / ADAPTER_DIR)
    metrics = evaluate_model(model, formulation, DatasetDict({s: raw[s] for s in eval_splits}),
                             config.eval_batch_size, encoded=encoded)
    steps = callback.step_seconds
    results = {
        "pelt_version": __version__,
        "task": task.name,
        "method": state.config.method,
        "method_config": state.config.to_dict(),
        "train_config": {**asdict(config), "learning_rate": learning_rate,
                         "recipe": "two-stage" if two_stage else "joint"},
        "formulation": formulation.metadata(),
        "train_samples": len(data["train"]),
        "split_sizes": {name: len(split) for name, split in raw.items()},
        "selection_split": selection,
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
    if trainer.is_world_process_zero():  # whole or not at all: a sweep reads it as the run's record
        write_json(output_dir / RESULTS_FILE, results)
    return results


def evaluate_model(
    model: nn.Module,
    formulation: Formulation,
    data: DatasetDict,
    batch_size: int = 64,
    *,
    encoded: DatasetDict | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the model on each split of `data` (already-encoded splits may be passed as `encoded`)."""
    encoded = encoded if encoded is not None else DatasetDict(
        {name: formulation.encode(split, training=False) for name, split in data.items()})
    extra = formulation.arguments(DatasetDict({name: encoded[name] for name in data}))
    args = formulation.arguments_class(output_dir=".", per_device_eval_batch_size=batch_size, report_to=[],
                                       use_cpu=not torch.cuda.is_available(), disable_tqdm=True, **extra)
    trainer = formulation.trainer_class(model=model, args=args, data_collator=formulation.collator(model))
    trainer.remove_callback(PrinterCallback)  # it would print the raw metrics dict to stdout
    task = formulation.task
    results = {}
    for split in data:
        trainer.compute_metrics = formulation.metrics_fn(encoded[split], data[split])
        raw = trainer.evaluate(eval_dataset=encoded[split], metric_key_prefix=split)
        prefix = f"{split}_"
        results[split] = {k[len(prefix):]: v for k, v in raw.items()
                          if k.startswith(prefix) and (k[len(prefix):] in task.metrics or k == f"{prefix}invalid")}
    return results
