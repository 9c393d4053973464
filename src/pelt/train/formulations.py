"""How a task is put to a model: tokenized inputs, the batch collator, the Trainer class and the metric.

Encoders get a classifier over a text pair (GLUE, BoolQ, CB, RTE, WiC; MultiRC one answer option at a time,
its metrics grouped by question), one score per choice (COPA, transformers' multiple-choice heads) or one score
per candidate entity (ReCoRD, the best-scoring candidate is the answer). T5 gets every task as text to text,
trained with the seq2seq Trainer and evaluated by generation. `formulation_for` picks one from the task and the
model's configuration; the training loop only talks to this small interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset
from torch.utils.data import Sampler, SequentialSampler
from transformers import (
    DataCollatorForMultipleChoice,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    EvalPrediction,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainingArguments,
)

from pelt.tasks import TaskSpec, compute_metrics
from pelt.tasks.formats import (
    TargetStyle,
    copa_choices,
    encoder_segments,
    parse_generation,
    record_candidates,
    t5_input,
    t5_targets,
)

__all__ = ["Formulation", "formulation_for"]

MetricFn = Callable[[EvalPrediction], dict[str, float]]


class _InOrderEvaluation:
    """Evaluate in dataset order: metrics that read per-row metadata (MultiRC questions, ReCoRD candidates, T5
    gold labels) must see predictions in the order of the rows. (Length grouping applies to training only.)"""

    def _get_eval_sampler(self, eval_dataset: Dataset) -> Sampler | None:
        if eval_dataset is None or self.args.world_size > 1:  # distributed: accelerate shards in order
            return None
        return SequentialSampler(eval_dataset)


class PeltTrainer(_InOrderEvaluation, Trainer):
    pass


class PeltSeq2SeqTrainer(_InOrderEvaluation, Seq2SeqTrainer):
    pass


def _groups(spec: TaskSpec, raw: Dataset) -> list[tuple] | None:
    """The question of every row (MultiRC), for metrics that group answer options."""
    if spec.kind != "answer_options":
        return None
    return list(zip(*(raw[c] for c in spec.question_key)))


def _logits(prediction: EvalPrediction) -> np.ndarray:
    return prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions


class Formulation:
    """Pair classification: one or two text segments, a classifier (or a regressor) on top."""

    model_kind = "sequence-classification"
    trainer_class: type[Trainer] = PeltTrainer
    arguments_class: type[TrainingArguments] = TrainingArguments

    def __init__(self, task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length

    def metadata(self) -> dict[str, Any]:
        """What an adapter must record to be evaluated the same way later."""
        return {"formulation": self.model_kind}

    def tokenize(self, segments: list[tuple[str, ...]]) -> dict[str, list]:
        columns = list(zip(*segments))
        return self.tokenizer(*[list(c) for c in columns], truncation=True, max_length=self.max_length)

    def encode(self, raw: Dataset, *, training: bool) -> Dataset:
        """Tokenize without padding (batches are padded to their longest sequence); keep lengths for grouping."""
        task = self.task

        def encode(batch: dict[str, list]) -> dict[str, list]:
            examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
            encoded = self.tokenize([encoder_segments(task, e) for e in examples])
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded["labels"] = batch["label"]
            return encoded

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc="tokenizing")

    def collator(self, model: Any) -> Any:
        return DataCollatorWithPadding(self.tokenizer)

    def metrics_fn(self, encoded: Dataset, raw: Dataset) -> MetricFn:
        task, groups = self.task, _groups(self.task, raw)

        def compute(prediction: EvalPrediction) -> dict[str, float]:
            logits = _logits(prediction)
            predicted = logits.squeeze(-1) if task.is_regression else np.argmax(logits, axis=-1)
            return compute_metrics(task, predicted, prediction.label_ids, groups=groups)

        return compute

    def arguments(self, encoded: dict[str, Dataset]) -> dict[str, Any]:
        """Extra TrainingArguments this formulation needs."""
        return {}


class MultipleChoice(Formulation):
    """COPA: each choice is scored as a text pair, the scores compete in a softmax."""

    model_kind = "multiple-choice"

    def encode(self, raw: Dataset, *, training: bool) -> Dataset:
        task = self.task

        def encode(batch: dict[str, list]) -> dict[str, list]:
            examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
            per_example = [copa_choices(task, e) for e in examples]
            flat = self.tokenize([pair for choices in per_example for pair in choices])
            n = len(per_example[0]) if per_example else 0
            encoded = {k: [v[i:i + n] for i in range(0, len(v), n)] for k, v in flat.items()}
            encoded["length"] = [max(len(ids) for ids in choice) for choice in encoded["input_ids"]]
            encoded["labels"] = batch["label"]
            return encoded

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc="tokenizing")

    def collator(self, model: Any) -> Any:
        return DataCollatorForMultipleChoice(self.tokenizer)


class EntityRanking(Formulation):
    """ReCoRD on an encoder: a binary classifier reads (passage, query with the candidate filled in); at evaluation
    the candidate with the highest score is the answer, scored against all gold answers."""

    def encode(self, raw: Dataset, *, training: bool) -> Dataset:
        task = self.task

        def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
            rows = [(i, *c) for i, e in zip(indices, examples) for c in record_candidates(task, e)]
            encoded = self.tokenize([texts for _, texts, _, _ in rows]) if rows else {"input_ids": []}
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded["labels"] = [label for *_, label in rows]
            encoded["query_row"] = [i for i, *_ in rows]
            encoded["entity"] = [entity for _, _, entity, _ in rows]
            return encoded

        return raw.map(encode, batched=True, with_indices=True, remove_columns=raw.column_names,
                       desc="tokenizing")

    def metrics_fn(self, encoded: Dataset, raw: Dataset) -> MetricFn:
        task, rows, entities, answers = self.task, encoded["query_row"], encoded["entity"], raw["answers"]

        def compute(prediction: EvalPrediction) -> dict[str, float]:
            logits = _logits(prediction)
            score = logits[:, 1] - logits[:, 0]
            best: dict[int, tuple[float, str]] = {}
            for row, entity, s in zip(rows, entities, score):
                if row not in best or s > best[row][0]:
                    best[row] = (float(s), entity)
            predicted = [best.get(i, (0.0, ""))[1] for i in range(len(answers))]
            return compute_metrics(task, predicted, answers)

        return compute


class TextToText(Formulation):
    """T5: input text -> target text, trained with teacher forcing, evaluated by generation."""

    model_kind = "text-to-text"
    trainer_class = PeltSeq2SeqTrainer
    arguments_class = Seq2SeqTrainingArguments
    max_target_length = 128

    def __init__(self, task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_length: int, *,
                 target_style: TargetStyle = "names", task_prefix: bool = True) -> None:
        super().__init__(task, tokenizer, max_length)
        self.target_style, self.task_prefix = target_style, task_prefix

    def metadata(self) -> dict[str, Any]:
        return {"formulation": self.model_kind, "target_style": self.target_style, "task_prefix": self.task_prefix}

    def encode(self, raw: Dataset, *, training: bool) -> Dataset:
        task, style, prefix = self.task, self.target_style, self.task_prefix

        def encode(batch: dict[str, list]) -> dict[str, list]:
            examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
            inputs, targets = [], []
            for example in examples:
                text, wanted = t5_input(task, example, prefix=prefix), t5_targets(task, example, style)
                for target in (wanted if training else wanted[:1]):  # ReCoRD trains on every answer
                    inputs.append(text)
                    targets.append(target)
            encoded = self.tokenizer(inputs, truncation=True, max_length=self.max_length)
            encoded["labels"] = self.tokenizer(text_target=targets, truncation=True,
                                               max_length=self.max_target_length)["input_ids"]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        return raw.map(encode, batched=True, remove_columns=raw.column_names, desc="tokenizing")

    def collator(self, model: Any) -> Any:
        return DataCollatorForSeq2Seq(self.tokenizer, model=model, label_pad_token_id=-100)

    def decode(self, token_ids: np.ndarray) -> list[str]:
        pad = self.tokenizer.pad_token_id or 0
        ids = np.where(token_ids < 0, pad, token_ids)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def metrics_fn(self, encoded: Dataset, raw: Dataset) -> MetricFn:
        task, style, groups = self.task, self.target_style, _groups(self.task, raw)
        gold = raw["answers"] if task.kind == "entity_ranking" else raw["label"]

        def compute(prediction: EvalPrediction) -> dict[str, float]:
            texts = self.decode(_logits(prediction))
            parsed = [parse_generation(task, t, style) for t in texts]
            metrics = compute_metrics(task, parsed, gold, groups=groups)
            if task.kind != "entity_ranking":
                invalid = sum(1 for p in parsed if p != p or p == -1)  # NaN or INVALID
                metrics["invalid"] = invalid / len(parsed)
            return metrics

        return compute

    def arguments(self, encoded: dict[str, Dataset]) -> dict[str, Any]:
        longest = max((len(ids) for split in encoded.values() for ids in split["labels"]), default=8)
        return {"predict_with_generate": True, "generation_max_length": longest + 2, "generation_num_beams": 1}


def formulation_for(
    task: TaskSpec, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, max_length: int,
    *, target_style: TargetStyle = "names", task_prefix: bool = True,
) -> Formulation:
    """Text to text on encoder-decoder models; otherwise the task's encoder formulation."""
    if getattr(config, "is_encoder_decoder", False):
        return TextToText(task, tokenizer, max_length, target_style=target_style, task_prefix=task_prefix)
    kinds = {"multiple_choice": MultipleChoice, "entity_ranking": EntityRanking}
    return kinds.get(task.kind, Formulation)(task, tokenizer, max_length)
