"""GLUE and SuperGLUE evaluation metrics.

Each task reports the metrics of its benchmark; tasks with two metrics also report ``combined`` (their mean),
which is what checkpoint selection compares (the Compacter paper's rule). Values are plain Python floats so
they serialise to JSON as-is. Predictions may be INVALID (-1: a T5 generation that names no label, or NaN for
an STS-B score): they are scored as wrong, never dropped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from pelt.errors import PeltError
from pelt.tasks.formats import INVALID
from pelt.tasks.qa_metrics import multirc_scores, record_scores
from pelt.tasks.spec import TaskSpec, get_task

__all__ = ["compute_metrics"]

ArrayLike = np.ndarray | Sequence[float] | Sequence[int]


def _as_1d(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        hint = "; take the argmax over the last axis first" if what == "predictions" else ""
        raise PeltError(f"{what} must be a 1-D sequence, got shape {array.shape}{hint}")
    return array


def _as_class_ids(array: np.ndarray, what: str, num_labels: int, *, allow_invalid: bool = False) -> np.ndarray:
    """Integer class ids in 0..num_labels-1 (integral floats such as 1.0 are accepted); INVALID if allowed."""
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise PeltError(
            f"{what} must be integer class ids (the argmax of the logits), got {array.dtype} values"
        )
    bad = ((array < 0) & ~((array == INVALID) & allow_invalid)) | (array >= num_labels)
    if np.any(bad):
        raise PeltError(f"{what} contain class id {array[bad][0]} outside 0..{num_labels - 1}")
    return array.astype(np.int64)


def _as_scores(array: np.ndarray, what: str, *, allow_invalid: bool = False) -> np.ndarray:
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise PeltError(f"{what} must be numbers for a regression task, got {array.dtype}") from None
    if np.any(np.isinf(array)) or (not allow_invalid and np.any(np.isnan(array))):
        raise PeltError(f"{what} contain NaN or infinite values" if not allow_invalid else f"{what} contain infinite values")
    return array


def _correlation(func, predictions: np.ndarray, labels: np.ndarray) -> float:
    """A correlation coefficient that is 0.0 (not NaN) when either side is constant.

    A model that predicts the same score for every pair carries no ranking information, so 0 is the
    honest value, and it keeps NaN out of checkpoint comparison (NaN compares false with everything).
    """
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(func(predictions, labels)[0])
    return 0.0 if math.isnan(value) else value


def compute_metrics(
    task: TaskSpec | str, predictions: ArrayLike, labels: ArrayLike, *, groups: Sequence[object] | None = None
) -> dict[str, float]:
    """Score predictions against gold labels with the task's metrics.

    Classification expects class ids (already argmaxed; INVALID = -1 counts as wrong: a binary task scores it as
    the other class, a multi-class one as no class); regression (STS-B) expects scores (NaN counts as wrong: it is
    scored as the end of the 0-5 scale farthest from the gold score). MultiRC needs `groups`, the question of each
    answer option; ReCoRD takes predicted answer texts and, as labels, each query's list of gold answers.
    Pearson/Spearman of a constant side is reported as 0.0 rather than NaN.
    """
    spec = get_task(task)
    if spec.kind == "entity_ranking":
        scores = record_scores(list(predictions), [list(g) for g in labels])
        return {**scores, "combined": (scores["f1"] + scores["em"]) / 2}
    pred = _as_1d(predictions, "predictions")
    gold = _as_1d(labels, "labels")
    if len(pred) != len(gold):
        raise PeltError(
            f"got {len(pred)} predictions but {len(gold)} labels for task {spec.name}; "
            "they must match one to one"
        )
    if len(gold) == 0:
        raise PeltError(f"cannot compute metrics for task {spec.name} on zero examples")

    if spec.is_regression:
        pred, gold = _as_scores(pred, "predictions", allow_invalid=True), _as_scores(gold, "labels")
        pred = np.where(np.isnan(pred), np.where(gold >= 2.5, 0.0, 5.0), pred)
        pearson = _correlation(stats.pearsonr, pred, gold)
        spearman = _correlation(stats.spearmanr, pred, gold)
        return {"pearson": pearson, "spearmanr": spearman, "combined": (pearson + spearman) / 2}

    num_labels = len(spec.label_names or ())
    pred = _as_class_ids(pred, "predictions", num_labels, allow_invalid=True)
    gold = _as_class_ids(gold, "labels", num_labels)
    if spec.kind == "answer_options":
        if groups is None or len(groups) != len(gold):
            raise PeltError(f"{spec.name} metrics need the question of every answer option (groups=...)")
        scores = multirc_scores(pred.tolist(), gold.tolist(), list(groups))
        return {**scores, "combined": (scores["f1a"] + scores["em"]) / 2}
    if num_labels == 2:
        pred = np.where(pred == INVALID, 1 - gold, pred)  # wrong in every metric
    if "matthews_correlation" in spec.metrics:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns, then returns 0.0, on a constant side
            mcc = float(matthews_corrcoef(gold, pred))
        return {"matthews_correlation": 0.0 if math.isnan(mcc) else mcc}
    accuracy = float(accuracy_score(gold, pred))
    if "macro_f1" in spec.metrics:
        macro = float(f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0.0))
        return {"accuracy": accuracy, "macro_f1": macro, "combined": (accuracy + macro) / 2}
    if "f1" not in spec.metrics:
        return {"accuracy": accuracy}
    f1 = float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0))
    return {"accuracy": accuracy, "f1": f1, "combined": (accuracy + f1) / 2}
