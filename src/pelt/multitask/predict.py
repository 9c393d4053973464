"""Raw examples in, answers out: what `pelt predict` (and `MultiTaskModel.predict`) run.

Each example is put to its task as the task was trained: the encoder formulation's text pair, its choices
(COPA) or its candidate entities (ReCoRD), or the T5 input string, truncated at the task's own max length. The
examples are sorted by length and batched (tasks mixed in a batch); the answers come back in input order: the
label name and every label's probability, the score (STS-B), the best choice or entity, or the generated text
and the label it names.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pelt.errors import PeltError
from pelt.files import write_text_atomically
from pelt.tasks import TaskSpec
from pelt.tasks.formats import (
    copa_choices,
    encoder_segments,
    parse_generation,
    record_candidates,
    t5_input,
    target_strings,
)
from pelt.train.formulations import Formulation, formulation_for

if TYPE_CHECKING:
    from pelt.multitask.model import MultiTaskModel, TaskInfo

TASK_FIELD = "task"
ID_FIELD = "id"  # echoed back, so answers can be joined to their inputs


def required_fields(spec: TaskSpec, kind: str) -> tuple[str, ...]:
    """The input fields an example of `spec` needs, by name (as in the task's data files)."""
    fields = spec.input_fields if kind == "text-to-text" else spec.text_fields
    if spec.kind == "entity_ranking" and "entities" not in fields:
        fields = (*fields, "entities")
    return tuple(fields)


def check_example(example: Any, spec: TaskSpec, kind: str) -> str | None:
    """What is wrong with an example for this task, or None."""
    if not isinstance(example, Mapping):
        return f"expected a JSON object with the fields {', '.join(required_fields(spec, kind))}"
    for name in required_fields(spec, kind):
        if name not in example:
            return (f"missing field '{name}' for task {spec.name} (it takes "
                    f"{', '.join(required_fields(spec, kind))})")
        value = example[name]
        if name == "entities":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                return "field 'entities' must be a non-empty list of strings"
        elif not isinstance(value, str) or not value.strip():
            return f"field '{name}' must be a non-empty string"
    if spec.kind == "multiple_choice" and example["question"] not in ("cause", "effect"):
        return f"field 'question' must be 'cause' or 'effect', got {example['question']!r}"
    return None


# ---- encoding --------------------------------------------------------------------------------------------------


def _encode(mt: MultiTaskModel, info: TaskInfo, formulation: Formulation, example: Mapping[str, Any]
            ) -> dict[str, Any]:
    """Tokenized rows of one example (as its task's training tokenized them), and what decoding its answer needs."""
    spec = info.spec
    assert spec is not None

    def tokenize(texts: list[tuple[str, ...]]) -> list[dict[str, list[int]]]:
        encoded = formulation.tokenize(texts)
        return [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]

    extra: dict[str, Any] = {}
    if info.kind == "text-to-text":
        text = t5_input(spec, example, prefix=bool(info.config.get("task_prefix", True)))
        rows = tokenize([(text,)])
        extra["target_tokens"] = _target_tokens(mt, info, example)
    elif info.kind == "multiple-choice":
        rows = tokenize(copa_choices(spec, example))
    elif spec.kind == "entity_ranking":
        candidates = record_candidates(spec, {**example, "answers": []})
        rows = tokenize([texts for texts, _, _ in candidates])
        extra["entities"] = [entity for _, entity, _ in candidates]
    else:
        rows = tokenize([encoder_segments(spec, example)])
    return {"rows": rows, "length": max(len(r["input_ids"]) for r in rows), **extra}


def _target_tokens(mt: MultiTaskModel, info: TaskInfo, example: Mapping[str, Any]) -> int:
    """How many tokens the longest answer of this example's task takes (plus end of sequence)."""
    spec = info.spec
    assert spec is not None
    targets = target_strings(spec, info.config.get("target_style", "names")) or list(example["entities"])
    return max(len(mt.tokenizer(t)["input_ids"]) for t in targets) + 1


def _pad(rows: list[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors (prompts and the per-row layout assume right padding)."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], device=device)
    return batch


# ---- answers ---------------------------------------------------------------------------------------------------


def _classification(info: TaskInfo, logits: torch.Tensor) -> dict[str, Any]:
    names = info.label_names or [str(i) for i in range(logits.shape[-1])]
    probabilities = torch.softmax(logits.float(), dim=-1).tolist()
    best = int(torch.argmax(logits))
    return {"label": names[best], "probabilities": dict(zip(names, probabilities))}


def _answer(info: TaskInfo, logits: list[torch.Tensor], encoded: dict[str, Any]) -> dict[str, Any]:
    spec = info.spec
    assert spec is not None
    if info.kind == "multiple-choice":
        return _classification(info, torch.cat(logits))
    if spec.kind == "entity_ranking":
        scores = [float(row[1] - row[0]) for row in logits]
        best = max(range(len(scores)), key=scores.__getitem__)
        return {"answer": encoded["entities"][best], "scores": dict(zip(encoded["entities"], scores))}
    if spec.kind == "regression":
        return {"score": float(logits[0][0])}
    return _classification(info, logits[0])


def _generated(info: TaskInfo, text: str) -> dict[str, Any]:
    spec = info.spec
    assert spec is not None
    parsed = parse_generation(spec, text, info.config.get("target_style", "names"))
    if spec.kind == "entity_ranking":
        return {"text": text, "answer": parsed}
    if spec.kind == "regression":
        return {"text": text, "score": None if parsed != parsed else float(parsed)}
    names = list(spec.label_names or ())
    return {"text": text, "label": names[parsed] if isinstance(parsed, int) and parsed >= 0 else None}


def predict(mt: MultiTaskModel, examples: Sequence[Mapping[str, Any]], tasks: str | Sequence[str], *,
            batch_size: int = 32, num_beams: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """Answers for `examples`, each with its task (one name for all, or one per example)."""
    if batch_size < 1:
        raise PeltError(f"the batch size must be at least 1, got {batch_size}")
    if num_beams < 1:
        raise PeltError(f"the number of beams must be at least 1, got {num_beams}")
    if mt.tokenizer is None:
        raise PeltError("predict needs the backbone's tokenizer: MultiTaskModel(model, tokenizer)")
    names = [tasks] * len(examples) if isinstance(tasks, str) else list(tasks)
    if len(names) != len(examples):
        raise PeltError(f"{len(names)} tasks for {len(examples)} examples; give one task per example")
    infos = {name: mt.task(name) for name in set(names)}
    for name, info in infos.items():
        if info.spec is None:
            raise PeltError(f"task {name!r} does not record the benchmark task it was trained on, so its input "
                            "fields are unknown; add it from an adapter folder that pelt train wrote")
    for i, (example, name) in enumerate(zip(examples, names)):
        problem = check_example(example, infos[name].spec, infos[name].kind)
        if problem:
            raise PeltError(f"example {i + 1}: {problem}")
    formulations = {name: formulation_for(info.spec, mt.config, mt.tokenizer, info.max_length,
                                          target_style=info.config.get("target_style", "names"),
                                          task_prefix=bool(info.config.get("task_prefix", True)))
                    for name, info in infos.items()}
    encoded = [_encode(mt, infos[name], formulations[name], example) for example, name in zip(examples, names)]
    answers: list[dict[str, Any]] = [{} for _ in examples]
    device = next(mt.backbone.parameters()).device
    pad_id = mt.tokenizer.pad_token_id if mt.tokenizer.pad_token_id is not None else 0
    batches = _batches(encoded, batch_size)
    for batch in _progress(batches, progress, len(examples)):
        rows = [row for i in batch for row in encoded[i]["rows"]]
        row_tasks = [names[i] for i in batch for _ in encoded[i]["rows"]]
        inputs = _pad(rows, pad_id, device)
        with torch.inference_mode():
            if mt.seq2seq:
                steps = max(encoded[i]["target_tokens"] for i in batch)
                generated = mt.generate(inputs["input_ids"], inputs["attention_mask"], tasks=row_tasks,
                                        max_new_tokens=steps, num_beams=num_beams, do_sample=False)
                texts = mt.tokenizer.batch_decode(generated, skip_special_tokens=True)
                for i, text in zip(batch, texts):
                    answers[i] = _generated(infos[names[i]], text.strip())
                continue
            logits = mt(**inputs, tasks=row_tasks).logits
        start = 0
        for i in batch:
            count = len(encoded[i]["rows"])
            answers[i] = _answer(infos[names[i]], logits[start:start + count], encoded[i])
            start += count
    return [{**({ID_FIELD: example[ID_FIELD]} if ID_FIELD in example else {}), TASK_FIELD: name, **answer}
            for answer, name, example in zip(answers, names, examples)]


def _batches(encoded: list[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """Examples by length, longest first, `batch_size` at a time. A generation's length budget is its task's own
    (a row given more steps than it would have alone can write more), so a batch holds one budget."""
    budget = [e.get("target_tokens", 0) for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: (budget[i], -encoded[i]["length"]))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and budget[batches[-1][0]] == budget[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _progress(batches: list[list[int]], show: bool, total: int) -> Iterator[list[int]]:
    if not show:
        yield from batches
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="example", file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


# ---- files -----------------------------------------------------------------------------------------------------


def read_examples(path: str, fmt: str = "auto") -> list[tuple[int, dict[str, Any]]]:
    """(line number, example) of every line of a JSON-lines or TSV file ('-': standard input). Refuses, naming the
    line, what is not UTF-8, an empty line, a line that is not a JSON object, a TSV row of the wrong width."""
    name = "<stdin>" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        file = Path(path)
        if not file.exists():
            raise PeltError(f"input file {path} does not exist; pass a JSON-lines or TSV file, or - for stdin")
        if file.is_dir():
            raise PeltError(f"input {path} is a folder; pass a JSON-lines or TSV file")
        try:
            data = file.read_bytes()
        except OSError as e:
            raise PeltError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] in (b"", b"\r"):
        lines.pop()
    texts = []
    for number, raw in enumerate(lines, 1):
        try:
            texts.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError:
            raise PeltError(f"{name} line {number}: not UTF-8 text; save the file as UTF-8") from None
    if texts and texts[0].startswith("\ufeff"):
        texts[0] = texts[0][1:]
    if not texts:
        raise PeltError(f"{name} is empty; give one example per line")
    if fmt == "auto":
        fmt = "tsv" if path.lower().endswith(".tsv") else "jsonl" if path != "-" or texts[0].lstrip()[:1] == "{" \
            else "tsv"
    return _read_tsv(texts, name) if fmt == "tsv" else _read_jsonl(texts, name)


def _read_jsonl(texts: list[str], name: str) -> list[tuple[int, dict[str, Any]]]:
    examples = []
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise PeltError(f"{name} line {number}: empty line; give one JSON object per line")
        try:
            example = json.loads(text, parse_constant=_not_json)
        except json.JSONDecodeError as e:
            raise PeltError(f"{name} line {number}: not valid JSON ({e.msg}); give one JSON object per line") from None
        except ValueError as e:
            raise PeltError(f"{name} line {number}: {e}") from None
        if not isinstance(example, dict):
            raise PeltError(f"{name} line {number}: a JSON {type(example).__name__}, expected an object of fields")
        examples.append((number, example))
    return examples


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _read_tsv(texts: list[str], name: str) -> list[tuple[int, dict[str, Any]]]:
    header = texts[0].split("\t")
    if not all(h.strip() for h in header) or len(set(header)) != len(header):
        raise PeltError(f"{name} line 1: the TSV header must name every column once, got {texts[0]!r}")
    examples = []
    for number, text in enumerate(texts[1:], 2):
        if not text.strip():
            raise PeltError(f"{name} line {number}: empty line; give one example per line")
        values = text.split("\t")
        if len(values) != len(header):
            raise PeltError(f"{name} line {number}: {len(values)} columns, the header has {len(header)}")
        examples.append((number, dict(zip(header, values))))
    if not examples:
        raise PeltError(f"{name} has a header but no examples")
    return examples


def write_jsonl(path: str | None, answers: list[dict[str, Any]]) -> None:
    """Answers as JSON lines, to stdout or to a file written whole or not at all."""
    try:
        lines = "".join(json.dumps(a, ensure_ascii=False, allow_nan=False) + "\n" for a in answers)
    except ValueError:
        raise PeltError("the model gave non-finite outputs (NaN or infinity); an adapter is probably damaged: "
                        "check it with pelt eval") from None
    if path is None or path == "-":
        try:
            sys.stdout.write(lines)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): nothing more to say
            sys.stdout = open(os.devnull, "w")
        return
    try:
        write_text_atomically(path, lines)
    except OSError as e:
        raise PeltError(f"cannot write {path}: {e.strerror or e}; nothing was written") from None
