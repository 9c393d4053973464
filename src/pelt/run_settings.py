"""Where a run's model and data come from and how its data is cut: one typed object every training path takes
(`finetune`, the shared adapter, the analyses), instead of the same six arguments passed along each of them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from pelt.errors import PeltError


@dataclass(frozen=True)
class RunSettings:
    model: str | None = None  # a local folder or hub name; None: the bundled MiniLM
    data_dir: str | os.PathLike | None = None  # None: the hub
    max_train_samples: int | dict[str, int] | None = None  # a seeded subsample (per task for several tasks)
    train_pooler: bool = False  # BERT's pooler trained with the head
    pooling: str | None = None  # "cls", "mean", "pooler" or None (see pelt.pooling.default_pooling)
    split_protocol: str = "standard"  # or "compacter"
    split_seed: int = 42

    def train_size(self, task: str) -> int | None:
        """The training-set size of one task (a per-task mapping, or one size for all)."""
        sizes = self.max_train_samples
        return sizes.get(task) if isinstance(sizes, dict) else sizes


def run_settings(settings: RunSettings | None, fields: dict[str, Any], **defaults: Any) -> RunSettings:
    """`settings` with `fields` (keyword arguments of a notebook call) on top; `defaults` where neither sets one."""
    known = {f.name for f in dataclasses.fields(RunSettings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise PeltError(f"unknown run setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    base = settings or RunSettings(**{k: v for k, v in defaults.items() if k not in fields})
    return dataclasses.replace(base, **fields)
