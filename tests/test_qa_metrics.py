"""ReCoRD and MultiRC metrics against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pelt.errors import PeltError  # noqa: E402
from pelt.tasks.qa_metrics import (  # noqa: E402
    exact_match,
    multirc_scores,
    normalize_answer,
    record_scores,
    token_f1,
)


def assert_plain_floats(result: dict[str, float]) -> None:
    assert all(type(value) is float for value in result.values()), result


# --------------------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An  apple, a DAY...  ", "apple day"),
        ("Theater and anthem", "theater and anthem"),  # articles only as whole words
        ("U.S.A.", "usa"),
        # Punctuation goes before articles (official order): "the-end" -> "theend", no article left.
        ("The-End", "theend"),
        ("the a an", ""),
        ("", ""),
        ("Tab\tand\nnewline", "tab and newline"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --------------------------------------------------------------------------- token_f1 / exact_match


def test_token_f1_partial_overlap() -> None:
    # pred -> [eiffel, tower, in, paris] (4 tokens, "the" dropped); gold -> [eiffel, tower] (2).
    # common = 2; precision = 2/4 = 0.5; recall = 2/2 = 1; F1 = 2*0.5*1 / 1.5 = 2/3
    assert token_f1("the Eiffel tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    # Swapped roles: precision 1, recall 0.5 -> the same 2/3 (F1 is symmetric).
    assert token_f1("Eiffel Tower", "the Eiffel tower in Paris") == pytest.approx(2 / 3)


def test_token_f1_counts_token_multiplicity() -> None:
    # Counter intersection: min(2, 1) = 1 shared; precision 1/2, recall 1/1 -> 2*(1/2)/(3/2) = 2/3
    assert token_f1("paris paris", "paris") == pytest.approx(2 / 3)
    # 1 shared; precision 1/1, recall 1/3 -> 2*(1/3)/(4/3) = 1/2
    assert token_f1("Paris", "paris, paris France") == pytest.approx(0.5)
    # Repeats on both sides: min(2, 2) = 2 shared; precision 2/2, recall 2/3
    #   -> 2*1*(2/3) / (5/3) = 4/5 (set overlap would give 1 shared and 0.4)
    assert token_f1("paris paris", "Paris, Paris, France") == pytest.approx(0.8)


def test_token_f1_identical_after_normalization_is_one() -> None:
    assert token_f1("The Eiffel Tower.", "eiffel   TOWER") == pytest.approx(1.0)


def test_token_f1_no_shared_token_is_zero() -> None:
    assert token_f1("London", "Paris") == 0.0


def test_token_f1_empty_sides_follow_official_script() -> None:
    # Official f1_score: num_same == 0 -> 0, even when both sides are empty after normalization.
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0
    assert token_f1("", "") == 0.0
    assert token_f1("The", "a") == 0.0
    # ... whereas exact match of two empty normalized strings is 1.
    assert exact_match("", "") == 1.0
    assert exact_match("The", "a") == 1.0


def test_exact_match() -> None:
    assert exact_match("The Eiffel Tower.", "eiffel  tower") == 1.0
    assert exact_match("Eiffel Tower", "Eiffel Towers") == 0.0
    assert exact_match("the Eiffel tower in Paris", "Eiffel Tower") == 0.0
    assert type(exact_match("a", "b")) is float


# --------------------------------------------------------------------------- record_scores


def test_record_scores_max_over_golds_and_mean() -> None:
    predictions = ["the Eiffel tower in Paris", "Barack Obama", ""]
    golds = [
        # F1 vs "Eiffel Tower" = 2/3 (see above); vs "Paris": 1 shared, P = 1/4, R = 1
        #   -> 2*(1/4)/(5/4) = 0.4. Max (the FIRST gold) = 2/3. EM = 0.
        ["Eiffel Tower", "Paris"],
        # F1 vs "Obama": P = 1/2, R = 1 -> 2/3; vs "Barack Obama" = 1. Max (the SECOND gold) = 1.
        #   EM = 1 via the second gold.
        ["Obama", "Barack Obama"],
        # Empty (unparseable) prediction: F1 = 0, EM = 0.
        ["London"],
    ]
    result = record_scores(predictions, golds)
    # F1 = (2/3 + 1 + 0) / 3 = 5/9; EM = (0 + 1 + 0) / 3 = 1/3
    assert result == {"f1": pytest.approx(5 / 9), "em": pytest.approx(1 / 3)}
    assert_plain_floats(result)


def test_record_scores_single_example_partial() -> None:
    # pred -> [eiffel, tower, in, paris]; gold "Tower of Paris" -> [tower, of, paris].
    # common = 2; P = 2/4, R = 2/3 -> F1 = 2*(1/2)*(2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    result = record_scores(["the Eiffel tower in Paris"], [("Tower of Paris",)])
    assert result == {"f1": pytest.approx(4 / 7), "em": 0.0}


def test_record_scores_empty_prediction_scores_zero() -> None:
    result = record_scores([""], [["Paris", "the city of Paris"]])
    assert result == {"f1": 0.0, "em": 0.0}


def test_record_scores_length_mismatch() -> None:
    with pytest.raises(PeltError, match=r"3 predictions but 2 gold"):
        record_scores(["a", "b", "c"], [["a"], ["b"]])


def test_record_scores_no_examples() -> None:
    with pytest.raises(PeltError, match="no examples"):
        record_scores([], [])


def test_record_scores_empty_gold_list_names_position() -> None:
    with pytest.raises(PeltError, match=r"example 1 has an empty list"):
        record_scores(["Paris", "London"], [["Paris"], []])


def test_record_scores_bare_string_gold() -> None:
    with pytest.raises(PeltError, match=r"example 0 .*bare string"):
        record_scores(["Paris"], ["Paris"])


def test_record_scores_non_string_prediction() -> None:
    with pytest.raises(PeltError, match=r"prediction 1 must be a string"):
        record_scores(["Paris", None], [["Paris"], ["London"]])  # type: ignore[list-item]


def test_record_scores_non_string_gold() -> None:
    with pytest.raises(PeltError, match=r"example 0 must be strings"):
        record_scores(["Paris"], [["Paris", 3]])  # type: ignore[list-item]


# --------------------------------------------------------------------------- multirc_scores

# Three questions keyed (paragraph_idx, question_idx), 2-3 answer options each.
KEYS = [(0, 0), (0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 0)]
LABELS = [1, 0, 1, 0, 1, 1, 0, 0]


def test_multirc_hand_computed() -> None:
    predictions = [
        1, 0, 1,  # (0,0): all three right                       -> tp, tn, tp
        1, 1,  # (0,1): option 0 wrong                           -> fp, tp
        0, 0, 0,  # (1,0): option 0 wrong                        -> fn, tn, tn
    ]
    # tp = 3, fp = 1, fn = 1 -> F1a = 2*3 / (2*3 + 1 + 1) = 6/8 = 0.75
    # EM: only (0,0) fully right -> 1/3
    result = multirc_scores(predictions, LABELS, KEYS)
    assert result == {"f1a": pytest.approx(0.75), "em": pytest.approx(1 / 3)}
    assert_plain_floats(result)


def test_multirc_invalid_predictions_count_as_wrong() -> None:
    predictions = [
        1, -1, 1,  # (0,0): -1 on a gold-0 option -> counted as 1: fp; question now wrong
        1, 1,  # (0,1): fp, tp (as before)
        -1, 0, 0,  # (1,0): -1 on a gold-1 option -> counted as 0: fn
    ]
    # tp = 3 (positions 0, 2, 4), fp = 2 (positions 1, 3), fn = 1 (position 5)
    # F1a = 2*3 / (2*3 + 2 + 1) = 6/9 = 2/3; EM: no question fully right -> 0
    result = multirc_scores(predictions, LABELS, KEYS)
    assert result == {"f1a": pytest.approx(2 / 3), "em": 0.0}


def test_multirc_invalid_on_negative_gold_is_a_false_positive() -> None:
    # -1 on gold 0 becomes 1 (fp); option 1 is a tp. F1a = 2*1 / (2*1 + 1 + 0) = 2/3.
    # (Reading -1 as "not 1" would have given a tn and F1a = 1.0.) EM: the one question is wrong.
    result = multirc_scores([-1, 1], [0, 1], ["q", "q"])
    assert result == {"f1a": pytest.approx(2 / 3), "em": 0.0}


def test_multirc_groups_non_contiguous_keys() -> None:
    # "a" = options 0 and 2 (option 2: gold 0, pred 1 -> wrong); "b" = option 1 (right).
    # EM = 1/2. F1a: tp = 2, fp = 1, fn = 0 -> 4/5 = 0.8
    result = multirc_scores(np.array([1, 1, 1]), np.array([1, 1, 0]), ["a", "b", "a"])
    assert result == {"f1a": pytest.approx(0.8), "em": pytest.approx(0.5)}


def test_multirc_tuple_keys_are_distinct_questions() -> None:
    # (0, 1) and (1, 0) are different questions: (0,1) right, (1,0) wrong -> EM = 1/2.
    # Pooled: tp = 1, fn = 1 -> F1a = 2 / (2 + 1) = 2/3
    result = multirc_scores([1, 0], [1, 1], [(0, 1), (1, 0)])
    assert result == {"f1a": pytest.approx(2 / 3), "em": pytest.approx(0.5)}


def test_multirc_no_positive_class_gives_zero_f1a() -> None:
    # No gold or predicted 1s: precision and recall are 0/0 -> zero_division = 0.0. EM = 1.
    result = multirc_scores([0, 0], [0, 0], ["q", "q"])
    assert result == {"f1a": 0.0, "em": 1.0}


@pytest.mark.parametrize(
    ("predictions", "labels", "keys", "message"),
    [
        ([1, 0], [1], ["q", "q"], r"2 predictions, 1 labels and 2 question keys"),
        ([1], [1], ["q", "q"], r"1 predictions, 1 labels and 2 question keys"),
        ([], [], [], r"no answer options"),
        ([1, 0], [1, 2], ["q", "q"], r"labels must be 0/1, got 2 at position 1"),
        ([1, 0], [-1, 0], ["q", "q"], r"labels must be 0/1, got -1 at position 0"),
        ([1, 2], [1, 0], ["q", "q"], r"predictions must be 0/1/-1, got 2 at position 1"),
        ([0.5, 1], [1, 0], ["q", "q"], r"predictions must be integers"),
        ([[1], [0]], [1, 0], ["q", "q"], r"predictions must be a 1-D sequence"),
        ([1, 0], [1, 0], [[0, 1], [0, 1]], r"question key 0 must be hashable"),
    ],
)
def test_multirc_bad_input(predictions, labels, keys, message: str) -> None:
    with pytest.raises(PeltError, match=message):
        multirc_scores(predictions, labels, keys)


def test_multirc_accepts_integral_floats() -> None:
    # 1.0 / 0.0 are read as class ids: same as test_multirc_tuple_keys_are_distinct_questions.
    result = multirc_scores([1.0, 0.0], [1.0, 1.0], [(0, 1), (1, 0)])
    assert result == {"f1a": pytest.approx(2 / 3), "em": pytest.approx(0.5)}
