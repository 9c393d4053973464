"""GLUE metrics against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pelt.errors import PeltError  # noqa: E402
from pelt.tasks import compute_metrics, get_task, list_tasks  # noqa: E402


def assert_plain_floats(result: dict[str, float]) -> None:
    assert all(type(value) is float for value in result.values()), result


def test_accuracy_tasks() -> None:
    # 4 of 5 right (index 2 wrong): 4 / 5 = 0.8
    for task in ("sst2", "qnli", "rte", "wnli"):
        result = compute_metrics(task, [0, 1, 1, 0, 1], [0, 1, 0, 0, 1])
        assert result == {"accuracy": pytest.approx(0.8)}
        assert_plain_floats(result)


def test_mnli_three_classes() -> None:
    # 3 of 4 right (index 2: predicted contradiction, gold neutral): 0.75
    result = compute_metrics("mnli", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert result == {"accuracy": 0.75}


def test_cola_matthews_correlation() -> None:
    gold = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    pred = [1, 1, 1, 0, 0, 0, 1, 0, 1, 0]
    # tp = idx 0,1,2,8 = 4; fn = idx 3 = 1; fp = idx 6 = 1; tn = idx 4,5,7,9 = 4
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (16 - 1) / sqrt(5*5*5*5) = 15/25
    result = compute_metrics("CoLA", pred, gold)
    assert result == {"matthews_correlation": pytest.approx(0.6)}
    assert_plain_floats(result)


def test_cola_extremes() -> None:
    # Perfectly inverted: tp = tn = 0, fp = fn = 2 -> (0 - 4) / sqrt(2*2*2*2) = -1
    assert compute_metrics("cola", [1, 1, 0, 0], [0, 0, 1, 1]) == {"matthews_correlation": pytest.approx(-1.0)}
    # Constant prediction: the denominator is 0, MCC is defined as 0 here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_metrics("cola", [1, 1, 1, 1], [0, 1, 0, 1]) == {"matthews_correlation": 0.0}


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_f1_combined(task: str) -> None:
    gold = [1, 1, 1, 0, 0, 1]
    pred = [1, 0, 1, 1, 0, 1]
    # right at idx 0,2,4,5 -> accuracy 4/6 = 2/3
    # tp = idx 0,2,5 = 3; fp = idx 3 = 1; fn = idx 1 = 1 -> F1 = 2tp / (2tp + fp + fn) = 6/8 = 0.75
    # combined = (2/3 + 3/4) / 2 = 17/24
    result = compute_metrics(task, pred, gold)
    assert result == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(0.75),
                      "combined": pytest.approx(17 / 24)}
    assert_plain_floats(result)


def test_f1_without_predicted_positives_is_zero() -> None:
    # tp = 0 -> F1 = 0 / (0 + 0 + 1) = 0; accuracy 1/2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_metrics("mrpc", [0, 0], [1, 0])
    assert result == {"accuracy": 0.5, "f1": 0.0, "combined": 0.25}


def test_stsb_pearson_spearman() -> None:
    pred = [1.0, 2.0, 3.0, 4.0]
    gold = [2.0, 4.0, 5.0, 9.0]
    # x - mean = -1.5, -0.5, 0.5, 1.5; y - mean(=5) = -3, -1, 0, 4
    # sum xy = 4.5 + 0.5 + 0 + 6 = 11; sum x^2 = 5; sum y^2 = 26 -> r = 11 / sqrt(130)
    # both are strictly increasing, so the ranks agree: spearman = 1
    pearson = 11 / math.sqrt(130)
    result = compute_metrics("stsb", np.array(pred, dtype=np.float32), gold)
    assert result == {"pearson": pytest.approx(pearson, rel=1e-6), "spearmanr": pytest.approx(1.0),
                      "combined": pytest.approx((pearson + 1) / 2, rel=1e-6)}
    assert_plain_floats(result)


def test_stsb_rank_disagreement() -> None:
    # ranks of gold = 1, 3, 2, 4; d = 0, -1, 1, 0; rho = 1 - 6*2 / (4*(16-1)) = 0.8
    # pearson: x - 25 = -15,-5,5,15; y - 2.5 = -1.5,.5,-.5,1.5; sum xy = 40; sum x^2 = 500; sum y^2 = 5
    #          r = 40 / sqrt(2500) = 0.8
    result = compute_metrics("STS-B", [10, 20, 30, 40], [1, 3, 2, 4])
    assert result == {"pearson": pytest.approx(0.8), "spearmanr": pytest.approx(0.8),
                      "combined": pytest.approx(0.8)}


def test_stsb_constant_predictions_are_zero_not_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_metrics("stsb", [2.5, 2.5, 2.5], [0.0, 1.0, 4.0])
    assert result == {"pearson": 0.0, "spearmanr": 0.0, "combined": 0.0}


def test_every_task_reports_exactly_its_declared_metrics() -> None:
    for name in list_tasks():
        spec = get_task(name)
        if spec.is_regression:
            result = compute_metrics(spec, [0.5, 1.0, 3.0], [0.0, 2.0, 3.5])
        elif spec.kind == "entity_ranking":
            result = compute_metrics(spec, ["a b", "c"], [["a b"], ["d", "e"]])
        else:
            result = compute_metrics(spec, [0, 1, 1, 0], [0, 1, 0, 1], groups=[0, 0, 1, 1])
        assert tuple(result) == spec.metrics, name
        assert spec.main_metric in result


def test_integral_float_class_ids_are_accepted() -> None:
    assert compute_metrics("sst2", np.array([1.0, 0.0]), [1, 1]) == {"accuracy": 0.5}


@pytest.mark.parametrize(
    ("task", "pred", "gold", "match"),
    [
        ("sst2", [0, 1, 1], [0, 1], "got 3 predictions but 2 labels"),
        ("stsb", [1.0], [1.0, 2.0], "got 1 predictions but 2 labels"),
        ("sst2", [], [], "zero examples"),
        ("stsb", np.array([]), np.array([]), "zero examples"),
        ("sst2", [[0.1, 0.9], [0.8, 0.2]], [1, 0], "1-D.*argmax"),
        ("rte", [0, 2], [0, 1], "class id 2 outside 0..1"),
        ("mnli", [0, 1], [0, -1], "labels contain class id -1"),
        ("sst2", [0.3, 0.7], [0, 1], "integer class ids"),
        ("stsb", [1.0, float("inf")], [1.0, 2.0], "infinite"),
    ],
)
def test_bad_inputs(task: str, pred, gold, match: str) -> None:
    with pytest.raises(PeltError, match=match):
        compute_metrics(task, pred, gold)


def test_unknown_task() -> None:
    with pytest.raises(PeltError, match="unknown task 'glue'"):
        compute_metrics("glue", [0], [0])
