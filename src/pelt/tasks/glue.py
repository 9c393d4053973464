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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from pelt.errors import PeltError, hub_failure
from pelt.tasks.spec import (
    _BY_KEY,
    TaskSpec,
    _normalize,
    find_subfolder,
    get_task,
    list_tasks,
    official_splits,
    resolve_splits,
)

__all__ = ["TaskSpec", "get_task", "list_tasks", "load_glue"]

HUB_DATASET = "nyu-mll/glue"


def _glue_spec(name: str) -> TaskSpec | None:
    spec = _BY_KEY.get(_normalize(name))
    return spec if spec is not None and spec.benchmark == "glue" else None


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


def _refuse_superglue_rte(spec: TaskSpec, folder: Path) -> None:
    """GLUE and SuperGLUE both name their RTE folder RTE: say which one a folder of JSON lines is."""
    if spec.name == "rte" and any(folder.glob("*.jsonl")):
        raise PeltError(f"{folder} holds SuperGLUE JSONL files, not GLUE's TSV; for SuperGLUE's RTE use "
                        "--task superglue-rte, for GLUE's pass the glue_data folder")


def _resolve_task_folder(spec: TaskSpec, data_dir: Path) -> Path:
    """Accept both the glue_data parent folder and the task folder itself."""
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise PeltError(
            f"data folder {data_dir} {what}; pass --data-dir pointing at a glue_data-style folder "
            "(containing SST-2/...) or omit it to download from the hub"
        )
    found = find_subfolder(data_dir, spec.folder)
    if found is not None:
        return found
    for root_name in ("glue", "glue_data"):  # a data root holding glue/ next to superglue/
        nested = find_subfolder(data_dir, root_name)
        found = find_subfolder(nested, spec.folder) if nested is not None else None
        if found is not None:
            return found
    split_names = [_SPLIT_FILES[split] for split in official_splits(spec)]
    if any((data_dir / name).is_file() for name in split_names):
        own = _glue_spec(data_dir.name)
        if own is not None and own is not spec:
            raise PeltError(
                f"data folder {data_dir} looks like the {own.folder} folder but task {spec.name} "
                f"was requested; point --data-dir at the {spec.folder} folder or its parent"
            )
        return data_dir
    _refuse_superglue_rte(spec, data_dir)
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
        if not 0 <= score <= 5:  # NaN fails too
            raise PeltError(
                f"{path}:{line}: score {raw!r} is not a number from 0 to 5; STS-B scores must be floats "
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
            _refuse_superglue_rte(spec, folder)
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
        raise hub_failure(spec.name, HUB_DATASET, exc, "a local glue_data folder") from None
    return result


def load_glue(
    task: TaskSpec | str, data_dir: str | os.PathLike | None = None, *, splits: Sequence[str] | None = None
) -> datasets.DatasetDict:
    """A GLUE task's official splits with only its text columns and ``label``.

    ``data_dir`` is a glue_data-style folder, a data root holding ``glue/``, or the task folder itself;
    None loads from the hub.
    """
    spec = get_task(task)
    wanted = resolve_splits(spec, splits)
    if data_dir is None:
        return _load_hub(spec, wanted)
    return _load_local(spec, data_dir, wanted)
