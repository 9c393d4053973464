"""One call per job: fine-tune a model with a method on a task, evaluate a saved adapter, count parameters.

These are what `pelt train`, `pelt eval` and `pelt params` run, and what a notebook calls directly.
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import set_seed

from pelt.core import ParameterReport, apply_method, parameter_report
from pelt.pooling import default_pooling
from pelt.adapter_files import load_adapter, read_adapter_config
from pelt.arch import position_limit
from pelt.errors import PeltError, PeltWarning
from pelt.methods import MethodConfig, get_method
from pelt.models import build_model_from_config, is_seq2seq, load_config, load_pretrained, resolve_model
from pelt.tasks import TaskSpec, get_task, load_splits, protocol_splits
from pelt.run_settings import RunSettings, run_settings
from pelt.tasks.data import SplitProtocol
from pelt.tasks.spec import DEFAULT_MAX_LENGTH
from pelt.train import TrainConfig, evaluate_model, formulation_for, train_model
from pelt.train.run_folder import claim_run_folder


def _model_kind(spec: TaskSpec, model: str | None) -> str:
    if is_seq2seq(load_config(model)):
        return "text-to-text"
    return "multiple-choice" if spec.kind == "multiple_choice" else "sequence-classification"


def load_task_model(spec: TaskSpec, model: str | None) -> tuple[nn.Module, Any]:
    """A pretrained base model with a fresh head for `spec` (or as it is, for text to text), and its tokenizer."""
    return load_pretrained(model, spec.num_labels, label_names=list(spec.label_names or []) or None,
                           kind=_model_kind(spec, model))


def adapter_base_model(config: dict[str, Any], model: str | None = None) -> str | None:
    """The base model an adapter was trained on (`model` overrides); None: the bundled default."""
    base_name = model or config.get("model") or config["base_model"].get("name_or_path")
    if not base_name:
        raise PeltError("the adapter does not record its base model; pass --model")
    if model is None and not Path(base_name).exists():
        if str(config.get("model_label", "")).endswith("(bundled)"):
            return None  # saved on another machine: the bundled model lives elsewhere here
        if Path(base_name).is_absolute():  # a local folder recorded where it was trained
            raise PeltError(f"the adapter was trained on the local model {base_name}, which is not on this machine; "
                            "pass --model with a copy of that model")
    return base_name


def _describe_labels(spec: TaskSpec) -> str:
    if spec.kind == "regression":
        return "a regression score"
    if not spec.label_names:
        return f"{spec.kind.replace('_', ' ')} scores"
    return "labels " + ", ".join(spec.label_names)


def check_task_fits(adapter: str | os.PathLike, config: dict[str, Any], spec: TaskSpec) -> None:
    """An adapter asked for another task than it was trained on: refused when that task's answers differ (a head
    trained for other labels would be scored against them), a warning when only the name differs (RTE in GLUE
    and in SuperGLUE)."""
    trained = config.get("task")
    if not trained or trained == spec.name:
        return
    try:
        trained_spec = get_task(trained)
    except PeltError:
        trained_spec = None
    recorded = tuple(config.get("label_names") or (trained_spec.label_names if trained_spec else ()) or ())
    same = recorded == tuple(spec.label_names or ()) and (trained_spec is None or trained_spec.kind == spec.kind)
    if not same:
        what = _describe_labels(trained_spec) if trained_spec else ("labels " + ", ".join(recorded) if recorded
                                                                  else "a task pelt does not know")
        cure = f"evaluate it on {trained}, or train" if trained_spec else "train"
        raise PeltError(f"adapter {adapter} was trained on {trained} ({what}), but {spec.name} asks for "
                        f"{_describe_labels(spec)}; {cure} an adapter for {spec.name}")
    warnings.warn(f"adapter {adapter} was trained on {trained}; {spec.name} has the same labels, so it is scored "
                  "as it is", PeltWarning, stacklevel=3)


def finetune(
    task: str,
    method: MethodConfig,
    train_config: TrainConfig,
    settings: RunSettings | None = None,
    *,
    on_start: Any = None,
    on_note: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """Load a base model, apply `method`, train on `task`, and return the results (also in results.json).

    Encoders train the task's encoder formulation, T5 text to text. Unset hyper-parameters of `train_config`
    take the task's protocol defaults. Where the model and data come from is `settings` (or its fields as keyword
    arguments: `model=`, `data_dir=`, `max_train_samples=`, `train_pooler=`, `pooling=`, `split_protocol=`,
    `split_seed=`). `on_start(report, config)` is called with the parameter report and the resolved configuration
    before training starts (the CLI prints them), `on_note(line)` with choices pelt made that the caller did not
    ask for. `pooling` is "cls", "mean", "pooler" (BERT's pooler as it is) or None: mean pooling where the
    checkpoint's pooler was never trained, else the pooler (`pelt.pooling.default_pooling`).
    """
    run = run_settings(settings, fields)
    spec = get_task(task)
    length_asked = train_config.max_length is not None
    train_config = train_config.for_task(spec)
    _model_kind(spec, run.model)  # a model that cannot be found fails before any data is read
    with claim_run_folder(train_config.output_dir, overwrite=train_config.overwrite):
        # the subsample follows the data's seed: every training seed of a grid sees the same examples
        data = load_splits(spec, run.data_dir, protocol=run.split_protocol, split_seed=run.split_seed,
                           max_train_samples=run.train_size(spec.name), seed=run.split_seed)
        set_seed(train_config.seed)
        base, tokenizer = load_task_model(spec, run.model)
        chosen = default_pooling(base, run.pooling, run.train_pooler)
        if chosen != run.pooling and run.pooling is None and on_note:
            on_note("pooling mean: this checkpoint's pooler was never trained (its bias is all zeros), so the "
                    "classifier reads the mean of the tokens' states and no pooler is stored per task; --pooling "
                    "pooler keeps it as it is, --train-pooler trains it")
        apply_method(base, method, train_pooler=run.train_pooler, pooling=chosen)
        train_config = fit_max_length(base, train_config, asked=length_asked, on_note=on_note)
        formulation = formulation_for(spec, base.config, tokenizer, train_config.max_length,
                                      target_style=train_config.target_style, task_prefix=train_config.task_prefix)
        report = parameter_report(base)
        if on_start:
            on_start(report, train_config)
        return train_model(base, formulation, data, train_config, run_info=run_info(run))


MIN_CUT_LENGTH = 16  # a default cut to fewer tokens would leave room for little more than the special tokens


def fit_max_length(model: nn.Module, config: TrainConfig, *, asked: bool, on_note: Any = None) -> TrainConfig:
    """The config with a max length the adapted model can take: a protocol default longer than the model's
    positions is cut to them (with a note); a length the user asked for is refused, before anything is written
    (the first batch that long would fail inside the model), as is a cut that would leave fewer than
    MIN_CUT_LENGTH tokens (a prompt taking nearly all positions)."""
    method = get_method(model.pelt_state.config.method)
    positions = position_limit(model)
    room = None if positions is None else positions - method.extra_positions(model.pelt_state.config)
    if not asked and room is not None and room >= MIN_CUT_LENGTH and config.max_length is not None \
            and config.max_length > room:
        extra = "" if room == positions else f" less the {positions - room} the method adds"
        if on_note:
            on_note(f"max length {room}: the task's default of {config.max_length} tokens exceeds this model's "
                    f"{positions} positions{extra}")
        config = replace(config, max_length=room)
    method.check_input_length(model, config.max_length)
    return config


def run_info(settings: RunSettings) -> dict[str, Any]:
    """Where a run's model and data came from and what it ran on: recorded in its results and adapters."""
    model, data_dir = settings.model, settings.data_dir
    return {
        # a local folder as an absolute path: `pelt eval` finds it from any working directory
        "model": resolve_model(model) if model is None else str(Path(model).resolve()) if Path(model).exists()
        else str(model),
        "model_label": "all-MiniLM-L6-v2 (bundled)" if model is None else str(model),
        "data_dir": str(data_dir) if data_dir else "hub",
        "split_protocol": settings.split_protocol,
        "split_seed": settings.split_seed,
        "max_train_samples": settings.max_train_samples,
        "device": f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores, {platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    """What produced a run: scores move with library versions, so results say which ones."""
    import transformers

    import pelt

    return {"pelt": pelt.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def load_adapted(
    adapter: str | os.PathLike, *, task: str | None = None, model: str | None = None,
) -> tuple[nn.Module, Any, dict[str, Any], TaskSpec]:
    """A saved adapter on its base model: (model in eval mode, tokenizer, adapter config, task spec). Task and base
    model default to the ones the adapter was trained with."""
    config = read_adapter_config(adapter)
    task_name = task or config.get("task")
    if not task_name:
        raise PeltError(f"adapter {adapter} does not record its task; pass --task")
    spec = get_task(task_name)
    check_task_fits(adapter, config, spec)
    base, tokenizer = load_task_model(spec, adapter_base_model(config, model))
    load_adapter(base, adapter)
    base.eval()
    return base, tokenizer, config, spec


def evaluate_adapter(
    adapter: str | os.PathLike,
    *,
    task: str | None = None,
    data_dir: str | os.PathLike | None = None,
    model: str | None = None,
    splits: list[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    split_protocol: SplitProtocol | None = None,
    split_seed: int | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of a saved adapter on a task's evaluation splits. Task, base model, max length, split protocol and
    text-to-text format default to the ones the adapter was trained with."""
    for name, value in (("batch size", batch_size), ("max length", max_length)):
        if value is not None and value < 1:
            raise PeltError(f"the {name} must be at least 1, got {value}")
    base, tokenizer, config, spec = load_adapted(adapter, task=task, model=model)
    max_length = max_length or int(config.get("max_length", DEFAULT_MAX_LENGTH))
    get_method(config["method"]).check_input_length(base, max_length)
    protocol = split_protocol or config.get("split_protocol", "standard")
    seed = config.get("split_seed", 42) if split_seed is None else split_seed
    formulation = formulation_for(spec, base.config, tokenizer, max_length,
                                  target_style=config.get("target_style", "names"),
                                  task_prefix=config.get("task_prefix", True))
    wanted = splits or [s for s in protocol_splits(spec, protocol) if s != "train"]
    data = load_splits(spec, data_dir, protocol=protocol, split_seed=seed, splits=wanted)
    return evaluate_model(base, formulation, data, batch_size)


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
