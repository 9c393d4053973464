"""Adapter files: a JSON config and safetensors weights holding only what was trained (the task head
included), written atomically, checked on load (base model, checksum, finite values, option types)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pelt import __version__
from pelt.arch import base_model, head_module_names, iter_layers
from pelt.core import _state, apply_method, check_model_argument, check_path_argument, count_parameters
from pelt.errors import PeltError, PeltWarning
from pelt.files import strict_json, write_folder_atomically
from pelt.methods import MethodConfig, get_method
from pelt.models import checkpoint_name
from pelt.pooling import POOLINGS

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CHECKSUM_KEY = "weights_sha256"  # of WEIGHTS_NAME, in the config


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What an adapter records of its base model, to refuse loading into a different one."""
    config = model.config
    state = getattr(model, "pelt_state", None)
    base_params = state.base_param_count if state else count_parameters(base_model(model))
    return {
        "model_type": config.model_type,
        "name_or_path": getattr(config, "_name_or_path", "") or "",
        "model_class": type(model).__name__,
        "hidden_size": getattr(config, "hidden_size", getattr(config, "d_model", None)),
        "num_layers": sum(1 for _ in iter_layers(model)),
        "num_labels": getattr(config, "num_labels", None),
        "base_params": base_params,
    }


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors that hold a NaN or an infinity.

    A NaN or an infinity makes a tensor's sum non-finite, so one pass of sums (one device sync, no copy) clears
    the usual case; only tensors whose sum is not finite are looked at element by element (a sum can also
    overflow, for values near float32's limit)."""
    if not tensors:
        return []
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors.values()]
    if bool(torch.isfinite(torch.stack([s.to(sums[0].device) for s in sums])).all()):
        return []
    return [name for (name, t), total in zip(tensors.items(), sums)
            if not bool(torch.isfinite(total)) and not bool(torch.isfinite(t.detach()).all())]


def weights_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, recorded in the adapter config: a flipped byte in the data is found on load."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_adapter(model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Save only what was trained (method weights, unfrozen base weights, task head) and the method config."""
    check_model_argument(model, "save_adapter")
    check_path_argument(path, "save_adapter")
    state = _state(model)
    if state.merged:
        raise PeltError("the method is merged into the base weights; call pelt.unmerge(model) before saving")
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().to("cpu").contiguous().clone() for name in state.trainable}
    bad = non_finite_tensors(tensors)
    if bad:
        raise PeltError(f"not saving {path}: {len(bad)} trained tensors hold NaN or infinite values ({bad[0]}, ...); "
                        "the training diverged")
    config = {
        "pelt_version": __version__,
        "method": state.config.method,
        "method_config": state.config.to_dict(),
        "base_model": model_signature(model),
        "train_pooler": state.train_pooler,
        "pooling": state.pooling,
        "trainable_parameters": sum(t.numel() for t in tensors.values()),
        **(metadata or {}),
    }
    target = Path(path)
    if target.exists():  # the save replaces the folder: it may hold an adapter, nothing else
        if not target.is_dir():
            raise PeltError(f"{target} is a file; save the adapter into a folder")
        others = sorted(p.name for p in target.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise PeltError(f"{target} holds other files ({shown}); save the adapter into a new folder or one that "
                            "holds only an adapter")

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "method": state.config.method})
        config[CHECKSUM_KEY] = weights_checksum(folder / WEIGHTS_NAME)
        (folder / CONFIG_NAME).write_text(strict_json(config, indent=2) + "\n")

    write_folder_atomically(target, write)
    return target


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    check_path_argument(path, "reading an adapter")
    folder = Path(path)
    file = folder / CONFIG_NAME
    if folder.is_file():
        hint = f"; pass its folder, {folder.parent}" if folder.name in (CONFIG_NAME, WEIGHTS_NAME) else \
            f"; pass the folder that holds {CONFIG_NAME}"
        raise PeltError(f"adapter {folder} is a file, not an adapter folder{hint}")
    if not folder.is_dir():
        previous = folder.with_name(f".{folder.name}.old")
        if (previous / CONFIG_NAME).is_file():  # a save was cut between its two renames
            raise PeltError(f"adapter folder {folder} does not exist, but {previous} holds the adapter an interrupted "
                            f"save was replacing; rename it to {folder.name}")
        raise PeltError(f"adapter folder {folder} does not exist; pass the folder that holds {CONFIG_NAME}")
    if not file.is_file():
        raise PeltError(f"{folder} has no {CONFIG_NAME}; is it a pelt adapter folder?")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PeltError(f"{file} is not valid JSON ({e.msg} at line {e.lineno}); the adapter is damaged") from None
    except UnicodeDecodeError:
        raise PeltError(f"{file} is not text (UTF-8 JSON); the adapter is damaged") from None
    if not isinstance(config, dict) or not isinstance(config.get("method_config"), dict) \
            or not isinstance(config.get("base_model"), dict):
        raise PeltError(f"{file} is not a pelt adapter config (no method_config/base_model)")
    config.setdefault("method", config["method_config"].get("method"))
    if not isinstance(config["method"], str):
        raise PeltError(f"{file} names no method; the adapter is damaged")
    for key, (accepts, what) in _RECORDED.items():
        if key in config and not accepts(config[key]):
            raise PeltError(f"{file}: {key} is {config[key]!r}, not {what}; the adapter config is damaged")
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What an adapter config records besides its method, as pelt wrote it: checked on load, so a hand-edited or
# damaged value is one line, not an error deep inside evaluation or serving.
_RECORDED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task": (lambda v: isinstance(v, str), "a task name"),
    "label_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of label names"),
    "max_length": (lambda v: _is_int(v) and v >= 1, "a number of tokens"),
    "train_pooler": (lambda v: isinstance(v, bool), "true or false"),
    "pooling": (lambda v: v is None or v in POOLINGS, f"null or one of {', '.join(POOLINGS)}"),
    CHECKSUM_KEY: (lambda v: isinstance(v, str) and len(v) == 64, "a SHA-256 in hex"),
    "split_seed": (_is_int, "an integer"),
    "split_protocol": (lambda v: v in ("standard", "compacter"), "standard or compacter"),
    "target_style": (lambda v: v in ("names", "ids"), "names or ids"),
    "task_prefix": (lambda v: isinstance(v, bool), "true or false"),
    "model": (lambda v: v is None or isinstance(v, str), "a model name or folder"),
}


def _saved_by_newer(config: dict[str, Any]) -> str:
    """' (saved by pelt X, this is Y: upgrade pelt)' when the adapter comes from a newer pelt, else ''."""
    from packaging.version import InvalidVersion, Version

    saved = str(config.get("pelt_version") or "")
    try:
        newer = Version(saved) > Version(__version__)
    except InvalidVersion:
        newer = False
    return f" (saved by pelt {saved}, this is pelt {__version__}: upgrade pelt to load it)" if newer else ""


def check_base_model(path: str | os.PathLike, expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Refuse an adapter whose recorded base model (`expected`) has another family, width, depth or size."""
    keys = ("model_type", "hidden_size", "num_layers", "base_params")
    if any(expected.get(k) != actual.get(k) for k in keys):
        def describe(s: dict[str, Any]) -> str:
            params = s.get("base_params")
            count = f"{params:,}" if isinstance(params, int) else "?"
            return (f"{s.get('model_type', '?')} (hidden {s.get('hidden_size', '?')}, "
                    f"{s.get('num_layers', '?')} layers, {count} params)")
        raise PeltError(
            f"adapter {path} was trained on {expected.get('name_or_path') or '?'}: {describe(expected)}, "
            f"but this model is {describe(actual)}; load it into the model it was trained on"
        )
    _warn_if_other_checkpoint(path, expected, actual)


def adapter_method_config(config: dict[str, Any]) -> MethodConfig:
    """The method config a saved adapter's config records, checked."""
    try:
        return get_method(config["method"]).config_class.from_dict(config["method_config"])
    except PeltError as e:  # an unknown method or option: most likely a newer pelt wrote it
        raise PeltError(f"{e}{_saved_by_newer(config)}") from None


def read_adapter_tensors(path: str | os.PathLike, config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """An adapter folder's trained tensors (safetensors only), checked against the checksum its config records
    (adapters saved before pelt recorded one are checked for finite values only)."""
    weights_file = Path(path) / WEIGHTS_NAME
    if not weights_file.is_file():
        raise PeltError(f"{Path(path)} has no {WEIGHTS_NAME}; the adapter is incomplete")
    recorded = (config if config is not None else read_adapter_config(path)).get(CHECKSUM_KEY)
    if recorded is not None and recorded != weights_checksum(weights_file):
        raise PeltError(f"{weights_file} does not match the checksum its {CONFIG_NAME} records: the file is damaged "
                        "or was changed after saving; restore it from a copy or train the adapter again")
    try:
        tensors = load_file(str(weights_file))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise PeltError(f"cannot read {weights_file}: {e}; the adapter file is damaged") from None
    bad = non_finite_tensors(tensors)
    if bad:
        raise PeltError(f"{weights_file}: {len(bad)} tensors hold NaN or infinite values ({bad[0]}, ...); the "
                        "adapter comes from a diverged training and would answer nonsense")
    return tensors


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply a saved adapter's method to a fresh base model and load its trained weights."""
    check_model_argument(model, "load_adapter")
    config = read_adapter_config(path)
    check_base_model(path, config["base_model"], model_signature(model))
    method_config = adapter_method_config(config)
    tensors = read_adapter_tensors(path, config)
    apply_adapter_config(model, config, method_config)
    _load_trained(model, tensors, source=str(Path(path) / WEIGHTS_NAME))
    return model


def apply_adapter_config(model: nn.Module, config: dict[str, Any], method_config: MethodConfig) -> None:
    """Apply the method of a saved adapter's config, with the head and pooling it was trained with."""
    apply_method(model, method_config, train_head=bool(head_module_names(model)),
                 train_pooler=bool(config.get("train_pooler", False)), pooling=config.get("pooling"))


def _warn_if_other_checkpoint(path: str | os.PathLike, expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Two checkpoints of one architecture have the same shapes: the adapter loads, its weights are wrong for it."""
    trained_on, this_model = (checkpoint_name(str(s.get("name_or_path") or "")) for s in (expected, actual))
    if trained_on and this_model and trained_on != this_model:
        warnings.warn(
            f"adapter {path} was trained on {expected['name_or_path']}, this model is {actual['name_or_path']}; "
            "the shapes match so it loads, but its weights were learned for the other checkpoint",
            PeltWarning, stacklevel=3,
        )


def _load_trained(model: nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    check_trained_tensors(model, tensors, source=source)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def check_trained_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """The tensors must be exactly the adapted model's trained set, in its shapes."""
    state = _state(model)
    params = dict(model.named_parameters())
    expected = set(state.trainable)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise PeltError(
            f"{source} does not match this model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
            "was it saved for another model class or task head?"
        )
    for name, tensor in tensors.items():
        if params[name].shape != tensor.shape:
            raise PeltError(
                f"{source}: {name} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(params[name].shape)} (a head for a different number of labels?)"
            )


def load_trained_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Reload weights saved from this same adapted model (e.g. the best checkpoint at the end of training)."""
    _load_trained(model, load_file(str(Path(path) / WEIGHTS_NAME)), source=str(path))
