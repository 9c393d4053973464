"""SuperGLUE data loading.

Data comes either from a local SuperGLUE folder (the official JSON-lines files, one folder per task)
or from the Hugging Face hub (``aps/super_glue``). Both paths produce the same thing: a
:class:`datasets.DatasetDict` whose splits hold exactly the task's columns (named as on the hub,
with nested ids flattened), so everything downstream is agnostic of where the data came from.
MultiRC has one row per answer and ReCoRD one row per query, as on the hub.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from pelt.errors import PeltError, hub_failure
from pelt.tasks.spec import TaskSpec, _normalize, find_subfolder, get_task, list_tasks

__all__ = ["SUPERGLUE_TASKS", "load_superglue", "superglue_features"]

HUB_DATASET = "aps/super_glue"

@dataclass(frozen=True)
class _Spec:
    """A task's spec (`pelt.tasks.spec`) plus how SuperGLUE stores it: its hub config, and whether its official
    label is a JSON boolean (BoolQ, WiC, MultiRC; the others use the label name (CB, RTE) or its id (COPA))."""

    task: TaskSpec
    hub_config: str
    official_bool: bool = False

    name = property(lambda self: self.task.name)
    folder = property(lambda self: self.task.folder)
    text_fields = property(lambda self: self.task.text_fields)
    label_names = property(lambda self: self.task.label_names)


_STORAGE = {"boolq": ("boolq", True), "cb": ("cb", False), "copa": ("copa", False), "multirc": ("multirc", True),
            "record": ("record", False), "wic": ("wic", True), "superglue-rte": ("rte", False)}
_SPECS: dict[str, _Spec] = {name: _Spec(get_task(name), *_STORAGE[name]) for name in list_tasks("superglue")}
SUPERGLUE_TASKS: dict[str, str] = {name: spec.folder for name, spec in _SPECS.items()}

_SPLIT_FILES: dict[str, str] = {"train": "train.jsonl", "validation": "val.jsonl"}
_GLUE_FILES: dict[str, str] = {"train": "train.tsv", "validation": "dev.tsv"}  # a common mix-up
_COPA_QUESTIONS = ("cause", "effect")
_PLACEHOLDER = "@placeholder"


def _get_spec(task: str) -> _Spec:
    """Look a SuperGLUE task up by its pelt name, ignoring case and punctuation."""
    if not isinstance(task, str):
        raise PeltError(f"task name must be a string, got {type(task).__name__}")
    for spec in _SPECS.values():
        if _normalize(task) == _normalize(spec.name):
            return spec
    hint = "; GLUE's rte is a different task, use superglue-rte" if _normalize(task) == "rte" else ""
    raise PeltError(
        f"unknown SuperGLUE task {task!r}; known tasks: {', '.join(SUPERGLUE_TASKS)}{hint}"
    )


def superglue_features(task: str) -> datasets.Features:
    """Canonical schema of a task: what both the local and the hub loader must return."""
    spec = _get_spec(task)
    string = datasets.Value("string")
    int32 = datasets.Value("int32")
    columns: dict[str, datasets.features.FeatureType] = {field: string for field in spec.text_fields}
    if spec.name == "record":
        columns["entities"] = datasets.Sequence(string)
        columns["answers"] = datasets.Sequence(string)
        columns["idx"] = int32
        columns["passage_idx"] = int32
        return datasets.Features(columns)
    assert spec.label_names is not None
    columns["label"] = datasets.ClassLabel(names=list(spec.label_names))
    if spec.name == "multirc":
        columns["paragraph_idx"] = int32
        columns["question_idx"] = int32
        columns["answer_idx"] = int32
    else:
        columns["idx"] = int32
    return datasets.Features(columns)


def _resolve_splits(spec: _Spec, splits: Sequence[str]) -> list[str]:
    """Validate the requested split names; test is refused since its labels are not public."""
    if isinstance(splits, str):
        splits = (splits,)
    allowed = tuple(_SPLIT_FILES)
    result: list[str] = []
    for split in splits:
        if split not in allowed:
            why = (
                " (SuperGLUE test labels are not public; only labeled splits can be used)"
                if split == "test" else ""
            )
            raise PeltError(
                f"task {spec.name} has no split {split!r}; choose from: {', '.join(allowed)}{why}"
            )
        if split not in result:
            result.append(split)
    if not result:
        raise PeltError(f"no splits requested for task {spec.name}; choose from: {', '.join(allowed)}")
    return result


# --------------------------------------------------------------------------------------------------
# Local JSONL files


_HELP_DATA_DIR = "pass --data-dir pointing at a SuperGLUE folder (containing CB/, MultiRC/, ...)"


def _resolve_task_folder(spec: _Spec, data_dir: Path) -> Path:
    """Accept the SuperGLUE folder, a data root holding superglue/, or the task folder itself."""
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise PeltError(
            f"data folder {data_dir} {what}; {_HELP_DATA_DIR} or omit it to download from the hub"
        )
    found = find_subfolder(data_dir, spec.folder)
    if found is not None:
        return found
    nested = find_subfolder(data_dir, "superglue")  # a data root holding glue/ and superglue/ side by side
    found = find_subfolder(nested, spec.folder) if nested is not None else None
    if found is not None:
        return found
    split_names = list(_SPLIT_FILES.values())
    if any((data_dir / name).is_file() for name in split_names):
        own = next(
            (s for s in _SPECS.values() if _normalize(s.folder) == _normalize(data_dir.name)), None
        )
        if own is not None and own is not spec:
            raise PeltError(
                f"data folder {data_dir} looks like the {own.folder} folder but task {spec.name} "
                f"was requested; point --data-dir at the {spec.folder} folder or its parent"
            )
        return data_dir
    looked = f" (also looked in {nested})" if nested is not None else ""
    raise PeltError(
        f"data folder {data_dir} has neither a {spec.folder}/ subfolder nor the {spec.folder} "
        f"files ({', '.join(split_names)}){looked}; {_HELP_DATA_DIR} or at the task folder itself"
    )


class _Line:
    """One parsed JSONL line: typed field access whose errors carry ``file:line``."""

    def __init__(self, spec: _Spec, path: Path, line: int) -> None:
        self.spec = spec
        self.path = path
        self.line = line

    def error(self, what: str) -> PeltError:
        return PeltError(f"{self.path}:{self.line}: {what}")

    def official(self) -> str:
        return f"the file must be the official SuperGLUE {self.spec.folder} JSONL"

    def unlabeled(self, what: str) -> PeltError:
        return self.error(
            f"{what} (an unlabeled test file?); only labeled splits can be used: pass the "
            "official train.jsonl or val.jsonl, SuperGLUE test labels are not public"
        )

    def get(self, obj: dict[str, Any], key: str, where: str, kind: type) -> Any:
        """``obj[key]`` checked to be of ``kind``; ``where`` is the dotted path of ``obj``."""
        name = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.error(f"missing field {name!r}; {self.official()}")
        value = obj[key]
        # bool is an int in Python, but a JSON true is never a valid id.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(
                f"field {name!r} must be {_KIND_NAMES[kind]}, got {type(value).__name__}; "
                f"{self.official()}"
            )
        return value

    def objects(self, obj: dict[str, Any], key: str, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
        """The JSON objects of the list ``obj[key]``, each with its dotted path (``where.key[i]``)."""
        prefix = f"{where}.{key}" if where else key
        for i, item in enumerate(self.get(obj, key, where, list)):
            if not isinstance(item, dict):
                raise self.error(f"{prefix}[{i}] must be an object; {self.official()}")
            yield f"{prefix}[{i}]", item

    def text(self, obj: dict[str, Any], key: str, where: str = "") -> str:
        return self.get(obj, key, where, str)

    def integer(self, obj: dict[str, Any], key: str, where: str = "") -> int:
        return self.get(obj, key, where, int)

    def label(self, obj: dict[str, Any], where: str = "") -> int:
        """Class id of ``obj["label"]``: the official JSON value, the label name or the id."""
        if "label" not in obj:
            name = f"{where}.label" if where else "label"
            raise self.unlabeled(f"no {name!r} field")
        raw = obj["label"]
        names = self.spec.label_names
        assert names is not None
        if isinstance(raw, bool):
            if self.spec.official_bool:
                return int(raw)
        elif isinstance(raw, int):
            if 0 <= raw < len(names):
                return raw
        elif isinstance(raw, str) and raw in names:
            return names.index(raw)
        allowed = (["false", "true"] if self.spec.official_bool else []) + [
            str(i) for i in range(len(names))
        ] + [json.dumps(name) for name in names]
        raise self.error(
            f"unknown label {raw!r} for task {self.spec.name}; allowed values: {', '.join(allowed)}"
        )


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _iter_jsonl(spec: _Spec, path: Path) -> Iterator[tuple[_Line, dict[str, Any]]]:
    """Yield every non-blank line as a JSON object, raising PeltError with file:line otherwise."""
    seen = False
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue  # blank line (e.g. a trailing newline)
                seen = True
                line = _Line(spec, path, number)
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise line.error(
                        f"not valid JSON ({exc.msg} at column {exc.colno}); {line.official()} "
                        "(one JSON object per line)"
                    ) from None
                if not isinstance(obj, dict):
                    raise line.error(
                        f"expected a JSON object, got {type(obj).__name__}; {line.official()} "
                        "(one JSON object per line)"
                    )
                yield line, obj
    except UnicodeDecodeError as exc:
        raise PeltError(f"{path}: not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
    except OSError as exc:
        raise PeltError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not seen:
        raise PeltError(
            f"{path} is empty; expected the official SuperGLUE {spec.folder} JSONL "
            "(one JSON object per line)"
        )


def _rows_simple(line: _Line, obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """BoolQ, CB, COPA, RTE, WiC: one row per line, fields named as in the file."""
    row: dict[str, Any] = {field: line.text(obj, field) for field in line.spec.text_fields}
    if line.spec.name == "copa" and row["question"] not in _COPA_QUESTIONS:
        raise line.error(
            f"field 'question' is {row['question']!r}; COPA questions must be 'cause' or 'effect'"
        )
    row["label"] = line.label(obj)
    row["idx"] = line.integer(obj, "idx")
    yield row


def _rows_multirc(line: _Line, obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """MultiRC: one row per answer, the paragraph and question repeated on each."""
    paragraph_idx = line.integer(obj, "idx")
    passage = line.get(obj, "passage", "", dict)
    paragraph = line.text(passage, "text", "passage")
    questions = list(line.objects(passage, "questions", "passage"))
    if not questions:  # its rows would vanish without a word
        raise line.error(f"passage.questions is empty; {line.official()}")
    for where, question in questions:
        text = line.text(question, "question", where)
        question_idx = line.integer(question, "idx", where)
        answers = list(line.objects(question, "answers", where))
        if not answers:
            raise line.error(f"{where}.answers is empty; {line.official()}")
        for answer_where, answer in answers:
            yield {
                "paragraph": paragraph,
                "question": text,
                "answer": line.text(answer, "text", answer_where),
                "label": line.label(answer, answer_where),
                "paragraph_idx": paragraph_idx,
                "question_idx": question_idx,
                "answer_idx": line.integer(answer, "idx", answer_where),
            }


def _distinct(texts: list[str]) -> list[str]:
    """Drop repeats, keeping the order of first appearance."""
    return list(dict.fromkeys(texts))


def _rows_record(line: _Line, obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """ReCoRD: one row per query, with the passage's distinct entities and the query's answers."""
    passage_idx = line.integer(obj, "idx")
    passage = line.get(obj, "passage", "", dict)
    text = line.text(passage, "text", "passage")
    spans: list[tuple[int, int]] = []
    for where, entity in line.objects(passage, "entities", "passage"):
        start = line.integer(entity, "start", where)
        end = line.integer(entity, "end", where)
        if not 0 <= start <= end < len(text):
            raise line.error(
                f"{where} span [{start}, {end}] is outside the passage (length {len(text)}); "
                "official spans are inclusive character offsets into passage.text"
            )
        spans.append((start, end))
    # Sorted by start so the order is the passage's, as the hub's entity_spans are.
    entities = _distinct([text[start:end + 1] for start, end in sorted(spans)])
    for where, qa in line.objects(obj, "qas"):
        query = line.text(qa, "query", where)
        if _PLACEHOLDER not in query:
            raise line.error(
                f"{where}.query has no {_PLACEHOLDER}; ReCoRD queries mark the entity to fill "
                f"with {_PLACEHOLDER}"
            )
        if "answers" not in qa:
            raise line.unlabeled(f"{where} has no 'answers' field")
        answers = [line.text(a, "text", a_where) for a_where, a in line.objects(qa, "answers", where)]
        if not answers:
            raise line.unlabeled(f"{where}.answers is empty")
        yield {
            "passage": text,
            "query": query,
            "entities": entities,
            "answers": _distinct(answers),
            "idx": line.integer(qa, "idx", where),
            "passage_idx": passage_idx,
        }


_ROW_READERS: dict[str, Callable[[_Line, dict[str, Any]], Iterator[dict[str, Any]]]] = {
    "multirc": _rows_multirc,
    "record": _rows_record,
}


def _read_jsonl(spec: _Spec, path: Path, features: datasets.Features) -> dict[str, list]:
    """Parse one split file into column lists."""
    read_rows = _ROW_READERS.get(spec.name, _rows_simple)
    columns: dict[str, list] = {name: [] for name in features}
    for line, obj in _iter_jsonl(spec, path):
        for row in read_rows(line, obj):
            for name in columns:
                columns[name].append(row[name])
    if not next(iter(columns.values())):
        raise PeltError(
            f"{path} has no examples; expected the official SuperGLUE {spec.folder} JSONL"
        )
    return columns


def _load_local(spec: _Spec, data_dir: str | os.PathLike, splits: list[str]) -> datasets.DatasetDict:
    if not os.fspath(data_dir):
        raise PeltError(
            f"data folder is an empty path; {_HELP_DATA_DIR} or omit it to download from the hub"
        )
    folder = _resolve_task_folder(spec, Path(data_dir).expanduser())
    features = superglue_features(spec.name)
    result = datasets.DatasetDict()
    for split in splits:
        path = folder / _SPLIT_FILES[split]
        if not path.is_file():
            hint = (
                f"; {folder} holds GLUE TSV files, SuperGLUE needs the official JSONL files"
                if (folder / _GLUE_FILES[split]).is_file() else ""
            )
            raise PeltError(
                f"split file {path} not found; the {split} split of {spec.folder} must be in "
                f"{_SPLIT_FILES[split]} inside {folder} (add the file or request only the splits "
                f"you have){hint}"
            )
        columns = _read_jsonl(spec, path, features)
        result[split] = datasets.Dataset.from_dict(columns, features=features)
    return result


# --------------------------------------------------------------------------------------------------
# Hub


def _span_texts(spans: Any) -> list[str]:
    """Entity texts from hub ``entity_spans``, in passage order; it is a dict of lists or a list."""
    if isinstance(spans, dict):
        items = list(zip(spans.get("start") or [], spans.get("text") or []))
    else:
        items = [(span["start"], span["text"]) for span in spans or []]
    return [text for _, text in sorted(items, key=lambda item: item[0])]


def _convert_hub_batch(spec: _Spec, batch: dict[str, list]) -> dict[str, list]:
    """Hub rows to the canonical columns: flatten nested ids, order ReCoRD entities."""
    if spec.name == "multirc":
        return {
            "paragraph": batch["paragraph"],
            "question": batch["question"],
            "answer": batch["answer"],
            "label": batch["label"],
            "paragraph_idx": [idx["paragraph"] for idx in batch["idx"]],
            "question_idx": [idx["question"] for idx in batch["idx"]],
            "answer_idx": [idx["answer"] for idx in batch["idx"]],
        }
    if spec.name == "record":
        spans = batch.get("entity_spans") or [None] * len(batch["passage"])
        return {
            "passage": batch["passage"],
            "query": batch["query"],
            "entities": [
                _distinct(_span_texts(span) or list(entities))
                for span, entities in zip(spans, batch["entities"])
            ],
            "answers": [_distinct(list(answers)) for answers in batch["answers"]],
            "idx": [idx["query"] for idx in batch["idx"]],
            "passage_idx": [idx["passage"] for idx in batch["idx"]],
        }
    return {name: batch[name] for name in (*spec.text_fields, "label", "idx")}


def _check_hub_labeled(spec: _Spec, split: str, part: datasets.Dataset) -> None:
    """Refuse hub rows without a label (-1, or a ReCoRD query without answers)."""
    if spec.name == "record":
        missing = sum(1 for answers in part["answers"] if not answers)
        what = "queries without answers"
    else:
        missing = sum(1 for label in part["label"] if label == -1)
        what = "rows with label -1"
    if missing:
        raise PeltError(
            f"hub split {split} of {HUB_DATASET}/{spec.hub_config} has {missing} unlabeled {what}; "
            "only labeled splits (train, validation) can be used"
        )


def _load_hub(spec: _Spec, splits: list[str]) -> datasets.DatasetDict:
    features = superglue_features(spec.name)
    try:
        loaded = datasets.load_dataset(HUB_DATASET, spec.hub_config)
        result = datasets.DatasetDict()
        for split in splits:
            part = loaded[split]
            _check_hub_labeled(spec, split, part)
            result[split] = part.map(
                functools.partial(_convert_hub_batch, spec),
                batched=True,
                remove_columns=part.column_names,
                features=features,
            )
    except PeltError:
        raise
    except Exception as exc:  # noqa: BLE001 - any hub/network/cache failure means the same to users
        raise hub_failure(spec.name, f"{HUB_DATASET}, config {spec.hub_config}", exc, "a local SuperGLUE folder") \
            from None
    return result


def load_superglue(
    task: str,
    data_dir: str | os.PathLike | None,
    splits: Sequence[str],
) -> datasets.DatasetDict:
    """Load a SuperGLUE task as a DatasetDict with exactly :func:`superglue_features` columns.

    ``data_dir`` is a SuperGLUE folder, a data root holding ``superglue/``, or the task folder
    itself; None loads from the hub. ``splits`` is a subset of train and validation: test labels
    are not public, so there is nothing to evaluate on there.
    """
    spec = _get_spec(task)
    wanted = _resolve_splits(spec, splits)
    if data_dir is None:
        return _load_hub(spec, wanted)
    return _load_local(spec, data_dir, wanted)
