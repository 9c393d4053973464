"""How an example becomes model input: text segments for encoders, input and target strings for T5.

Pure functions of a task spec and one example (a dict of the columns the loaders produce), so each task's
formatting is tested on hand-written examples without a model.

Text to text follows the T5 convention: ``"<task> <field>: <text> <field>: <text>"`` as input, the label's name
as target ("entailment", "True", "choice2"; ``target_style="ids"`` gives the Compacter code's "0", "1", "2"),
STS-B's score rounded to the nearest 0.2 ("3.8"), a ReCoRD answer's text. A generation maps back to a label by
exact, then case-insensitive, match; anything else is invalid and scored as wrong.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pelt.errors import PeltError
from pelt.tasks.spec import TaskSpec

__all__ = ["INVALID", "TargetStyle", "copa_choices", "encoder_segments", "parse_generation", "record_candidates",
           "stsb_target", "t5_input", "t5_targets", "target_strings"]

TargetStyle = Literal["names", "ids"]
INVALID = -1  # a generation that names no label
_CONNECTIVE = {"cause": "because", "effect": "so"}


def clean_record_passage(passage: str) -> str:
    """ReCoRD passages end with "@highlight" bullet lines; join them into sentences as T5's preprocessing does."""
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", passage)
    return re.sub(r"\n@highlight\n", ". ", passage)


def clean_markup(text: str) -> str:
    """Some MultiRC releases mark sentences up ("<b>Sent 1: </b>...<br>"); drop the tags as T5's preprocessing does."""
    return re.sub(r"</?b>", "", re.sub(r"<br\s*/?>", " ", text))


def _cleaned(spec: TaskSpec, example: dict[str, Any]) -> dict[str, Any]:
    if spec.kind == "answer_options" and "paragraph" in example:
        return {**example, "paragraph": clean_markup(example["paragraph"])}
    return example


def fill_placeholder(query: str, entity: str) -> str:
    return query.replace("@placeholder", entity)


def encoder_segments(spec: TaskSpec, example: dict[str, Any]) -> tuple[str, ...]:
    """The one or two texts an encoder classifier reads (a text pair is joined by the tokenizer)."""
    example = _cleaned(spec, example)
    return tuple(template.format(**example) for template in spec.segments)


def copa_choices(spec: TaskSpec, example: dict[str, Any]) -> list[tuple[str, ...]]:
    """One text pair per choice: (premise, "because|so <choice>"), scored against each other."""
    question = example["question"]
    if question not in _CONNECTIVE:
        raise PeltError(f"COPA question must be 'cause' or 'effect', got {question!r}")
    return [
        tuple(t.format(**example, connective=_CONNECTIVE[question], choice=example[f"choice{i}"])
              for t in spec.segments)
        for i in (1, 2)
    ]


def record_candidates(spec: TaskSpec, example: dict[str, Any]) -> list[tuple[tuple[str, ...], str, int]]:
    """One (texts, entity, label) per candidate entity: the query with @placeholder filled by the entity."""
    passage = clean_record_passage(example["passage"])
    answers = set(example["answers"])
    rows = []
    for entity in example["entities"]:
        values = {**example, "passage": passage, "filled_query": fill_placeholder(example["query"], entity)}
        texts = tuple(t.format(**values) for t in spec.segments)
        rows.append((texts, entity, int(entity in answers)))
    return rows


def stsb_target(score: float) -> str:
    """STS-B as 21 classes: the score rounded to the nearest 0.2 (T5's rounding; the Compacter code's rounds to 0.1)."""
    return f"{round(float(score) * 5) / 5:.1f}"


def t5_input(spec: TaskSpec, example: dict[str, Any], *, prefix: bool = True) -> str:
    """``"<task> field: text field: text"``; ReCoRD lists its candidate entities and cleans its passage."""
    parts = [spec.prefix] if prefix else []
    example = _cleaned(spec, example)
    for field in spec.input_fields:
        value = example[field]
        if field == "entities":
            value = ", ".join(value)
        elif spec.kind == "entity_ranking" and field == "passage":
            value = clean_record_passage(value)
        parts.append(f"{field}: {value}")
    return " ".join(parts)


def t5_targets(spec: TaskSpec, example: dict[str, Any], style: TargetStyle = "names") -> list[str]:
    """The target string(s) of an example: one label string, or every ReCoRD answer."""
    if spec.kind == "entity_ranking":
        return list(example["answers"])
    if spec.kind == "regression":
        return [stsb_target(example["label"])]
    label = int(example["label"])
    return [spec.label_names[label] if style == "names" else str(label)]  # type: ignore[index]


def target_strings(spec: TaskSpec, style: TargetStyle = "names") -> list[str]:
    """The strings a generation can name for a task: its labels (names or ids), or STS-B's ends of scale (ReCoRD's
    answers are the example's own entities)."""
    if spec.kind == "regression":
        return [stsb_target(0.0), stsb_target(5.0)]
    if spec.kind == "entity_ranking":
        return []
    labels = spec.label_names or ()
    return list(labels) if style == "names" else [str(i) for i in range(len(labels))]


def parse_generation(spec: TaskSpec, text: str, style: TargetStyle = "names") -> int | float | str:
    """Map a generated string back to a label id (INVALID if it names none), an STS-B score (NaN if it is not a
    number) or, for ReCoRD, the answer text itself."""
    text = text.strip()
    if spec.kind == "entity_ranking":
        return text
    if spec.kind == "regression":
        try:
            value = float(text)
        except ValueError:
            return math.nan
        return value if math.isfinite(value) else math.nan
    names = target_strings(spec, style)
    if text in names:
        return names.index(text)
    folded = [n.casefold() for n in names]
    return folded.index(text.casefold()) if text.casefold() in folded else INVALID
