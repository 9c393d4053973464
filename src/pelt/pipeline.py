"""One call per job: fine-tune a model with a method on a task, evaluate a saved adapter, count parameters.

These are what `pelt train`, `pelt eval` and `pelt params` run, and what a notebook calls directly.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from pelt.core import ParameterReport, apply_method, load_adapter, parameter_report, read_adapter_config
from pelt.errors import PeltError
from pelt.methods import MethodConfig, get_method
from pelt.models import build_model_from_config, load_classifier, load_config, resolve_model
from pelt.tasks import get_task, load_task_data
from pelt.train import TrainConfig, evaluate_classifier, train_classifier


def finetune(
    task: str,
    method: MethodConfig,
    train_config: TrainConfig,
    *,
    model: str | None = None,
    data_dir: str | os.PathLike | None = None,
    max_train_samples: int | None = None,
    train_pooler: bool = False,
    on_start: Any = None,
) -> dict[str, Any]:
    """Load a base model, apply `method`, train on `task`, and return the results (also in results.json).

    `on_start(report)` is called with the parameter report before training starts (the CLI prints it).
    """
    train_config.validate()
    spec = get_task(task)
    data = load_task_data(spec, data_dir, max_train_samples=max_train_samples, seed=train_config.seed)
    set_seed(train_config.seed)
    base, tokenizer = load_classifier(model, spec.num_labels, label_names=list(spec.label_names or []) or None)
    apply_method(base, method, train_pooler=train_pooler)
    get_method(method.method).check_input_length(base, train_config.max_length)
    report = parameter_report(base)
    if on_start:
        on_start(report)
    run_info = {
        "model": resolve_model(model) if model is None else str(model),
        "model_label": "all-MiniLM-L6-v2 (bundled)" if model is None else str(model),
        "data_dir": str(data_dir) if data_dir else "hub",
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {platform.machine()})",
        "torch_threads": torch.get_num_threads(),
    }
    return train_classifier(base, tokenizer, spec, data, train_config, run_info=run_info)


def evaluate_adapter(
    adapter: str | os.PathLike,
    *,
    task: str | None = None,
    data_dir: str | os.PathLike | None = None,
    model: str | None = None,
    splits: list[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Metrics of a saved adapter on a task's evaluation splits (task, base model and max length default to
    the adapter's)."""
    config = read_adapter_config(adapter)
    max_length = max_length or int(config.get("max_length", 128))
    task_name = task or config.get("task")
    if not task_name:
        raise PeltError(f"adapter {adapter} does not record its task; pass --task")
    spec = get_task(task_name)
    base_name = model or config.get("model") or config["base_model"].get("name_or_path")
    if not base_name:
        raise PeltError(f"adapter {adapter} does not record its base model; pass --model")
    if model is None and not Path(base_name).exists() and config.get("model_label", "").endswith("(bundled)"):
        base_name = None  # saved on another machine: the bundled model lives elsewhere here
    base, tokenizer = load_classifier(base_name, spec.num_labels, label_names=list(spec.label_names or []) or None)
    load_adapter(base, adapter)
    get_method(config["method"]).check_input_length(base, max_length)
    base.eval()
    wanted = splits or list(spec.eval_splits)
    data = load_task_data(spec, data_dir, splits=wanted)
    return evaluate_classifier(base, tokenizer, spec, data, max_length, batch_size)


def count_parameters_for(
    model: str | None, method: MethodConfig, *, num_labels: int = 2
) -> ParameterReport:
    """The trainable-parameter report of `method` on a model configuration, built on the meta device."""
    config = load_config(model)
    if not getattr(config, "is_encoder_decoder", False):
        config.num_labels = num_labels
    base = build_model_from_config(config, device="meta")
    apply_method(base, method)
    return parameter_report(base)
