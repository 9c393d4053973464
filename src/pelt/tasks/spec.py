"""What pelt knows about each GLUE and SuperGLUE task: fields, labels, metrics, formulation and protocol.

One `TaskSpec` per task, in one registry. Everything downstream (loaders, the encoder and text-to-text
formulations, metrics, the split protocol, the per-task defaults) reads the spec, so a task is described once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pelt.errors import PeltError

__all__ = ["TaskSpec", "get_task", "list_tasks", "official_splits", "protocol_defaults", "resolve_splits"]

Kind = Literal["classification", "regression", "multiple_choice", "answer_options", "entity_ranking"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the rest of pelt needs to know about one task.

    `kind` picks the encoder formulation: a classifier over a text pair (classification / regression), one
    score per choice (multiple_choice: COPA), a binary classifier per answer option whose metrics group the
    options of a question (answer_options: MultiRC), or a score per candidate entity (entity_ranking: ReCoRD).
    On T5 every kind is text to text.
    """

    name: str
    folder: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    eval_splits: tuple[str, ...] = ("validation",)
    benchmark: Literal["glue", "superglue"] = "glue"
    kind: Kind = "classification"
    large: bool = False  # >= 10k training examples: the protocol carves validation out of train, 3 epochs
    split_unit: str | None = None  # column whose rows stay together when a split is cut (MultiRC paragraphs)
    question_key: tuple[str, ...] = ()  # columns that identify a question (MultiRC exact match per question)
    # Encoder input: one str.format template per segment (a text pair at most), filled from the example.
    encoder_template: tuple[str, ...] = ()
    t5_prefix: str = ""  # task prefix of the T5 input ("" = the task name)
    t5_fields: tuple[str, ...] = ()  # fields in the T5 input, in order ("" = text_fields)

    @property
    def num_labels(self) -> int:
        """Size of the classifier head: one output for regression and per-choice scoring."""
        if self.kind in ("regression", "multiple_choice"):
            return 1
        if self.kind == "entity_ranking":
            return 2
        return len(self.label_names or ())

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a float similarity score."""
        return self.kind == "regression"

    @property
    def segments(self) -> tuple[str, ...]:
        return self.encoder_template or tuple("{" + f + "}" for f in self.text_fields)

    @property
    def prefix(self) -> str:
        return self.t5_prefix or self.name

    @property
    def input_fields(self) -> tuple[str, ...]:
        return self.t5_fields or self.text_fields


DEFAULT_MAX_LENGTH = 128  # what an adapter that records no max length was trained with (GLUE's protocol length)

_ACC = ("accuracy",)
_ACC_F1 = ("accuracy", "f1", "combined")
_PAIR = ("sentence1", "sentence2")
_NLI = ("premise", "hypothesis")
_BOOL = ("False", "True")


def _glue(name: str, folder: str, fields: tuple[str, ...], labels: tuple[str, ...] | None,
          metrics: tuple[str, ...] = _ACC, main: str = "accuracy", **extra: object) -> TaskSpec:
    return TaskSpec(name, folder, fields, labels, metrics, main, **extra)  # type: ignore[arg-type]


def _superglue(name: str, folder: str, fields: tuple[str, ...], labels: tuple[str, ...] | None,
               metrics: tuple[str, ...] = _ACC, main: str = "accuracy", **extra: object) -> TaskSpec:
    return TaskSpec(name, folder, fields, labels, metrics, main, benchmark="superglue", **extra)  # type: ignore[arg-type]


_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
              ("matthews_correlation",), "matthews_correlation"),
        _glue("sst2", "SST-2", ("sentence",), ("negative", "positive"), large=True),
        _glue("mrpc", "MRPC", _PAIR, ("not_equivalent", "equivalent"), _ACC_F1, "combined"),
        _glue("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), _ACC_F1, "combined",
              large=True),
        _glue("stsb", "STS-B", _PAIR, None, ("pearson", "spearmanr", "combined"), "combined", kind="regression"),
        _glue("mnli", "MNLI", _NLI, ("entailment", "neutral", "contradiction"),
              eval_splits=("validation_matched", "validation_mismatched"), large=True),
        _glue("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), large=True),
        _glue("rte", "RTE", _PAIR, ("entailment", "not_entailment")),
        _glue("wnli", "WNLI", _PAIR, ("not_entailment", "entailment")),
        _superglue("boolq", "BoolQ", ("question", "passage"), _BOOL),
        _superglue("cb", "CB", _NLI, ("entailment", "contradiction", "neutral"),
                   ("accuracy", "macro_f1", "combined"), "combined"),
        _superglue("copa", "COPA", ("premise", "choice1", "choice2", "question"), ("choice1", "choice2"),
                   kind="multiple_choice", encoder_template=("{premise}", "{connective} {choice}"),
                   t5_fields=("premise", "question", "choice1", "choice2")),
        _superglue("multirc", "MultiRC", ("paragraph", "question", "answer"), _BOOL,
                   ("f1a", "em", "combined"), "combined", kind="answer_options", split_unit="paragraph_idx",
                   question_key=("paragraph_idx", "question_idx"),
                   encoder_template=("{paragraph}", "{question} {answer}"),
                   t5_fields=("question", "answer", "paragraph")),
        _superglue("record", "ReCoRD", ("passage", "query"), None, ("f1", "em", "combined"), "combined",
                   kind="entity_ranking", large=True, split_unit="passage_idx", question_key=("idx",),
                   encoder_template=("{passage}", "{filled_query}"), t5_fields=("query", "entities", "passage")),
        _superglue("wic", "WiC", ("word", "sentence1", "sentence2"), _BOOL,
                   encoder_template=("{word}: {sentence1}", "{sentence2}"),
                   t5_fields=("sentence1", "sentence2", "word")),
        _superglue("superglue-rte", "RTE", _NLI, ("entailment", "not_entailment"), t5_prefix="rte"),
    )
}

_ALIASES = {"rtesuperglue": "superglue-rte", "sgrte": "superglue-rte", "stsbenchmark": "stsb"}


def _normalize(name: str) -> str:
    """Lower-case and drop punctuation so "SST-2", "sst2" and "Sst_2" all compare equal."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_subfolder(folder: Path, name: str) -> Path | None:
    """`folder/name`, or the subfolder whose name matches ignoring case and punctuation ("sst2" for "SST-2")."""
    if (folder / name).is_dir():
        return folder / name
    wanted = _normalize(name)
    return next((c for c in sorted(folder.iterdir()) if c.is_dir() and _normalize(c.name) == wanted), None)


_BY_KEY = {_normalize(name): spec for name, spec in _TASKS.items()}
_BY_KEY.update({alias: _TASKS[name] for alias, name in _ALIASES.items()})


def list_tasks(benchmark: str | None = None) -> list[str]:
    """Canonical task names, GLUE first in the usual order, then SuperGLUE."""
    return [name for name, spec in _TASKS.items() if benchmark in (None, spec.benchmark)]


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name, ignoring case and punctuation ("STS-B" == "stsb")."""
    if isinstance(name, TaskSpec):
        return name
    if not isinstance(name, str):
        raise PeltError(f"task name must be a string, got {type(name).__name__}")
    spec = _BY_KEY.get(_normalize(name))
    if spec is None:
        raise PeltError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}")
    return spec


def protocol_defaults(task: str | TaskSpec) -> dict[str, float | int]:
    """The Compacter paper's per-task training settings: what a run uses unless told otherwise.

    3 epochs on large datasets, 20 on small ones; max length 128 (GLUE), 256 (SuperGLUE), 512 (ReCoRD);
    batch 100 (GLUE), 32 (SuperGLUE), 16 (ReCoRD); 500 warm-up steps on GLUE, none on SuperGLUE.
    """
    spec = get_task(task)
    glue = spec.benchmark == "glue"
    record = spec.name == "record"
    return {
        "epochs": 3 if spec.large else 20,
        "max_length": 512 if record else 128 if glue else 256,
        "batch_size": 16 if record else 100 if glue else 32,
        "warmup_steps": 500 if glue else 0,
    }


def official_splits(spec: TaskSpec) -> tuple[str, ...]:
    """The labeled splits the benchmark publishes: train plus its dev set(s)."""
    return ("train",) + spec.eval_splits


def resolve_splits(spec: TaskSpec, splits: Sequence[str] | str | None,
                   allowed: Sequence[str] | None = None) -> list[str]:
    """Validate requested split names (default: all of `allowed`, the official splits unless given)."""
    allowed = tuple(allowed or official_splits(spec))
    if splits is None:
        return list(allowed)
    if isinstance(splits, str):
        splits = (splits,)
    result: list[str] = []
    for split in splits:
        if split not in allowed:
            raise PeltError(f"task {spec.name} has no split {split!r}; choose from: {', '.join(allowed)}")
        if split not in result:
            result.append(split)
    if not result:
        raise PeltError(f"no splits requested for task {spec.name}; choose from: {', '.join(allowed)}")
    return result
