"""A grid of runs: methods (with options) × tasks × learning rates × seeds × training-set sizes.

Each run is a `RunSpec` with a stable key; a grid's results live in one JSON-lines file, one record per finished
or failed run, so a restarted grid knows what is done. Methods are written `name` or `name:key=value:key=value`
(e.g. `prompt-tuning:init=vocab`); learning rates as numbers or `ref` (the method's reference learning rate),
`ref*10` / `ref/10` (its neighbours).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pelt.errors import PeltError
from pelt.methods import get_method, make_config
from pelt.methods.base import parse_option
from pelt.tasks import get_task

__all__ = ["LOW_RESOURCE_EPOCHS", "LOW_RESOURCE_EVAL_STEPS", "RunSpec", "expand_grid", "parse_variant",
           "read_records", "resolve_lr", "variant_config", "variant_label"]

# The Compacter paper's low-resource schedule (its Fig. 4): training-set size -> epochs (~100k examples seen).
LOW_RESOURCE_EPOCHS = {100: 1000, 500: 200, 1000: 100, 2000: 50, 4000: 25}
LOW_RESOURCE_EVAL_STEPS = 250  # the paper evaluates every 250 steps in its low-resource runs


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`name:key=value:...` -> (method name, options typed by the method's config)."""
    name, *pairs = [part.strip() for part in text.split(":")]
    method = get_method(name)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PeltError(f"method option {pair!r} in {text!r} must look like key=value (e.g. {name}:rank=4)")
        key = key.strip().replace("-", "_")
        value = parse_option(method.config_class, key, value.strip())
        options[key] = tuple(value) if isinstance(value, list) else value  # hashable, for RunSpec
    variant_config(method.name, options)  # validate now, not in the middle of a grid
    return method.name, options


def variant_label(text: str) -> str:
    """A variant's label in keys and reports: as written, under the method's registry name (`LoRA` -> `lora`)."""
    name, sep, rest = text.strip().partition(":")
    return get_method(name).name + sep + rest


def variant_config(method: str, options: dict[str, Any]) -> Any:
    """The method config of a grid variant (list options are kept as tuples in a RunSpec)."""
    return make_config(method, **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})


def resolve_lr(text: str, method: str, options: dict[str, Any]) -> float:
    """A number, or `ref`, `ref*10`, `ref/10` relative to the method's reference learning rate."""
    text = text.strip().lower()
    if text.startswith("ref"):
        reference = get_method(method).reference_lr(variant_config(method, options))
        factor = text[3:]
        if not factor:
            return reference
        try:
            amount = float(factor[1:])
        except ValueError:
            amount = -1.0
        if factor[0] not in "*/" or not 0 < amount < math.inf:
            raise PeltError(f"learning rate {text!r}: write ref, ref*10 or ref/10")
        return float(f"{reference * amount if factor[0] == '*' else reference / amount:.6g}")
    try:
        value = float(text)
    except ValueError:
        raise PeltError(f"learning rate {text!r} is neither a number nor ref, ref*10, ref/10") from None
    if not (value > 0 and math.isfinite(value)):
        raise PeltError(f"learning rate must be a positive number, got {text}")
    return value


@dataclass(frozen=True)
class RunSpec:
    """One training run of a grid."""

    variant: str  # the method as written in the grid (name[:options]): the label in reports
    method: str
    options: tuple[tuple[str, Any], ...]
    task: str
    learning_rate: float
    seed: int
    train_size: int | None  # None: the whole training set
    epochs: float | None = None  # None: the grid's (or the protocol's)
    eval_steps: int | None = None  # evaluate every N steps instead of every epoch

    @property
    def key(self) -> str:
        size = "all" if self.train_size is None else str(self.train_size)
        return f"{self.task}/{self.variant}/lr{self.learning_rate:g}/seed{self.seed}/n{size}"

    @property
    def folder_name(self) -> str:
        return self.key.replace("/", "__").replace(":", "_").replace("=", "-")

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["options"] = dict(self.options)
        return record


@dataclass
class GridSettings:
    """What every run of a grid shares: passed to `pelt train` as flags."""

    data_dir: str | None = None
    model: str | None = None
    split_protocol: str = "compacter"
    extra_args: list[str] = field(default_factory=list)  # any other `pelt train` flags, as given


def expand_grid(
    methods: list[str],
    tasks: list[str],
    learning_rates: list[str],
    seeds: list[int],
    train_sizes: dict[str, list[int | None]] | list[int | None],
    *,
    low_resource: bool = False,
    eval_steps: int | None = None,
) -> list[RunSpec]:
    """Every combination, tasks outermost (so a task's table fills first). `train_sizes` is one list for every
    task or a list per task. `low_resource` sets the paper's epochs per training-set size."""
    if not methods or not tasks or not learning_rates or not seeds:
        raise PeltError("a grid needs at least one method, task, learning rate and seed")
    parsed = [(variant_label(text), *parse_variant(text)) for text in methods]
    seen: dict[str, str] = {}
    for variant, method, options in parsed:  # compared as whole configs: `lora` is `lora:rank=8` (the default)
        same = seen.setdefault(f"{method} {variant_config(method, options)!r}", variant)
        if same != variant:
            raise PeltError(f"methods {same!r} and {variant!r} are the same configuration; list it once")
    all_sizes = [n for group in (train_sizes.values() if isinstance(train_sizes, dict) else [train_sizes])
                 for n in group if n is not None]
    if any(n < 1 for n in all_sizes):
        raise PeltError(f"a training-set size must be at least 1, got {min(all_sizes)}")
    if any(seed < 0 for seed in seeds):
        raise PeltError(f"a seed must be at least 0, got {min(seeds)}")
    if eval_steps is not None and eval_steps < 1:
        raise PeltError(f"evaluation every {eval_steps} steps: it must be at least 1")
    task_names = [get_task(t).name for t in tasks]
    specs: list[RunSpec] = []
    for task in task_names:
        sizes = train_sizes.get(task, [None]) if isinstance(train_sizes, dict) else train_sizes
        for (variant, method, options), lr_text, seed, size in itertools.product(
                parsed, learning_rates, seeds, sizes or [None]):
            epochs = None
            if low_resource:
                if size not in LOW_RESOURCE_EPOCHS:
                    raise PeltError(f"the low-resource schedule has epochs for sizes "
                                    f"{', '.join(map(str, LOW_RESOURCE_EPOCHS))}, not {size}")
                epochs = float(LOW_RESOURCE_EPOCHS[size])
            spec = RunSpec(variant, method, tuple(sorted(options.items())), task,
                           resolve_lr(lr_text, method, options), seed, size, epochs, eval_steps)
            if spec not in specs:  # ref/10 may equal a number also listed
                specs.append(spec)
    return specs


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a results file; a line cut short by a kill (the last one) is ignored."""
    file = Path(path)
    if not file.exists():
        return []
    records = []
    lines = file.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            record = None
        if not isinstance(record, dict) or "key" not in record:
            raise PeltError(f"{file}:{number} is not a run record; the results file is damaged (a record is a JSON "
                            "object with a key, as `pelt sweep` writes)")
        records.append(record)
    return records
