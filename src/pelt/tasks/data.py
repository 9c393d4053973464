"""Loading a task's data, and the split protocols that decide what is trained on, selected on and reported.

The public test sets of GLUE and SuperGLUE have no labels. Under the ``standard`` protocol pelt trains on
train and selects and reports on the official dev set(s). Under ``compacter`` (the Compacter paper's protocol)
small datasets have their dev set halved, the first half selecting the checkpoint and the second reporting it;
large ones (>= 10k training examples) have 1,000 training examples set aside for selection, the dev set
reporting; MNLI selects on the mismatched dev set and reports on the matched one. Both cuts are seeded shuffles,
so they are identical across calls, machines and training seeds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import datasets
import numpy as np

from pelt.errors import PeltError
from pelt.tasks.glue import load_glue
from pelt.tasks.spec import TaskSpec, get_task, resolve_splits
from pelt.tasks.superglue import load_superglue

__all__ = ["PROTOCOLS", "SplitProtocol", "load_splits", "load_task_data", "protocol_splits"]

SplitProtocol = Literal["standard", "compacter"]
PROTOCOLS: tuple[str, ...] = ("standard", "compacter")
VALIDATION_FROM_TRAIN = 1000  # examples (split units) the compacter protocol sets aside on large datasets


def _check_max_train_samples(max_train_samples: int | None) -> None:
    if max_train_samples is None:
        return
    if isinstance(max_train_samples, bool) or not isinstance(max_train_samples, int):
        raise PeltError(f"max_train_samples must be a positive integer, got {max_train_samples!r}")
    if max_train_samples <= 0:
        raise PeltError(
            f"max_train_samples must be a positive integer, got {max_train_samples}; "
            "omit it to use the whole training set"
        )


def _subsample(dataset: datasets.Dataset, spec: TaskSpec, count: int, seed: int) -> datasets.Dataset:
    """A seeded random subset of `count` examples; MultiRC counts questions (their answer options stay together)."""
    if spec.kind != "answer_options":  # one row per example
        # datasets' own seeded shuffle: the subsamples of earlier pelt versions
        return dataset if count >= len(dataset) else dataset.shuffle(seed=seed).select(range(count))
    units = _units(dataset, spec, spec.question_key)
    if count >= len(units):
        return dataset
    order = np.random.default_rng(seed).permutation(len(units))
    return _take(dataset, units, order[:count])


def load_task_data(
    task: TaskSpec | str,
    data_dir: str | os.PathLike | None = None,
    *,
    splits: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    seed: int = 42,
) -> datasets.DatasetDict:
    """A task's official labeled splits (GLUE or SuperGLUE), from a local folder or (data_dir=None) the hub.

    ``max_train_samples`` keeps a seeded random subset of train so runs are comparable and reproducible; it is
    capped at the size of the split.
    """
    spec = get_task(task)
    wanted = resolve_splits(spec, splits)
    _check_max_train_samples(max_train_samples)
    if spec.benchmark == "glue":
        result = load_glue(spec, data_dir, splits=wanted)
    else:
        result = load_superglue(spec.name, data_dir, wanted)
    if max_train_samples is not None and "train" in result:
        result["train"] = _subsample(result["train"], spec, max_train_samples, seed)
    return result


def protocol_splits(task: TaskSpec | str, protocol: SplitProtocol = "standard") -> tuple[str, ...]:
    """The splits a run sees under `protocol`: train, the selection split first, then any report splits."""
    spec = get_task(task)
    _check_protocol(protocol)
    if protocol == "standard":
        return ("train",) + spec.eval_splits
    return ("train", "validation", "test")


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise PeltError(f"unknown split protocol {protocol!r}; choose from: {', '.join(PROTOCOLS)}")


def _units(dataset: datasets.Dataset, spec: TaskSpec, columns: Sequence[str] | None = None) -> list[list[int]]:
    """Row indices grouped by the values of `columns` (default: the task's split unit), in order of appearance."""
    columns = tuple(columns if columns is not None else ([spec.split_unit] if spec.split_unit else ()))
    if not columns:
        return [[i] for i in range(len(dataset))]
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(zip(*(dataset[c] for c in columns))):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _take(dataset: datasets.Dataset, units: list[list[int]], chosen: Sequence[int]) -> datasets.Dataset:
    return dataset.select([row for u in chosen for row in units[u]])


def _halves(dataset: datasets.Dataset, spec: TaskSpec, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Shuffle the units with `seed`; the first half (rounded down) and the rest."""
    units = _units(dataset, spec)
    if len(units) < 2:
        raise PeltError(f"the {spec.name} dev set has {len(units)} example(s); halving it needs at least 2")
    order = np.random.default_rng(seed).permutation(len(units))
    half = len(units) // 2
    return _take(dataset, units, order[:half]), _take(dataset, units, order[half:])


def load_splits(
    task: TaskSpec | str,
    data_dir: str | os.PathLike | None = None,
    *,
    protocol: SplitProtocol = "standard",
    split_seed: int = 42,
    splits: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    seed: int = 42,
) -> datasets.DatasetDict:
    """The splits of a run under a split protocol (see the module docstring); train subsampled after the cut.

    Under ``compacter`` the keys are train, validation (selects the checkpoint) and test (reported).
    """
    spec = get_task(task)
    _check_protocol(protocol)
    _check_max_train_samples(max_train_samples)
    wanted = resolve_splits(spec, splits, allowed=protocol_splits(spec, protocol))
    if protocol == "standard":
        return load_task_data(spec, data_dir, splits=wanted, max_train_samples=max_train_samples, seed=seed)

    result = datasets.DatasetDict()
    if spec.name == "mnli":
        need = ["train"] if "train" in wanted else []
        official = load_task_data(spec, data_dir, splits=need + ["validation_matched", "validation_mismatched"])
        pieces = {"train": official.get("train"), "validation": official["validation_mismatched"],
                  "test": official["validation_matched"]}
    elif spec.large and wanted == ["test"]:  # the dev set as it is: train is not needed
        dev = spec.eval_splits[0]
        pieces = {"test": load_task_data(spec, data_dir, splits=[dev])[dev]}
    elif spec.large:
        dev = spec.eval_splits[0]
        official = load_task_data(spec, data_dir, splits=["train", dev])
        units = _units(official["train"], spec)
        order = np.random.default_rng(split_seed).permutation(len(units))
        # whole units (a ReCoRD passage with all its queries) until 1,000 examples: no passage on both sides
        held = int(np.searchsorted(np.cumsum([len(units[u]) for u in order]), VALIDATION_FROM_TRAIN)) + 1
        if held >= len(units):
            raise PeltError(
                f"the {spec.name} training set has {len(official['train'])} examples; the compacter protocol sets "
                f"{VALIDATION_FROM_TRAIN} aside for validation and needs more (use --split-protocol standard)"
            )
        pieces = {"validation": _take(official["train"], units, order[:held]),
                  "train": _take(official["train"], units, np.sort(order[held:])),
                  "test": official[dev]}
    else:
        dev = spec.eval_splits[0]
        need = ["train"] if "train" in wanted else []
        official = load_task_data(spec, data_dir, splits=need + [dev])
        validation, test = _halves(official[dev], spec, split_seed)
        pieces = {"train": official.get("train"), "validation": validation, "test": test}
    for split in wanted:
        result[split] = pieces[split]
    if max_train_samples is not None and "train" in result:
        result["train"] = _subsample(result["train"], spec, max_train_samples, seed)
    return result


def split_sizes(task: TaskSpec | str, data_dir: str | os.PathLike | None = None, *,
                protocol: SplitProtocol = "standard", split_seed: int = 42) -> dict[str, int | PeltError]:
    """Rows per split under a protocol; a split that cannot load gives its error instead, so that the present
    ones still count (a data folder with some tasks' dev files missing)."""
    try:
        data = load_splits(task, data_dir, protocol=protocol, split_seed=split_seed)
        return {split: len(rows) for split, rows in data.items()}
    except PeltError:
        pass
    sizes: dict[str, int | PeltError] = {}
    for split in protocol_splits(task, protocol):
        try:
            sizes[split] = len(load_splits(task, data_dir, protocol=protocol, split_seed=split_seed,
                                           splits=[split])[split])
        except PeltError as e:
            sizes[split] = e
    return sizes
