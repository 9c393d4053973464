"""Task formats (encoder segments, T5 input/target strings), label mapping, invalid generations, the split
protocols, per-task defaults, and training through every formulation on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import T5_VOCAB, TINY_OPTIONS, cb_rows, write_jsonl

import pelt
from pelt.cli import main
from pelt.errors import PeltError
from pelt.pipeline import evaluate_adapter, finetune
from pelt.tasks import compute_metrics, get_task, list_tasks, load_splits, protocol_defaults
from pelt.tasks.formats import (
    INVALID,
    copa_choices,
    encoder_segments,
    parse_generation,
    record_candidates,
    stsb_target,
    t5_input,
    t5_targets,
)
from pelt.train import TrainConfig

# ---- hand-written examples and the strings they must produce ---------------------------------------------------

EXAMPLES = {
    "rte": {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0},
    "stsb": {"sentence1": "A man sings.", "sentence2": "A man is singing.", "label": 3.95},
    "cola": {"sentence": "Him went.", "label": 0},
    "sst2": {"sentence": "a fine film", "label": 1},
    "mrpc": {"sentence1": "S1.", "sentence2": "S2.", "label": 1},
    "qqp": {"question1": "Why?", "question2": "How?", "label": 0},
    "qnli": {"question": "Who?", "sentence": "Tom did.", "label": 0},
    "wnli": {"sentence1": "It fell.", "sentence2": "The cup fell.", "label": 1},
    "mnli": {"premise": "P.", "hypothesis": "H.", "label": 2},
    "boolq": {"question": "is it wet", "passage": "It rained.", "label": 1, "idx": 0},
    "cb": {"premise": "She said so.", "hypothesis": "It is so.", "label": 2, "idx": 0},
    "superglue-rte": {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0},
    "copa": {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang.", "question": "cause",
             "label": 0, "idx": 0},
    "wic": {"word": "bank", "sentence1": "The river bank.", "sentence2": "The bank loan.", "label": 0, "idx": 0},
    "multirc": {"paragraph": "Tom ran home.", "question": "Who ran?", "answer": "Tom", "label": 1,
                "paragraph_idx": 0, "question_idx": 0, "answer_idx": 0},
    "record": {"passage": "Paris is big.\n@highlight\nRome is old", "query": "@placeholder is in France",
               "entities": ["Paris", "Rome"], "answers": ["Paris"], "idx": 0, "passage_idx": 0},
}

T5_STRINGS = {  # task: (input, target with label names, target with label ids)
    "rte": ("rte sentence1: A cat sat. sentence2: An animal sat.", "entailment", "0"),
    "stsb": ("stsb sentence1: A man sings. sentence2: A man is singing.", "4.0", "4.0"),
    "cola": ("cola sentence: Him went.", "unacceptable", "0"),
    "sst2": ("sst2 sentence: a fine film", "positive", "1"),
    "mrpc": ("mrpc sentence1: S1. sentence2: S2.", "equivalent", "1"),
    "qqp": ("qqp question1: Why? question2: How?", "not_duplicate", "0"),
    "qnli": ("qnli question: Who? sentence: Tom did.", "entailment", "0"),
    "wnli": ("wnli sentence1: It fell. sentence2: The cup fell.", "entailment", "1"),
    "mnli": ("mnli premise: P. hypothesis: H.", "contradiction", "2"),
    "boolq": ("boolq question: is it wet passage: It rained.", "True", "1"),
    "cb": ("cb premise: She said so. hypothesis: It is so.", "neutral", "2"),
    "superglue-rte": ("rte premise: P. hypothesis: H.", "not_entailment", "1"),
    "copa": ("copa premise: The man fell. question: cause choice1: He slipped. choice2: He sang.", "choice1", "0"),
    "wic": ("wic sentence1: The river bank. sentence2: The bank loan. word: bank", "False", "0"),
    "multirc": ("multirc question: Who ran? answer: Tom paragraph: Tom ran home.", "True", "1"),
    "record": ("record query: @placeholder is in France entities: Paris, Rome passage: Paris is big. Rome is old",
               "Paris", "Paris"),
}


def test_every_task_has_a_hand_written_format_case() -> None:
    assert set(T5_STRINGS) == set(list_tasks()) == set(EXAMPLES)


@pytest.mark.parametrize("task", list(T5_STRINGS))
def test_t5_formatter_gives_the_expected_strings(task: str) -> None:
    spec, example = get_task(task), EXAMPLES[task]
    text, by_name, by_id = T5_STRINGS[task]
    assert t5_input(spec, example) == text
    assert t5_input(spec, example, prefix=False) == text.split(" ", 1)[1]
    assert t5_targets(spec, example) == [by_name]
    assert t5_targets(spec, example, "ids") == [by_id]


def test_multirc_sentence_markup_is_dropped() -> None:
    marked = {**EXAMPLES["multirc"], "paragraph": "<b>Sent 1: </b>Tom ran home.<br><b>Sent 2: </b>He ate.<br>"}
    spec = get_task("multirc")
    assert encoder_segments(spec, marked)[0] == "Sent 1: Tom ran home. Sent 2: He ate. "
    assert t5_input(spec, marked).endswith("paragraph: Sent 1: Tom ran home. Sent 2: He ate. ")


def test_record_trains_on_every_answer() -> None:
    example = {**EXAMPLES["record"], "answers": ["Paris", "the city of Paris"]}
    assert t5_targets(get_task("record"), example) == ["Paris", "the city of Paris"]


def test_encoder_segments_of_each_task() -> None:
    assert encoder_segments(get_task("rte"), EXAMPLES["rte"]) == ("A cat sat.", "An animal sat.")
    assert encoder_segments(get_task("cola"), EXAMPLES["cola"]) == ("Him went.",)
    assert encoder_segments(get_task("boolq"), EXAMPLES["boolq"]) == ("is it wet", "It rained.")
    assert encoder_segments(get_task("wic"), EXAMPLES["wic"]) == ("bank: The river bank.", "The bank loan.")
    assert encoder_segments(get_task("multirc"), EXAMPLES["multirc"]) == ("Tom ran home.", "Who ran? Tom")
    copa = get_task("copa")
    assert copa_choices(copa, EXAMPLES["copa"]) == [("The man fell.", "because He slipped."),
                                                    ("The man fell.", "because He sang.")]
    effect = {**EXAMPLES["copa"], "question": "effect"}
    assert copa_choices(copa, effect)[1] == ("The man fell.", "so He sang.")
    with pytest.raises(PeltError, match="'cause' or 'effect'"):
        copa_choices(copa, {**EXAMPLES["copa"], "question": "why"})
    candidates = record_candidates(get_task("record"), EXAMPLES["record"])
    assert candidates == [(("Paris is big. Rome is old", "Paris is in France"), "Paris", 1),
                          (("Paris is big. Rome is old", "Rome is in France"), "Rome", 0)]


# ---- label mapping --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [t for t in list_tasks() if get_task(t).label_names])
@pytest.mark.parametrize("style", ["names", "ids"])
def test_every_label_round_trips_through_its_target_string(task: str, style: str) -> None:
    spec = get_task(task)
    for label in range(len(spec.label_names)):
        (target,) = t5_targets(spec, {**_any_example(spec), "label": label}, style)
        assert parse_generation(spec, target, style) == label
        assert parse_generation(spec, f"  {target}\n", style) == label  # stray whitespace


def _any_example(spec) -> dict:
    return {field: "x" for field in spec.text_fields}


def test_names_match_case_insensitively_but_nothing_looser() -> None:
    rte = get_task("rte")
    assert parse_generation(rte, "Entailment") == 0
    assert parse_generation(rte, "NOT_ENTAILMENT") == 1
    for garbage in ("", "entail", "entailment entailment", "1", "w3 w4", "not entailment"):
        assert parse_generation(rte, garbage) == INVALID
    assert parse_generation(rte, "1", "ids") == 1
    assert parse_generation(rte, "2", "ids") == INVALID  # out of range
    assert parse_generation(rte, "entailment", "ids") == INVALID


def test_stsb_rounds_to_the_nearest_fifth_and_parses_back() -> None:
    assert [stsb_target(s) for s in (0.0, 0.09, 0.11, 0.31, 2.5, 3.95, 4.95, 5.0)] == \
        ["0.0", "0.0", "0.2", "0.4", "2.4", "4.0", "5.0", "5.0"]  # 2.5 * 5 = 12.5 rounds half to even (as T5)
    # 0.0, 0.2, ..., 5.0: 26 strings. T5's paper calls this "21-class"; its code (round(x * 5) / 5), the issue's
    # "rounded to 0.2" and methods.md all give 26.
    assert len({stsb_target(i / 100) for i in range(501)}) == 26
    stsb = get_task("stsb")
    assert parse_generation(stsb, "3.8") == 3.8
    assert math.isnan(parse_generation(stsb, "three"))
    assert math.isnan(parse_generation(stsb, "nan"))


def test_a_garbage_generation_scores_as_wrong() -> None:
    # Binary: INVALID is scored as the other class, so it is wrong in accuracy and in F1.
    assert compute_metrics("rte", [INVALID, INVALID], [0, 1]) == {"accuracy": 0.0}
    # gold 1,1,0: predicted INVALID,1,0 -> 1 wrong (a false negative): F1 = 2*1/(2*1+0+1) = 2/3
    assert compute_metrics("mrpc", [INVALID, 1, 0], [1, 1, 0]) == pytest.approx(
        {"accuracy": 2 / 3, "f1": 2 / 3, "combined": 2 / 3})
    # on a gold 0 it is a false positive: gold 0,1 predicted INVALID,1: precision 1/2, recall 1 -> F1 2/3
    assert compute_metrics("mrpc", [INVALID, 1], [0, 1])["f1"] == pytest.approx(2 / 3)
    # Multi-class: no class; accuracy 1/3; macro-F1 = mean(F1 entailment 1, contradiction 0, neutral 1)... gold
    # 0,1,2 predicted 0,INVALID,2 -> per-class F1 1, 0, 1 -> 2/3
    assert compute_metrics("cb", [0, INVALID, 2], [0, 1, 2]) == pytest.approx(
        {"accuracy": 2 / 3, "macro_f1": 2 / 3, "combined": 2 / 3})
    # STS-B: NaN is scored as the end of the scale farthest from gold: 0.0 for gold 4, 5.0 for gold 1
    assert compute_metrics("stsb", [float("nan"), 1.0, 2.0], [4.0, 1.0, 2.0]) == \
        compute_metrics("stsb", [0.0, 1.0, 2.0], [4.0, 1.0, 2.0])
    assert compute_metrics("stsb", [float("nan"), 4.0, 2.0], [1.0, 4.0, 2.0]) == \
        compute_metrics("stsb", [5.0, 4.0, 2.0], [1.0, 4.0, 2.0])
    # MultiRC: an invalid option makes its question wrong
    assert compute_metrics("multirc", [INVALID, 1], [1, 1], groups=[0, 0])["em"] == 0.0
    # Encoders never produce INVALID on a label: labels are still checked
    with pytest.raises(PeltError, match="labels contain class id -1"):
        compute_metrics("rte", [0], [INVALID])


def test_record_metrics_via_compute_metrics() -> None:
    # "Paris" vs ["Paris"] -> 1/1; "" -> 0/0; "the Rome" vs ["Rome", "Milan"] -> EM 1 after normalization
    result = compute_metrics("record", ["Paris", "", "the Rome"], [["Paris"], ["x"], ["Rome", "Milan"]])
    assert result == pytest.approx({"f1": 2 / 3, "em": 2 / 3, "combined": 2 / 3})


# ---- split protocols and defaults -----------------------------------------------------------------------------


def _sg_root(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "superglue"
    write_jsonl(root / "CB", {"train": cb_rows(30), "val": cb_rows(21, seed=1)})
    paragraphs = [{"idx": p, "version": 1.1, "passage": {"text": f"w{p}", "questions": [
        {"question": f"w{q}", "idx": 10 * p + q, "answers": [
            {"text": f"w{a}", "idx": 100 * p + 10 * q + a, "label": a % 2} for a in range(2 + q)]}
        for q in range(1 + p % 3)]}} for p in range(9)]
    write_jsonl(root / "MultiRC", {"train": paragraphs, "val": paragraphs})
    return tmp_path / "data"


def _rows(dataset) -> list[dict]:
    return [dict(r) for r in dataset]


def test_compacter_protocol_halves_small_dev_sets(tmp_path: Path) -> None:
    root = _sg_root(tmp_path)
    data = load_splits("cb", root, protocol="compacter")
    assert {k: len(v) for k, v in data.items()} == {"train": 30, "validation": 10, "test": 11}
    again = load_splits("cb", root, protocol="compacter")
    assert _rows(again["validation"]) == _rows(data["validation"]) and _rows(again["test"]) == _rows(data["test"])
    other = load_splits("cb", root, protocol="compacter", split_seed=7)
    assert _rows(other["validation"]) != _rows(data["validation"])
    dev = {r["idx"] for r in _rows(load_splits("cb", root)["validation"])}
    halves = [{r["idx"] for r in _rows(data[s])} for s in ("validation", "test")]
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == dev  # a partition of dev
    assert [r["idx"] for r in _rows(data["validation"])] != sorted(halves[0])  # shuffled, not the first half
    # the training seed does not move the split; train is untouched
    assert _rows(load_splits("cb", root, protocol="compacter", seed=5)["test"]) == _rows(data["test"])
    assert _rows(data["train"]) == _rows(load_splits("cb", root)["train"])


def test_multirc_is_split_by_paragraph_and_subsampled_by_question(tmp_path: Path) -> None:
    root = _sg_root(tmp_path)
    data = load_splits("multirc", root, protocol="compacter")
    paragraphs = [set(data[s]["paragraph_idx"]) for s in ("validation", "test")]
    assert len(paragraphs[0]) == 4 and len(paragraphs[1]) == 5 and paragraphs[0].isdisjoint(paragraphs[1])
    full = load_splits("multirc", root)["validation"]
    for p in paragraphs[0]:  # every answer option of a chosen paragraph comes along
        assert data["validation"]["paragraph_idx"].count(p) == full["paragraph_idx"].count(p)
    small = load_splits("multirc", root, max_train_samples=5)["train"]
    questions = {(p, q) for p, q in zip(small["paragraph_idx"], small["question_idx"])}
    assert len(questions) == 5
    for p, q in questions:  # whole questions
        assert sum(1 for r in _rows(small) if (r["paragraph_idx"], r["question_idx"]) == (p, q)) == 2 + q % 10


def test_compacter_protocol_on_large_and_mnli_tasks(tmp_path: Path) -> None:
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"w{i % 90} w{i // 90}\t{i % 2}\n" for i in range(1100)))
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"d{i}\t{i % 2}\n" for i in range(7)))
    data = load_splits("sst2", tmp_path, protocol="compacter")
    assert {k: len(v) for k, v in data.items()} == {"train": 100, "validation": 1000, "test": 7}
    assert set(data["train"]["sentence"]).isdisjoint(data["validation"]["sentence"])
    assert _rows(load_splits("sst2", tmp_path, protocol="compacter")["validation"]) == _rows(data["validation"])
    assert len(load_splits("sst2", tmp_path, protocol="compacter", max_train_samples=30)["train"]) == 30
    mnli = tmp_path / "glue" / "MNLI"
    mnli.mkdir()
    header = "sentence1\tsentence2\tgold_label\n"
    (mnli / "train.tsv").write_text(header + "a\tb\tneutral\n")
    (mnli / "dev_matched.tsv").write_text(header + "m\tm\tentailment\n")
    (mnli / "dev_mismatched.tsv").write_text(header + "x\tx\tcontradiction\nx2\tx2\tneutral\n")
    data = load_splits("mnli", tmp_path, protocol="compacter")
    assert data["validation"]["premise"] == ["x", "x2"] and data["test"]["premise"] == ["m"]
    with pytest.raises(PeltError, match="sets 1000 aside"):
        (glue / "train.tsv").write_text("sentence\tlabel\nw1\t0\n")
        load_splits("sst2", tmp_path, protocol="compacter")
    with pytest.raises(PeltError, match="unknown split protocol 'paper'"):
        load_splits("cb", tmp_path, protocol="paper")  # type: ignore[arg-type]
    with pytest.raises(PeltError, match="has no split 'test'"):
        load_splits("cb", tmp_path, splits=["test"])  # standard protocol has no test split


def test_record_validation_takes_1000_queries_in_whole_passages(tmp_path: Path) -> None:
    """ReCoRD's examples are queries, several per passage: 1,000 of them are set aside, passages kept whole."""
    def passage(p: int) -> dict:
        return {"idx": p, "passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": 2},
                                                                            {"start": 8, "end": 10}]},
                "qas": [{"query": f"@placeholder met w{p}.", "idx": 2 * p + q,
                         "answers": [{"start": 0, "end": 2, "text": "Ann"}]} for q in range(2)]}
    write_jsonl(tmp_path / "superglue" / "ReCoRD", {"train": [passage(p) for p in range(600)],
                                                     "val": [passage(p) for p in range(1000, 1003)]})
    data = load_splits("record", tmp_path, protocol="compacter")
    assert {k: len(v) for k, v in data.items()} == {"validation": 1000, "train": 200, "test": 6}
    assert len(set(data["validation"]["passage_idx"])) == 500
    assert set(data["validation"]["passage_idx"]).isdisjoint(data["train"]["passage_idx"])


def test_protocol_defaults_and_overrides() -> None:
    assert protocol_defaults("rte") == {"epochs": 20, "max_length": 128, "batch_size": 100, "warmup_steps": 500}
    assert protocol_defaults("sst2")["epochs"] == 3
    assert protocol_defaults("cb") == {"epochs": 20, "max_length": 256, "batch_size": 32, "warmup_steps": 0}
    assert protocol_defaults("record") == {"epochs": 3, "max_length": 512, "batch_size": 16, "warmup_steps": 0}
    filled = TrainConfig(output_dir="x", epochs=2, warmup_ratio=0.1).for_task("cb")
    assert (filled.epochs, filled.batch_size, filled.max_length, filled.warmup_ratio, filled.warmup_steps) == \
        (2, 32, 256, 0.1, None)
    with pytest.raises(PeltError, match="either warmup_ratio or warmup_steps"):
        TrainConfig(output_dir="x", warmup_ratio=0.1, warmup_steps=3).for_task("cb")
    with pytest.raises(PeltError, match="target_style must be names or ids"):
        TrainConfig(output_dir="x", target_style="labels").for_task("cb")  # type: ignore[arg-type]


# ---- training through each formulation --------------------------------------------------------------------------


def _quick(tmp_path: Path, name: str, **overrides) -> TrainConfig:
    settings = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1000, **overrides}
    return TrainConfig(output_dir=str(tmp_path / name), **settings)


def test_tiny_t5_overfits_16_examples_text_to_text(tmp_path: Path, tiny_t5_dir: Path) -> None:
    rows = cb_rows(16)  # the label is the premise's first word: learnable
    data = write_jsonl(tmp_path / "sg" / "CB", {"train": rows, "val": rows}).parent
    config = _quick(tmp_path, "out", epochs=25, learning_rate=3e-3)
    results = finetune("cb", pelt.make_config("full"), config, model=str(tiny_t5_dir), data_dir=data)
    assert results["formulation"] == {"formulation": "text-to-text", "target_style": "names", "task_prefix": True}
    assert results["metrics"]["validation"]["accuracy"] == 1.0
    assert results["metrics"]["validation"]["invalid"] == 0.0
    assert results["history"][-1]["eval_combined"] == 1.0  # evaluation during training sees rows in order too
    again = evaluate_adapter(tmp_path / "out" / "adapter", data_dir=data)
    assert again["validation"]["accuracy"] == 1.0


def test_an_untrained_t5_generation_is_scored_not_crashed(tmp_path: Path, tiny_t5_dir: Path) -> None:
    rows = cb_rows(6)
    data = write_jsonl(tmp_path / "sg" / "CB", {"train": rows, "val": rows}).parent
    results = finetune("cb", pelt.make_config("hadamard"), _quick(tmp_path, "o", learning_rate=1e-9),
                       model=str(tiny_t5_dir), data_dir=data)
    validation = results["metrics"]["validation"]
    assert 0.0 <= validation["invalid"] <= 1.0 and validation["accuracy"] <= 1.0 - validation["invalid"]


@pytest.mark.parametrize("method", pelt.list_methods())
def test_every_method_trains_and_evaluates_text_to_text(tmp_path: Path, tiny_t5_dir: Path, method: str) -> None:
    rows = cb_rows(6)
    data = write_jsonl(tmp_path / "sg" / "CB", {"train": rows, "val": rows[:3]}).parent
    config = pelt.make_config(method, **TINY_OPTIONS.get(method, {}))
    results = finetune("cb", config, _quick(tmp_path, "out", target_style="ids"), model=str(tiny_t5_dir), data_dir=data)
    assert set(results["metrics"]["validation"]) == {"accuracy", "macro_f1", "combined", "invalid"}
    saved = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert (saved["formulation"], saved["target_style"], saved["task_prefix"]) == ("text-to-text", "ids", True)
    assert evaluate_adapter(tmp_path / "out" / "adapter", data_dir=data) == results["metrics"]


def test_superglue_encoder_formulations_train_and_reload(tmp_path: Path, tiny_model_dir: Path) -> None:
    copa = [{"premise": f"w{i} w3", "choice1": "w5 w6", "choice2": "w7", "question": ["cause", "effect"][i % 2],
             "label": i % 2, "idx": i} for i in range(8)]
    record = [{"source": "s", "idx": p, "passage": {"text": "w5 w6 w7\n@highlight\nw8 w9", "entities": [
        {"start": 0, "end": 1}, {"start": 3, "end": 4}, {"start": 20, "end": 21}]}, "qas": [
        {"query": f"w{p} @placeholder w12", "idx": p, "answers": [{"start": 3, "end": 4, "text": "w6"}]}]}
        for p in range(4)]
    root = _sg_root(tmp_path)
    write_jsonl(root / "superglue" / "COPA", {"train": copa, "val": copa})
    write_jsonl(root / "superglue" / "ReCoRD", {"train": record, "val": record})
    expected = {"copa": {"accuracy"}, "multirc": {"f1a", "em", "combined"}, "record": {"f1", "em", "combined"}}
    for task, keys in expected.items():
        protocol = "standard" if task == "record" else "compacter"
        results = finetune(task, pelt.make_config("hadamard"), _quick(tmp_path, task), model=str(tiny_model_dir),
                           data_dir=root, split_protocol=protocol)
        assert set(results["metrics"]) == ({"validation"} if task == "record" else {"validation", "test"})
        assert set(results["metrics"]["validation"]) == keys
        assert results["formulation"]["formulation"] == ("multiple-choice" if task == "copa" else
                                                         "sequence-classification")
        assert evaluate_adapter(tmp_path / task / "adapter", data_dir=root) == results["metrics"]


def test_copa_scores_each_choice_with_one_output(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import BertForMultipleChoice

    from pelt.models import load_pretrained

    model, _ = load_pretrained(str(tiny_model_dir), 1, kind="multiple-choice")
    assert isinstance(model, BertForMultipleChoice) and model.classifier.out_features == 1
    with pytest.raises(PeltError, match="not an encoder-decoder model"):
        load_pretrained(str(tiny_model_dir), 1, kind="text-to-text")


# ---- command line ------------------------------------------------------------------------------------------------


def test_cli_trains_t5_under_the_compacter_protocol_and_reevaluates(tmp_path: Path, tiny_t5_dir: Path, capsys) -> None:
    rows = cb_rows(12)
    data = write_jsonl(tmp_path / "sg" / "CB", {"train": rows, "val": cb_rows(8, seed=2)}).parent
    out = tmp_path / "run"
    code = main(["train", "--task", "cb", "--model", str(tiny_t5_dir), "--data-dir", str(data), "--output-dir", str(out),
                 "--method", "lora", "--epochs", "1", "--batch-size", "4", "--split-protocol", "compacter",
                 "--target-style", "ids", "--no-task-prefix"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "epochs 1, batch 4, max length 256, warm-up 0 steps, split protocol compacter" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"validation", "test"}
    assert results["split_sizes"] == {"train": 12, "validation": 4, "test": 4}
    assert results["formulation"] == {"formulation": "text-to-text", "target_style": "ids", "task_prefix": False}
    assert main(["eval", "--adapter", str(out / "adapter"), "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == results["metrics"]


def test_cli_tasks_lists_defaults_and_row_counts(tmp_path: Path, capsys) -> None:
    root = _sg_root(tmp_path)
    assert main(["tasks", "--data-dir", str(root), "--task", "cb", "--split-protocol", "compacter"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.split()[:7] == ["cb", "superglue", "combined", "20", "32", "256", "0"]
    assert "train 30, validation 10, test 11" in line
    assert main(["tasks"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(list_tasks())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "cb", "--split-protocol", "paper"], "invalid choice: 'paper'"),
        (["--task", "cb", "--warmup-steps", "3", "--warmup-ratio", "0.1"], "not allowed with argument"),
        (["--task", "boolq"], "BoolQ"),  # no BoolQ folder in the data root
        (["--task", "cb", "--epochs", "0"], "epochs must be positive"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path: Path, tiny_model_dir: Path, capsys, argv, message) -> None:
    root = _sg_root(tmp_path)
    try:
        code = main(["train", "--model", str(tiny_model_dir), "--data-dir", str(root), "--output-dir",
                     str(tmp_path / "o"), *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_t5_vocab_holds_every_target() -> None:
    """The test tokenizer must be able to spell every label target, or the T5 tests would test nothing."""
    for task in list_tasks():
        spec = get_task(task)
        for style in ("names", "ids"):
            for label in range(len(spec.label_names or ())):
                assert t5_targets(spec, {"label": label}, style)[0] in T5_VOCAB


def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    rows = cb_rows(6)
    data = write_jsonl(tmp_path / "sg" / "CB", {"train": rows, "val": rows}).parent
    finetune("cb", pelt.make_config("bitfit"), _quick(tmp_path, "w", warmup_steps=5), model=str(tiny_model_dir),
             data_dir=data)
    assert "5 warm-up steps >= the 1 training steps" in capsys.readouterr().err
    finetune("cb", pelt.make_config("bitfit"), _quick(tmp_path, "v", warmup_steps=0), model=str(tiny_model_dir),
             data_dir=data)
    assert "warm-up" not in capsys.readouterr().err


def test_compacter_halves_of_an_even_dev_set_are_pinned(tmp_path: Path) -> None:
    """Ten dev rows, split seed 42: the rows of validation and test, named here, so that a change of the shuffle,
    of which half validates, or of the rounding moves them (an odd size alone would not tell the halves apart)."""
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    labels = ["entailment", "not_entailment"]
    (rte / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\tw{i} w1\tw2\t{labels[i % 2]}\n" for i in range(8)))
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\trow{i}\tw2\t{labels[i % 2]}\n" for i in range(10)))
    data = load_splits("rte", tmp_path / "glue", protocol="compacter")
    names = {split: [r["sentence1"] for r in _rows(data[split])] for split in ("validation", "test")}
    assert names == {"validation": ["row5", "row6", "row0", "row7", "row3"],
                     "test": ["row2", "row4", "row9", "row1", "row8"]}
