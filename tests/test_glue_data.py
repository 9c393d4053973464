"""GLUE task specs and loading, on tiny files written in the official glue_data TSV formats.

No test here touches the network: hub loading is exercised with a stubbed ``load_dataset``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from pelt.errors import PeltError  # noqa: E402
from pelt.tasks import TaskSpec, get_task, list_tasks, load_task_data  # noqa: E402
from pelt.tasks import glue as glue_module  # noqa: E402

MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)
MNLI_DEV_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
    "label5\tgold_label\n"
)

# Tiny files in the official formats: {folder: {file name: text}}.
TINY: dict[str, dict[str, str]] = {
    "CoLA": {
        # No header; columns: source, label, original annotation, sentence.
        "train.tsv": "gj04\t1\t\tOur friends won't buy this analysis.\n"
        "gj04\t0\t*\tThey drank the pub.\n",
        # The real dev.tsv has no newline at the end of the last line.
        "dev.tsv": "bc01\t0\t*\tHarry coughed us into a fit.\nbc01\t1\t\tBill sang.",
    },
    "SST-2": {
        "train.tsv": 'sentence\tlabel\nit \'s a " charming " journey . \t1\nbleak and desperate \t0\n',
        "dev.tsv": "sentence\tlabel\nunflinchingly bleak \t0\n",
    },
    "MRPC": {
        # The real files start with a UTF-8 byte order mark.
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " .\t'
        'Referring to him as only " the witness " , Amrozi accused his brother .\n'
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "0\t1\t2\tA first .\tA second .\n",
    },
    "STS-B": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
        "An air plane is taking off.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\t"
        "A man is playing a flute.\t3.800\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is dancing.\tA man dances.\t0.250\n",
    },
    "QQP": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of math?\t0\n"
        "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control it?\t1\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "1\t2\t3\tWhy?\tWhy not?\t1\n",
    },
    "MNLI": {
        "train.tsv": MNLI_TRAIN_HEADER
        + "0\t31193\t31193n\tgovernment\t( ( Conceptually cream ) skimming )\t( ( ( Product and ) geography ) )\t"
        "(ROOT (S (NP (JJ Conceptually) (NN cream))))\t(ROOT (S (NP (NN Product))))\t"
        'Conceptually cream skimming has "two" basic dimensions.\t'
        "Product and geography are what make cream skimming work. \tneutral\tneutral\n"
        "1\t101457\t101457e\ttelephone\t( you ( know ) )\t( You ( lose ) )\t(ROOT (S (NP (PRP you))))\t"
        "(ROOT (S (NP (PRP You))))\tyou know during the season\tYou lose the things.\t"
        "entailment\tentailment\n",
        "dev_matched.tsv": MNLI_DEV_HEADER
        + "0\t63735\t63735n\tslate\t( ( The ) new )\t( ( The ) rights )\t(ROOT (S))\t(ROOT (S))\t"
        "The new rights are nice enough\tEveryone really likes the newest benefits \t"
        "neutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
        "dev_mismatched.tsv": MNLI_DEV_HEADER
        + "0\t75290\t75290c\tletters\t( Your gift )\t( Your gift )\t(ROOT (S))\t(ROOT (S))\t"
        "Your contribution helped make it possible.\tYour contributions were of no help.\t"
        "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n",
    },
    "QNLI": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n"
        "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it.\tnot_entailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n"
        "0\tWhat came into force?\tThe new constitution came into force.\tentailment\n",
    },
    "RTE": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t"
        "not_entailment\n"
        "1\tPope Benedict XVI was installed.\tPope Benedict XVI is the new leader.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tDana Reeve has died.\tChristopher Reeve had an accident.\tnot_entailment\n",
    },
    "WNLI": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n"
        "1\tJohn couldn't see the stage.\tJohn is so short.\t0\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tThe drain is clogged with hair.\tThe hair has to be cleaned.\t0\n",
    },
}

# What load_task_data must return for the files above: {task: {split: [row dicts]}}.
EXPECTED: dict[str, dict[str, list[dict]]] = {
    "cola": {
        "train": [
            {"sentence": "Our friends won't buy this analysis.", "label": 1},
            {"sentence": "They drank the pub.", "label": 0},
        ],
        "validation": [
            {"sentence": "Harry coughed us into a fit.", "label": 0},
            {"sentence": "Bill sang.", "label": 1},
        ],
    },
    "sst2": {
        "train": [
            # Quotes and the trailing space are kept verbatim (QUOTE_NONE), as on the hub.
            {"sentence": 'it \'s a " charming " journey . ', "label": 1},
            {"sentence": "bleak and desperate ", "label": 0},
        ],
        "validation": [{"sentence": "unflinchingly bleak ", "label": 0}],
    },
    "mrpc": {
        "train": [
            {
                "sentence1": 'Amrozi accused his brother , whom he called " the witness " .',
                "sentence2": 'Referring to him as only " the witness " , Amrozi accused his brother .',
                "label": 1,
            },
            {
                "sentence1": "Yucaipa owned Dominick 's .",
                "sentence2": "Yucaipa bought Dominick 's in 1995 .",
                "label": 0,
            },
        ],
        "validation": [{"sentence1": "A first .", "sentence2": "A second .", "label": 0}],
    },
    "stsb": {
        "train": [
            {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "label": 5.0},
            {
                "sentence1": "A man is playing a large flute.",
                "sentence2": "A man is playing a flute.",
                "label": pytest.approx(3.8),  # float32
            },
        ],
        "validation": [{"sentence1": "A man is dancing.", "sentence2": "A man dances.", "label": 0.25}],
    },
    "qqp": {
        "train": [
            {"question1": "How is the life of a math student?", "question2": "Which level of math?", "label": 0},
            {
                "question1": "How do I control my horny emotions?",
                "question2": "How do you control it?",
                "label": 1,
            },
        ],
        "validation": [{"question1": "Why?", "question2": "Why not?", "label": 1}],
    },
    "mnli": {
        "train": [
            {
                "premise": 'Conceptually cream skimming has "two" basic dimensions.',
                "hypothesis": "Product and geography are what make cream skimming work. ",
                "label": 1,
            },
            {"premise": "you know during the season", "hypothesis": "You lose the things.", "label": 0},
        ],
        "validation_matched": [
            {
                "premise": "The new rights are nice enough",
                "hypothesis": "Everyone really likes the newest benefits ",
                "label": 1,  # gold_label (last column), not label1
            }
        ],
        "validation_mismatched": [
            {
                "premise": "Your contribution helped make it possible.",
                "hypothesis": "Your contributions were of no help.",
                "label": 2,
            }
        ],
    },
    "qnli": {
        "train": [
            {
                "question": "When did the third Digimon series begin?",
                "sentence": "Unlike the two seasons before it.",
                "label": 1,
            }
        ],
        "validation": [
            {"question": "What came into force?", "sentence": "The new constitution came into force.", "label": 0}
        ],
    },
    "rte": {
        "train": [
            {
                "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
                "sentence2": "Weapons of Mass Destruction Found in Iraq.",
                "label": 1,
            },
            {
                "sentence1": "Pope Benedict XVI was installed.",
                "sentence2": "Pope Benedict XVI is the new leader.",
                "label": 0,
            },
        ],
        "validation": [
            {"sentence1": "Dana Reeve has died.", "sentence2": "Christopher Reeve had an accident.", "label": 1}
        ],
    },
    "wnli": {
        "train": [
            {"sentence1": "I stuck a pin through a carrot.", "sentence2": "The carrot had a hole.", "label": 1},
            {"sentence1": "John couldn't see the stage.", "sentence2": "John is so short.", "label": 0},
        ],
        "validation": [
            {"sentence1": "The drain is clogged with hair.", "sentence2": "The hair has to be cleaned.", "label": 0}
        ],
    },
}


def write_task(root: Path, folder: str, files: dict[str, str] | None = None) -> Path:
    """Write a task folder under root (glue_data layout) and return it."""
    task_dir = root / folder
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (files if files is not None else TINY[folder]).items():
        (task_dir / name).write_bytes(text.encode("utf-8"))
    return task_dir


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    """A glue_data-style folder with every task in its official format."""
    root = tmp_path / "glue_data"
    for folder in TINY:
        write_task(root, folder)
    return root


def rows(dataset: datasets.Dataset) -> list[dict]:
    return [dict(row) for row in dataset]


# ---------------------------------------------------------------------------------------------------
# Task specs


def test_list_tasks_is_the_nine_glue_tasks_then_superglue() -> None:
    assert list_tasks()[9:] == ["boolq", "cb", "copa", "multirc", "record", "wic", "superglue-rte"]
    assert list_tasks("glue") == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]


@pytest.mark.parametrize(
    ("alias", "name"),
    [("SST-2", "sst2"), ("sst2", "sst2"), ("Sst-2", "sst2"), ("STS-B", "stsb"), ("sts_b", "stsb"),
     ("mnli", "mnli"), ("CoLA", "cola"), ("QNLI", "qnli")],
)
def test_get_task_ignores_case_and_punctuation(alias: str, name: str) -> None:
    assert get_task(alias).name == name


def test_get_task_unknown_lists_known_tasks() -> None:
    with pytest.raises(PeltError, match=r"unknown task 'xyz'; known tasks: cola, sst2, mrpc, qqp, stsb"):
        get_task("xyz")


def test_task_spec_fields() -> None:
    stsb, mnli, cola = get_task("stsb"), get_task("mnli"), get_task("cola")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.label_names is None
    assert stsb.main_metric == "combined" and stsb.folder == "STS-B"
    assert mnli.label_names == ("entailment", "neutral", "contradiction") and mnli.num_labels == 3
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    assert mnli.text_fields == ("premise", "hypothesis")
    assert not cola.is_regression and cola.label_names == ("unacceptable", "acceptable")
    assert cola.main_metric == "matthews_correlation"
    assert get_task("wnli").label_names == ("not_entailment", "entailment")
    assert get_task("qnli").text_fields == ("question", "sentence")
    assert get_task("qqp").text_fields == ("question1", "question2")
    for name in list_tasks():
        spec = get_task(name)
        assert isinstance(spec, TaskSpec)
        assert spec.main_metric in spec.metrics
        if name != "mnli":
            assert spec.eval_splits == ("validation",)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]  # frozen


# ---------------------------------------------------------------------------------------------------
# Local loading: contents


@pytest.mark.parametrize("task", list(EXPECTED))
def test_load_every_task_from_parent_folder(glue_dir: Path, task: str) -> None:
    spec = get_task(task)
    data = load_task_data(task, glue_dir)
    assert list(data) == ["train", *spec.eval_splits]
    for split, expected in EXPECTED[task].items():
        assert data[split].column_names == [*spec.text_fields, "label"]
        assert rows(data[split]) == expected
        label = data[split].features["label"]
        if spec.is_regression:
            assert label == datasets.Value("float32")
        else:
            assert isinstance(label, datasets.ClassLabel) and tuple(label.names) == spec.label_names
        for field in spec.text_fields:
            assert data[split].features[field] == datasets.Value("string")


@pytest.mark.parametrize("task", ["cola", "mrpc", "mnli"])
def test_load_from_task_folder_itself(glue_dir: Path, task: str) -> None:
    spec = get_task(task)
    from_parent = load_task_data(spec, glue_dir)
    from_task_dir = load_task_data(spec, str(glue_dir / spec.folder))
    for split in from_parent:
        assert rows(from_task_dir[split]) == rows(from_parent[split])


def test_task_folder_name_is_matched_loosely(tmp_path: Path) -> None:
    write_task(tmp_path, "sst2", TINY["SST-2"])
    assert len(load_task_data("SST-2", tmp_path)["train"]) == 2


def test_requested_splits_only(glue_dir: Path) -> None:
    data = load_task_data("mnli", glue_dir, splits=["validation_mismatched"])
    assert list(data) == ["validation_mismatched"]
    # A task folder holding only dev.tsv (like a QNLI download without train) loads its validation.
    only_dev = write_task(glue_dir.parent / "only_dev", "QNLI", {"dev.tsv": TINY["QNLI"]["dev.tsv"]})
    assert len(load_task_data("qnli", only_dev, splits=("validation",))["validation"]) == 1


def test_unknown_split_is_rejected(glue_dir: Path) -> None:
    with pytest.raises(PeltError, match=r"task mnli has no split 'validation'; choose from: train, "
                                        r"validation_matched, validation_mismatched"):
        load_task_data("mnli", glue_dir, splits=["validation"])
    with pytest.raises(PeltError, match="no split 'test'"):
        load_task_data("rte", glue_dir, splits=["test"])


def test_blank_lines_and_crlf_are_tolerated(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        "RTE",
        {
            "train.tsv": "index\tsentence1\tsentence2\tlabel\r\n\r\n0\tA b.\tC d.\tentailment\r\n\r\n",
            "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tE.\tF.\t1\n\n\n",  # ids accepted too
        },
    )
    data = load_task_data("rte", tmp_path)
    assert rows(data["train"]) == [{"sentence1": "A b.", "sentence2": "C d.", "label": 0}]
    assert rows(data["validation"]) == [{"sentence1": "E.", "sentence2": "F.", "label": 1}]


# ---------------------------------------------------------------------------------------------------
# max_train_samples


def write_big_sst2(root: Path, n: int = 50) -> None:
    lines = "".join(f"sentence number {i} \t{i % 2}\n" for i in range(n))
    write_task(root, "SST-2", {"train.tsv": "sentence\tlabel\n" + lines, "dev.tsv": "sentence\tlabel\nx\t1\n"})


def test_max_train_samples_is_a_seeded_subset(tmp_path: Path) -> None:
    write_big_sst2(tmp_path)
    first = load_task_data("sst2", tmp_path, max_train_samples=10, seed=7)
    again = load_task_data("sst2", tmp_path, max_train_samples=10, seed=7)
    other = load_task_data("sst2", tmp_path, max_train_samples=10, seed=8)
    assert len(first["train"]) == 10
    assert rows(first["train"]) == rows(again["train"])
    assert rows(first["train"]) != rows(other["train"])
    full = {r["sentence"]: r["label"] for r in rows(load_task_data("sst2", tmp_path)["train"])}
    assert all(full[r["sentence"]] == r["label"] for r in rows(first["train"]))  # real rows, intact
    assert rows(first["train"]) != rows(load_task_data("sst2", tmp_path)["train"])[:10]  # shuffled
    assert len(first["validation"]) == 1  # eval splits are never subsampled


def test_max_train_samples_larger_than_split_uses_all(tmp_path: Path) -> None:
    write_big_sst2(tmp_path, n=5)
    assert len(load_task_data("sst2", tmp_path, max_train_samples=1000)["train"]) == 5
    assert len(load_task_data("sst2", tmp_path, max_train_samples=5)["train"]) == 5


@pytest.mark.parametrize("bad", [0, -3])
def test_max_train_samples_must_be_positive(glue_dir: Path, bad: int) -> None:
    with pytest.raises(PeltError, match=f"max_train_samples must be a positive integer, got {bad}"):
        load_task_data("sst2", glue_dir, max_train_samples=bad)


# ---------------------------------------------------------------------------------------------------
# Local loading: errors (each one line, naming the file and, for row problems, the 1-based line)


def one_line(excinfo: pytest.ExceptionInfo[PeltError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PeltError) as excinfo:
        load_task_data("sst2", missing)
    message = one_line(excinfo)
    assert f"data folder {missing} does not exist" in message
    assert "--data-dir" in message and "hub" in message


def test_folder_without_the_task(tmp_path: Path) -> None:
    write_task(tmp_path, "CoLA")
    with pytest.raises(PeltError) as excinfo:
        load_task_data("sst2", tmp_path)
    assert "has neither a SST-2/ subfolder nor the SST-2 files (train.tsv, dev.tsv)" in one_line(excinfo)


def test_task_folder_of_another_task(tmp_path: Path) -> None:
    cola = write_task(tmp_path, "CoLA")
    with pytest.raises(PeltError) as excinfo:
        load_task_data("sst2", cola)
    assert "looks like the CoLA folder but task sst2 was requested" in one_line(excinfo)


def test_missing_split_file(tmp_path: Path) -> None:
    write_task(tmp_path, "MNLI", {"train.tsv": TINY["MNLI"]["train.tsv"],
                                  "dev_matched.tsv": TINY["MNLI"]["dev_matched.tsv"]})
    with pytest.raises(PeltError) as excinfo:
        load_task_data("mnli", tmp_path)
    message = one_line(excinfo)
    assert f"split file {tmp_path / 'MNLI' / 'dev_mismatched.tsv'} not found" in message
    assert "validation_mismatched" in message


def test_header_missing_column(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "QNLI", {"train.tsv": "index\tquestion\ttext\tlabel\n0\tq\ts\tentailment\n",
                                             "dev.tsv": TINY["QNLI"]["dev.tsv"]})
    with pytest.raises(PeltError) as excinfo:
        load_task_data("qnli", tmp_path)
    message = one_line(excinfo)
    assert f"{task_dir / 'train.tsv'}:1: header has no column 'sentence'" in message
    assert "columns found: index, question, text, label" in message


def test_row_with_too_few_fields(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "RTE", {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n\n1\ta only\tentailment\n",
        "dev.tsv": TINY["RTE"]["dev.tsv"],
    })
    with pytest.raises(PeltError) as excinfo:
        load_task_data("rte", tmp_path)
    # Line 4: the blank line 3 still counts.
    assert f"{task_dir / 'train.tsv'}:4: row has too few fields (3, expected 4)" in one_line(excinfo)


def test_cola_row_with_too_few_fields(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "CoLA", {"train.tsv": "gj04\t1\t\tFine.\ngj04\t1\tMissing a field.\n",
                                             "dev.tsv": TINY["CoLA"]["dev.tsv"]})
    with pytest.raises(PeltError) as excinfo:
        load_task_data("cola", tmp_path)
    assert f"{task_dir / 'train.tsv'}:2: row has too few fields (3, expected 4)" in one_line(excinfo)


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "SST-2", {"train.tsv": "sentence\tlabel\na tab\tinside\t1\n",
                                              "dev.tsv": TINY["SST-2"]["dev.tsv"]})
    with pytest.raises(PeltError) as excinfo:
        load_task_data("sst2", tmp_path)
    assert f"{task_dir / 'train.tsv'}:2: row has too many fields (3, expected 2)" in one_line(excinfo)


@pytest.mark.parametrize(
    ("folder", "task", "train", "line", "value", "allowed"),
    [
        ("SST-2", "sst2", "sentence\tlabel\nfine\t1\nbad\t2\n", 3, "'2'", "0, 1, negative, positive"),
        ("CoLA", "cola", "gj04\tx\t\tBad label.\n", 1, "'x'", "0, 1, unacceptable, acceptable"),
        ("MNLI", "mnli", MNLI_TRAIN_HEADER + "0\t1\t1n\tg\tp\th\tp\th\tA.\tB.\t-\t-\n", 2, "'-'",
         "0, 1, 2, entailment, neutral, contradiction"),
        ("RTE", "rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tEntails\n", 2, "'Entails'",
         "0, 1, entailment, not_entailment"),
    ],
)
def test_unknown_label(tmp_path: Path, folder: str, task: str, train: str, line: int, value: str,
                       allowed: str) -> None:
    files = dict(TINY[folder])
    files["train.tsv"] = train
    task_dir = write_task(tmp_path, folder, files)
    with pytest.raises(PeltError) as excinfo:
        load_task_data(task, tmp_path)
    message = one_line(excinfo)
    assert f"{task_dir / 'train.tsv'}:{line}: unknown label {value} for task {task}" in message
    assert f"allowed values: {allowed}" in message


@pytest.mark.parametrize("score", ["five", "7.5", "-3", "nan"])
def test_an_stsb_score_that_is_not_from_0_to_5(tmp_path: Path, score: str) -> None:
    header = TINY["STS-B"]["dev.tsv"].splitlines(keepends=True)[0]
    task_dir = write_task(tmp_path, "STS-B", {
        "train.tsv": TINY["STS-B"]["train.tsv"],
        "dev.tsv": header + f"0\tg\tf\t2012\t0\tnone\tnone\tA.\tB.\t1.0\n1\tg\tf\t2012\t1\tnone\tnone\tC.\tD.\t{score}\n",
    })
    with pytest.raises(PeltError) as excinfo:
        load_task_data("stsb", tmp_path)
    assert f"{task_dir / 'dev.tsv'}:3: score '{score}' is not a number from 0 to 5" in one_line(excinfo)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "WNLI", {"train.tsv": "", "dev.tsv": "index\tsentence1\tsentence2\tlabel\n"})
    with pytest.raises(PeltError) as excinfo:
        load_task_data("wnli", tmp_path, splits=["train"])
    assert f"{task_dir / 'train.tsv'} is empty" in one_line(excinfo)
    with pytest.raises(PeltError) as excinfo:
        load_task_data("wnli", tmp_path, splits=["validation"])
    assert f"{task_dir / 'dev.tsv'} has a header but no examples" in one_line(excinfo)


def test_invalid_utf8(tmp_path: Path) -> None:
    task_dir = write_task(tmp_path, "SST-2")
    (task_dir / "dev.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(PeltError) as excinfo:
        load_task_data("sst2", tmp_path)
    assert f"{task_dir / 'dev.tsv'}: not valid UTF-8" in one_line(excinfo)


# ---------------------------------------------------------------------------------------------------
# Hub loading (stubbed: no network)


def test_hub_failure_becomes_pelt_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(glue_module.datasets, "load_dataset", unreachable)
    with pytest.raises(PeltError) as excinfo:
        load_task_data("rte")
    message = one_line(excinfo)
    assert "could not load rte from the hub (nyu-mll/glue)" in message
    assert "--data-dir" in message


def test_hub_keeps_only_requested_splits_and_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    features = datasets.Features({
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
        "idx": datasets.Value("int32"),
    })

    def split(n: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"sentence1": [f"p{i}" for i in range(n)], "sentence2": [f"h{i}" for i in range(n)],
             "label": [i % 2 for i in range(n)], "idx": list(range(n))},
            features=features,
        )

    calls = []

    def fake_load(path: str, name: str, **kwargs) -> datasets.DatasetDict:
        calls.append((path, name))
        return datasets.DatasetDict({"train": split(8), "validation": split(3), "test": split(2)})

    monkeypatch.setattr(glue_module.datasets, "load_dataset", fake_load)
    data = load_task_data("RTE", max_train_samples=4, seed=1)
    assert calls == [("nyu-mll/glue", "rte")]
    assert list(data) == ["train", "validation"]
    assert data["train"].column_names == ["sentence1", "sentence2", "label"]
    assert len(data["train"]) == 4 and len(data["validation"]) == 3
    assert rows(data["train"]) == rows(load_task_data("rte", max_train_samples=4, seed=1)["train"])


# ---------------------------------------------------------------------------------------------------
# Real data (PELT_GLUE_DIR points at a glue_data folder)

REAL_ROWS = {
    "cola": {"train": 8551, "validation": 1043},
    "sst2": {"train": 67349, "validation": 872},
    "mrpc": {"train": 3668, "validation": 408},
    "stsb": {"train": 5749, "validation": 1500},
    "rte": {"train": 2490, "validation": 277},
    "wnli": {"train": 635, "validation": 71},
    "qnli": {"validation": 5463},
}


def test_real_glue_data_row_counts() -> None:
    root = os.environ.get("PELT_GLUE_DIR") or str(SHARED_DATA / "glue")  # beside the clone, as in CI
    if not Path(root).is_dir():
        pytest.skip("set PELT_GLUE_DIR to a glue_data folder to run this test")
    present = [task for task in REAL_ROWS if (Path(root) / get_task(task).folder).is_dir()]
    if not present:
        pytest.skip(f"no known GLUE task folder in {root}")
    for task in present:
        expected = REAL_ROWS[task]
        data = load_task_data(task, root, splits=list(expected))
        assert {split: len(ds) for split, ds in data.items()} == expected, task
        spec = get_task(task)
        for ds in data.values():
            assert ds.column_names == [*spec.text_fields, "label"]
            labels = ds["label"]
            if spec.is_regression:
                assert 0.0 <= min(labels) and max(labels) <= 5.0
            else:
                assert set(labels) == set(range(spec.num_labels)), task  # every class occurs


@pytest.mark.parametrize("where", ["superglue", "superglue/RTE"])
def test_glue_rte_pointed_at_superglue_files_names_the_other_task(tmp_path: Path, where: str) -> None:
    rte = tmp_path / "superglue" / "RTE"
    rte.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        (rte / name).write_text('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n')
    with pytest.raises(PeltError) as excinfo:
        load_task_data("rte", tmp_path / where)
    assert f"{rte} holds SuperGLUE JSONL files, not GLUE's TSV; for SuperGLUE's RTE use --task superglue-rte" \
        in one_line(excinfo)
