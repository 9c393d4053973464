"""GLUE task specifications and data loading.

Data comes either from a local classic ``glue_data/`` folder (the TSV files written by the original
GLUE download script) or from the Hugging Face hub (``nyu-mll/glue``). Both paths produce the same
thing: a :class:`datasets.DatasetDict` whose splits hold exactly the task's text columns (named as on
the hub) plus ``label``, so everything downstream is agnostic of where the data came from.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from pelt.errors import PeltError

__all__ = ["TaskSpec", "get_task", "list_tasks", "load_task_data"]

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class TaskSpec:
    """Everything the rest of pelt needs to know about one GLUE task."""

    name: str
    folder: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    eval_splits: tuple[str, ...] = ("validation",)

    @property
    def num_labels(self) -> int:
        """Size of the classifier head: one output for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a float similarity score."""
        return self.label_names is None


_ACC = ("accuracy",)
_ACC_F1 = ("accuracy", "f1", "combined")

_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
                 ("matthews_correlation",), "matthews_correlation"),
        TaskSpec("sst2", "SST-2", ("sentence",), ("negative", "positive"), _ACC, "accuracy"),
        TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                 _ACC_F1, "combined"),
        TaskSpec("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
                 _ACC_F1, "combined"),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), None,
                 ("pearson", "spearmanr", "combined"), "combined"),
        TaskSpec("mnli", "MNLI", ("premise", "hypothesis"),
                 ("entailment", "neutral", "contradiction"), _ACC, "accuracy",
                 ("validation_matched", "validation_mismatched")),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"),
                 _ACC, "accuracy"),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                 _ACC, "accuracy"),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
                 _ACC, "accuracy"),
    )
}


def _normalize(name: str) -> str:
    """Lower-case and drop punctuation so "SST-2", "sst2" and "Sst_2" all compare equal."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def list_tasks() -> list[str]:
    """Canonical task names, in the usual GLUE order."""
    return list(_TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name, ignoring case and punctuation ("STS-B" == "stsb")."""
    if isinstance(name, TaskSpec):
        return name
    if not isinstance(name, str):
        raise PeltError(f"task name must be a string, got {type(name).__name__}")
    spec = _TASKS.get(_normalize(name))
    if spec is None:
        raise PeltError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    return spec


# --------------------------------------------------------------------------------------------------
# Local TSV layouts


@dataclass(frozen=True)
class _Layout:
    """Where the texts and label sit in a task's TSV files.

    Columns are header names, or 0-based positions when the file has no header (CoLA only).
    """

    text_columns: tuple[str | int, ...]
    label_column: str | int
    has_header: bool = True


_LAYOUTS: dict[str, _Layout] = {
    "cola": _Layout((3,), 1, has_header=False),
    "sst2": _Layout(("sentence",), "label"),
    "mrpc": _Layout(("#1 String", "#2 String"), "Quality"),
    "qqp": _Layout(("question1", "question2"), "is_duplicate"),
    "stsb": _Layout(("sentence1", "sentence2"), "score"),
    "mnli": _Layout(("sentence1", "sentence2"), "gold_label"),
    "qnli": _Layout(("question", "sentence"), "label"),
    "rte": _Layout(("sentence1", "sentence2"), "label"),
    "wnli": _Layout(("sentence1", "sentence2"), "label"),
}

_SPLIT_FILES: dict[str, str] = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}

def _task_splits(spec: TaskSpec) -> tuple[str, ...]:
    return ("train",) + spec.eval_splits


def _resolve_splits(spec: TaskSpec, splits: Sequence[str] | None) -> list[str]:
    """Validate the requested split names; default to train plus the task's eval splits."""
    if splits is None:
        return list(_task_splits(spec))
    if isinstance(splits, str):
        splits = (splits,)
    allowed = _task_splits(spec)
    result: list[str] = []
    for split in splits:
        if split not in allowed:
            raise PeltError(
                f"task {spec.name} has no split {split!r}; choose from: {', '.join(allowed)}"
            )
        if split not in result:
            result.append(split)
    if not result:
        raise PeltError(f"no splits requested for task {spec.name}; choose from: {', '.join(allowed)}")
    return result


def _check_max_train_samples(max_train_samples: int | None) -> None:
    if max_train_samples is None:
        return
    if isinstance(max_train_samples, bool) or not isinstance(max_train_samples, int):
        raise PeltError(
            f"max_train_samples must be a positive integer, got {max_train_samples!r}"
        )
    if max_train_samples <= 0:
        raise PeltError(
            f"max_train_samples must be a positive integer, got {max_train_samples}; "
            "omit it to use the whole training set"
        )


def _features(spec: TaskSpec) -> datasets.Features:
    """Canonical schema: text columns as strings, then the label (ClassLabel or float32 score)."""
    columns: dict[str, datasets.features.FeatureType] = {
        field: datasets.Value("string") for field in spec.text_fields
    }
    if spec.label_names is None:
        columns["label"] = datasets.Value("float32")
    else:
        columns["label"] = datasets.ClassLabel(names=list(spec.label_names))
    return datasets.Features(columns)


def _resolve_task_folder(spec: TaskSpec, data_dir: Path) -> Path:
    """Accept both the glue_data parent folder and the task folder itself."""
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise PeltError(
            f"data folder {data_dir} {what}; pass --data-dir pointing at a glue_data-style folder "
            "(containing SST-2/...) or omit it to download from the hub"
        )
    exact = data_dir / spec.folder
    if exact.is_dir():
        return exact
    # Tolerate re-cased or re-punctuated folder names ("sst2", "sst-2") before falling back.
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and _normalize(child.name) == spec.name:
            return child
    split_names = [_SPLIT_FILES[split] for split in _task_splits(spec)]
    if any((data_dir / name).is_file() for name in split_names):
        own = _TASKS.get(_normalize(data_dir.name))
        if own is not None and own is not spec:
            raise PeltError(
                f"data folder {data_dir} looks like the {own.folder} folder but task {spec.name} "
                f"was requested; point --data-dir at the {spec.folder} folder or its parent"
            )
        return data_dir
    raise PeltError(
        f"data folder {data_dir} has neither a {spec.folder}/ subfolder nor the {spec.folder} "
        f"files ({', '.join(split_names)}); pass --data-dir pointing at a glue_data-style folder "
        "(containing SST-2/...) or at the task folder itself"
    )


def _parse_label(spec: TaskSpec, raw: str, path: Path, line: int) -> int | float:
    """Turn a raw label field into a class id (accepting the name or the id) or an STS-B score."""
    value = raw.strip()
    if spec.label_names is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise PeltError(
                f"{path}:{line}: score {raw!r} is not a number; STS-B scores must be floats "
                "between 0 and 5"
            )
        return score
    names = spec.label_names
    if value in names:
        return names.index(value)
    if value.isascii() and value.isdigit() and int(value) < len(names):
        return int(value)
    allowed = [str(i) for i in range(len(names))] + list(names)
    raise PeltError(
        f"{path}:{line}: unknown label {raw!r} for task {spec.name}; "
        f"allowed values: {', '.join(allowed)}"
    )


def _read_tsv(spec: TaskSpec, path: Path) -> dict[str, list]:
    """Parse one split file into column lists, raising PeltError with file:line for bad rows."""
    layout = _LAYOUTS[spec.name]
    columns: dict[str, list] = {field: [] for field in spec.text_fields}
    columns["label"] = []
    text_idx: list[int] = []
    label_idx = -1
    width = 0
    line = 0
    reader = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue  # blank line (e.g. a trailing newline)
                if not width:  # first non-empty row: header, or the first CoLA example
                    if layout.has_header:
                        header = [name.strip() for name in row]
                        wanted = [*layout.text_columns, layout.label_column]
                        for name in wanted:
                            if name not in header:
                                raise PeltError(
                                    f"{path}:{line}: header has no column {name!r} needed for "
                                    f"{spec.folder}; columns found: {', '.join(header)}; "
                                    f"expected the official {spec.folder} TSV layout"
                                )
                        text_idx = [header.index(name) for name in layout.text_columns]
                        label_idx = header.index(layout.label_column)
                        width = len(header)
                        continue
                    text_idx = list(layout.text_columns)  # type: ignore[arg-type]
                    label_idx = layout.label_column  # type: ignore[assignment]
                    width = max(*text_idx, label_idx) + 1
                if len(row) != width:
                    kind = "too few" if len(row) < width else "too many"
                    raise PeltError(
                        f"{path}:{line}: row has {kind} fields ({len(row)}, expected {width}); "
                        "fields must be separated by single tabs and texts must not contain tabs"
                    )
                for field, idx in zip(spec.text_fields, text_idx):
                    columns[field].append(row[idx])
                columns["label"].append(_parse_label(spec, row[label_idx], path, line))
    except UnicodeDecodeError as exc:
        raise PeltError(f"{path}: not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except csv.Error as exc:
        where = reader.line_num if reader is not None else line + 1
        raise PeltError(f"{path}:{where}: cannot parse TSV row ({exc})") from None
    except OSError as exc:
        raise PeltError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not width:
        raise PeltError(f"{path} is empty; expected the official {spec.folder} TSV layout")
    if not columns["label"]:
        raise PeltError(f"{path} has a header but no examples")
    return columns


def _load_local(spec: TaskSpec, data_dir: str | os.PathLike, splits: list[str]) -> datasets.DatasetDict:
    if not os.fspath(data_dir):
        raise PeltError(
            "data folder is an empty path; pass --data-dir pointing at a glue_data-style folder "
            "(containing SST-2/...) or omit it to download from the hub"
        )
    folder = _resolve_task_folder(spec, Path(data_dir).expanduser())
    features = _features(spec)
    result = datasets.DatasetDict()
    for split in splits:
        path = folder / _SPLIT_FILES[split]
        if not path.is_file():
            raise PeltError(
                f"split file {path} not found; the {split} split of {spec.folder} must be in "
                f"{_SPLIT_FILES[split]} inside {folder} (add the file or request only the splits "
                "you have)"
            )
        columns = _read_tsv(spec, path)
        result[split] = datasets.Dataset.from_dict(columns, features=features)
    return result


def _load_hub(spec: TaskSpec, splits: list[str]) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(HUB_DATASET, spec.name)
        keep = [*spec.text_fields, "label"]
        features = _features(spec)
        result = datasets.DatasetDict()
        for split in splits:
            part = loaded[split].select_columns(keep)
            result[split] = part if part.features == features else part.cast(features)
    except PeltError:
        raise
    except Exception as exc:  # noqa: BLE001 - any hub/network/cache failure means the same to users
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PeltError(
            f"could not load {spec.name} from the hub ({HUB_DATASET}): {type(exc).__name__}: "
            f"{reason[:300]}; pass --data-dir pointing at a local glue_data folder instead"
        ) from None
    return result


def load_task_data(
    task: TaskSpec | str,
    data_dir: str | os.PathLike | None = None,
    *,
    splits: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    seed: int = 42,
) -> datasets.DatasetDict:
    """Load a GLUE task as a DatasetDict with only the task's text columns and ``label``.

    ``data_dir`` is a glue_data-style folder (or the task folder itself); None loads from the hub.
    ``max_train_samples`` keeps a seeded random subset of train so runs are comparable and
    reproducible; it is capped at the size of the split.
    """
    spec = get_task(task)
    wanted = _resolve_splits(spec, splits)
    _check_max_train_samples(max_train_samples)
    if data_dir is None:
        result = _load_hub(spec, wanted)
    else:
        result = _load_local(spec, data_dir, wanted)
    if max_train_samples is not None and "train" in result:
        train = result["train"]
        if max_train_samples < len(train):
            result["train"] = train.shuffle(seed=seed).select(range(max_train_samples))
    return result
