"""SuperGLUE question-answering metrics: ReCoRD (token F1 / EM) and MultiRC (F1a / EM).

These replicate the official scorers so that numbers are comparable with published results:
ReCoRD uses the SQuAD-style ``evaluate.py`` of the ReCoRD/SuperGLUE release (answer normalization,
bag-of-tokens F1, max over the gold answers of an example); MultiRC uses F1 over all answer options
pooled ("F1a") and per-question exact match. All values are fractions in [0, 1] (the official
scripts print them times 100) and plain Python floats so they serialise to JSON as-is.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import f1_score

from pelt.errors import PeltError

__all__ = ["exact_match", "multirc_scores", "normalize_answer", "record_scores", "token_f1"]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Normalize an answer exactly as the official SQuAD/ReCoRD script does.

    The steps run in the official order (lower-case, drop ``string.punctuation``, drop the whole
    words a/an/the, collapse whitespace); the order matters, e.g. "The-End" becomes "theend", in
    which no article survives as a word, so keeping it makes our scores match published ones.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between the normalized prediction and gold, as the official ``f1_score``.

    Tokens are counted with multiplicity (``Counter`` intersection). As in the official script, when
    no token is shared the F1 is 0.0; this includes the case where either side (or both) normalizes
    to nothing, so two empty strings score 0.0 F1 (though they are an exact match).
    """
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return float(2 * precision * recall / (precision + recall))


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0 (the official ``exact_match_score``)."""
    return 1.0 if normalize_answer(prediction) == normalize_answer(gold) else 0.0


def record_scores(
    predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]
) -> dict[str, float]:
    """ReCoRD scores: mean over examples of the best F1 / EM against any of its gold answers.

    An example may have several gold answers (every mention of the answer entity), so each metric
    takes the max over them, as the official script does. A prediction of "" (an unparseable
    generation) is allowed and scores 0 on both metrics.
    """
    if len(predictions) != len(gold_answers):
        raise PeltError(
            f"ReCoRD got {len(predictions)} predictions but {len(gold_answers)} gold answer lists; "
            "there must be one prediction per example"
        )
    if len(predictions) == 0:
        raise PeltError("ReCoRD got no examples to score")
    f1_total = 0.0
    em_total = 0.0
    for index, (prediction, golds) in enumerate(zip(predictions, gold_answers)):
        if not isinstance(prediction, str):
            raise PeltError(
                f"ReCoRD prediction {index} must be a string, got {type(prediction).__name__}; "
                'use "" for an unparseable generation'
            )
        if isinstance(golds, str):
            raise PeltError(
                f"ReCoRD gold answers of example {index} must be a list of strings, got the bare "
                f"string {golds!r}; wrap it in a list"
            )
        if len(golds) == 0:
            raise PeltError(f"ReCoRD example {index} has an empty list of gold answers")
        for gold in golds:
            if not isinstance(gold, str):
                raise PeltError(
                    f"ReCoRD gold answers of example {index} must be strings, "
                    f"got {type(gold).__name__}"
                )
        f1_total += max(token_f1(prediction, gold) for gold in golds)
        em_total += max(exact_match(prediction, gold) for gold in golds)
    count = len(predictions)
    return {"f1": float(f1_total / count), "em": float(em_total / count)}


def _as_int_array(values: Sequence[int], what: str, allowed: tuple[int, ...]) -> np.ndarray:
    """A 1-D int64 array whose values are all in ``allowed`` (integral floats accepted)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise PeltError(f"MultiRC {what} must be a 1-D sequence, got shape {array.shape}")
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise PeltError(f"MultiRC {what} must be integers, got {array.dtype} values")
    array = array.astype(np.int64)
    bad = ~np.isin(array, allowed)
    if np.any(bad):
        position = int(np.flatnonzero(bad)[0])
        allowed_text = "/".join(str(value) for value in allowed)
        raise PeltError(
            f"MultiRC {what} must be {allowed_text}, got {array[position]} at position {position}"
        )
    return array


def multirc_scores(
    predictions: Sequence[int], labels: Sequence[int], question_keys: Sequence[Hashable]
) -> dict[str, float]:
    """MultiRC scores as SuperGLUE reports them: "f1a" and "em".

    "f1a" is binary F1 (positive class 1) over all answer options pooled, so questions with many
    options weigh more. "em" is the fraction of questions (answer options grouped by their key, e.g.
    ``(paragraph_idx, question_idx)``) whose every option is predicted correctly. A prediction of -1
    marks an invalid/unparseable generation and always counts as wrong: for F1a it is replaced by the
    opposite of its gold label (a false negative if the gold is 1, a false positive if it is 0).
    """
    if not (len(predictions) == len(labels) == len(question_keys)):
        raise PeltError(
            f"MultiRC got {len(predictions)} predictions, {len(labels)} labels and "
            f"{len(question_keys)} question keys; there must be one of each per answer option"
        )
    if len(predictions) == 0:
        raise PeltError("MultiRC got no answer options to score")
    prediction_array = _as_int_array(predictions, "predictions", (0, 1, -1))
    label_array = _as_int_array(labels, "labels", (0, 1))

    invalid = prediction_array == -1
    scored = np.where(invalid, 1 - label_array, prediction_array)
    f1a = f1_score(
        label_array, scored, labels=[0, 1], pos_label=1, average="binary", zero_division=0.0
    )

    question_correct: dict[Hashable, bool] = {}
    correct = prediction_array == label_array
    for index, (key, option_correct) in enumerate(zip(question_keys, correct)):
        try:
            question_correct[key] = question_correct.get(key, True) and bool(option_correct)
        except TypeError:
            raise PeltError(
                f"MultiRC question key {index} must be hashable (e.g. a tuple), "
                f"got {type(key).__name__}"
            ) from None
    em = sum(question_correct.values()) / len(question_correct)
    return {"f1a": float(f1a), "em": float(em)}
