"""SuperGLUE loading, on tiny files written in the official SuperGLUE JSON-lines formats.

No test here touches the network: hub loading is exercised with a stubbed ``load_dataset``.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from pelt.errors import PeltError  # noqa: E402
from pelt.tasks import superglue as superglue_module  # noqa: E402
from pelt.tasks.superglue import SUPERGLUE_TASKS, load_superglue, superglue_features  # noqa: E402

BOTH = ("train", "validation")


def jsonl(*objects: Any) -> str:
    return "".join(json.dumps(obj) + "\n" for obj in objects)


# ReCoRD passage: "Fed" twice (4-6 and 42-44), "Yellen" 13-18, "Washington" 55-64; spans inclusive.
RECORD_TEXT = "The Fed met. Yellen spoke.\n@highlight\nThe Fed acted in Washington"

MULTIRC_TRAIN = [
    {"idx": 0, "version": 1.1, "passage": {"text": "Sent one. Sent two.", "questions": [
        {"question": "What is first?", "idx": 0, "answers": [
            {"text": "Sent one", "idx": 0, "label": 1},
            {"text": "Sent two", "idx": 1, "label": 0},
        ]},
        {"question": "How many?", "idx": 1, "answers": [{"text": "Two", "idx": 2, "label": 1}]},
    ]}},
    {"idx": 1, "version": 1.1, "passage": {"text": "Another paragraph.", "questions": [
        {"question": "Which one?", "idx": 2, "answers": [
            {"text": "Another", "idx": 3, "label": 1},
            {"text": "", "idx": 4, "label": 0},  # the real train file has empty answers too
        ]},
    ]}},
]

# Tiny files in the official formats: {folder: {file name: text}}.
TINY: dict[str, dict[str, str]] = {
    "BoolQ": {
        "train.jsonl": jsonl(
            {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": True},
            {"question": "is water dry", "passage": "Water -- Water is wet.", "idx": 1, "label": False},
        ),
        "val.jsonl": jsonl({"question": "is ice cold", "passage": "Ice -- Ice is cold.", "idx": 0,
                            "label": True}),
    },
    "CB": {
        "train.jsonl": jsonl(
            {"premise": "It was a complex language.", "hypothesis": "the language was complex",
             "label": "entailment", "idx": 0},
            {"premise": "Who knows?", "hypothesis": "there is a shipment", "label": "neutral", "idx": 1},
        ),
        "val.jsonl": jsonl({"premise": "Valence was a valet.", "hypothesis": "Valence was helping",
                            "label": "contradiction", "idx": 0}),
    },
    "COPA": {
        "train.jsonl": jsonl(
            {"premise": "My body cast a shadow.", "choice1": "The sun was rising.",
             "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0},
            {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.",
             "choice2": "Water flowed.", "question": "effect", "label": 1, "idx": 1},
        ),
        "val.jsonl": jsonl({"premise": "The woman retired.", "choice1": "She got a pension.",
                            "choice2": "She paid a mortgage.", "question": "effect", "label": 0, "idx": 0}),
    },
    "RTE": {
        "train.jsonl": jsonl(
            {"premise": "No weapons found.", "hypothesis": "Weapons found.", "label": "not_entailment",
             "idx": 0},
            {"premise": "Benedict XVI is pope.", "hypothesis": "Benedict leads the church.",
             "label": "entailment", "idx": 1},
        ),
        "val.jsonl": jsonl({"premise": "Reeve died.", "hypothesis": "Reeve had an accident.",
                            "label": "not_entailment", "idx": 0}),
    },
    "WiC": {
        "train.jsonl": jsonl(
            {"word": "place", "sentence1": "Come over to my place.", "sentence2": "No place for groups.",
             "idx": 0, "label": False, "start1": 16, "start2": 3, "end1": 21, "end2": 8, "version": 1.1},
            {"word": "run", "sentence1": "I run daily.", "sentence2": "They run fast.",
             "idx": 1, "label": True, "start1": 2, "start2": 5, "end1": 5, "end2": 8, "version": 1.1},
        ),
        "val.jsonl": jsonl({"word": "bank", "sentence1": "A river bank.", "sentence2": "A savings bank.",
                            "idx": 0, "label": False, "start1": 8, "start2": 10, "end1": 12, "end2": 14,
                            "version": 1.1}),
    },
    "MultiRC": {
        "train.jsonl": jsonl(*MULTIRC_TRAIN),
        "val.jsonl": jsonl({"idx": 0, "version": 1.1, "passage": {"text": "Forces move things.", "questions": [
            {"question": "What moves things?", "idx": 0, "answers": [{"text": "Forces", "idx": 0, "label": 1}]},
        ]}}),
    },
    "ReCoRD": {
        "train.jsonl": jsonl({
            "source": "Daily mail", "idx": 7,
            # Listed out of passage order and with "Fed" twice.
            "passage": {"text": RECORD_TEXT, "entities": [
                {"start": 13, "end": 18}, {"start": 42, "end": 44}, {"start": 55, "end": 64},
                {"start": 4, "end": 6},
            ]},
            "qas": [
                {"query": "The @placeholder raised rates.", "idx": 11, "answers": [
                    {"start": 4, "end": 6, "text": "Fed"}, {"start": 42, "end": 44, "text": "Fed"},
                ]},
                {"query": "Yellen went to @placeholder.", "idx": 12, "answers": [
                    {"start": 55, "end": 64, "text": "Washington"},
                    {"start": 55, "end": 64, "text": "Washington DC"},
                ]},
            ],
        }),
        "val.jsonl": jsonl({"source": "CNN", "idx": 0, "passage": {"text": "Ann met Bob.", "entities": [
            {"start": 0, "end": 2}, {"start": 8, "end": 10}]},
            "qas": [{"query": "@placeholder met Ann.", "idx": 0, "answers": [
                {"start": 8, "end": 10, "text": "Bob"}]}]}),
    },
}

EXPECTED: dict[str, dict[str, list[dict[str, Any]]]] = {
    "boolq": {
        "train": [
            {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "label": 1, "idx": 0},
            {"question": "is water dry", "passage": "Water -- Water is wet.", "label": 0, "idx": 1},
        ],
        "validation": [{"question": "is ice cold", "passage": "Ice -- Ice is cold.", "label": 1, "idx": 0}],
    },
    "cb": {
        "train": [
            {"premise": "It was a complex language.", "hypothesis": "the language was complex",
             "label": 0, "idx": 0},
            {"premise": "Who knows?", "hypothesis": "there is a shipment", "label": 2, "idx": 1},
        ],
        "validation": [{"premise": "Valence was a valet.", "hypothesis": "Valence was helping",
                        "label": 1, "idx": 0}],
    },
    "copa": {
        "train": [
            {"premise": "My body cast a shadow.", "choice1": "The sun was rising.",
             "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0},
            {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.",
             "choice2": "Water flowed.", "question": "effect", "label": 1, "idx": 1},
        ],
        "validation": [{"premise": "The woman retired.", "choice1": "She got a pension.",
                        "choice2": "She paid a mortgage.", "question": "effect", "label": 0, "idx": 0}],
    },
    "superglue-rte": {
        "train": [
            {"premise": "No weapons found.", "hypothesis": "Weapons found.", "label": 1, "idx": 0},
            {"premise": "Benedict XVI is pope.", "hypothesis": "Benedict leads the church.",
             "label": 0, "idx": 1},
        ],
        "validation": [{"premise": "Reeve died.", "hypothesis": "Reeve had an accident.", "label": 1,
                        "idx": 0}],
    },
    "wic": {
        "train": [
            {"word": "place", "sentence1": "Come over to my place.", "sentence2": "No place for groups.",
             "label": 0, "idx": 0},
            {"word": "run", "sentence1": "I run daily.", "sentence2": "They run fast.", "label": 1, "idx": 1},
        ],
        "validation": [{"word": "bank", "sentence1": "A river bank.", "sentence2": "A savings bank.",
                        "label": 0, "idx": 0}],
    },
    "multirc": {
        "train": [
            {"paragraph": "Sent one. Sent two.", "question": "What is first?", "answer": "Sent one",
             "label": 1, "paragraph_idx": 0, "question_idx": 0, "answer_idx": 0},
            {"paragraph": "Sent one. Sent two.", "question": "What is first?", "answer": "Sent two",
             "label": 0, "paragraph_idx": 0, "question_idx": 0, "answer_idx": 1},
            {"paragraph": "Sent one. Sent two.", "question": "How many?", "answer": "Two",
             "label": 1, "paragraph_idx": 0, "question_idx": 1, "answer_idx": 2},
            {"paragraph": "Another paragraph.", "question": "Which one?", "answer": "Another",
             "label": 1, "paragraph_idx": 1, "question_idx": 2, "answer_idx": 3},
            {"paragraph": "Another paragraph.", "question": "Which one?", "answer": "",
             "label": 0, "paragraph_idx": 1, "question_idx": 2, "answer_idx": 4},
        ],
        "validation": [{"paragraph": "Forces move things.", "question": "What moves things?",
                        "answer": "Forces", "label": 1, "paragraph_idx": 0, "question_idx": 0,
                        "answer_idx": 0}],
    },
    "record": {
        "train": [
            {"passage": RECORD_TEXT, "query": "The @placeholder raised rates.",
             "entities": ["Fed", "Yellen", "Washington"], "answers": ["Fed"], "idx": 11, "passage_idx": 7},
            {"passage": RECORD_TEXT, "query": "Yellen went to @placeholder.",
             "entities": ["Fed", "Yellen", "Washington"], "answers": ["Washington", "Washington DC"],
             "idx": 12, "passage_idx": 7},
        ],
        "validation": [{"passage": "Ann met Bob.", "query": "@placeholder met Ann.",
                        "entities": ["Ann", "Bob"], "answers": ["Bob"], "idx": 0, "passage_idx": 0}],
    },
}

COLUMNS: dict[str, list[str]] = {
    "boolq": ["question", "passage", "label", "idx"],
    "cb": ["premise", "hypothesis", "label", "idx"],
    "copa": ["premise", "choice1", "choice2", "question", "label", "idx"],
    "superglue-rte": ["premise", "hypothesis", "label", "idx"],
    "wic": ["word", "sentence1", "sentence2", "label", "idx"],
    "multirc": ["paragraph", "question", "answer", "label", "paragraph_idx", "question_idx", "answer_idx"],
    "record": ["passage", "query", "entities", "answers", "idx", "passage_idx"],
}

LABELS: dict[str, list[str]] = {
    "boolq": ["False", "True"],
    "cb": ["entailment", "contradiction", "neutral"],
    "copa": ["choice1", "choice2"],
    "superglue-rte": ["entailment", "not_entailment"],
    "wic": ["False", "True"],
    "multirc": ["False", "True"],
}


def loose(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def write_task(root: Path, folder: str, files: dict[str, str] | None = None) -> Path:
    task_dir = root / folder
    task_dir.mkdir(parents=True, exist_ok=True)
    if files is None:  # the tiny files of the task the (possibly re-spelled) folder name names
        files = next(text for name, text in TINY.items() if loose(name) == loose(folder))
    for name, text in files.items():
        (task_dir / name).write_text(text, encoding="utf-8")
    return task_dir


def rows(ds: datasets.Dataset) -> list[dict[str, Any]]:
    return [dict(row) for row in ds]


def one_line(excinfo: pytest.ExceptionInfo[PeltError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def superglue_dir(tmp_path: Path) -> Path:
    root = tmp_path / "SuperGLUE"
    for folder in TINY:
        write_task(root, folder)
    return root


# ---------------------------------------------------------------------------------------------------
# Task table and schemas


def test_task_table() -> None:
    assert SUPERGLUE_TASKS == {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC",
                               "record": "ReCoRD", "wic": "WiC", "superglue-rte": "RTE"}


@pytest.mark.parametrize("task", list(COLUMNS))
def test_features(task: str) -> None:
    features = superglue_features(task)
    assert list(features) == COLUMNS[task]
    string, int32 = datasets.Value("string"), datasets.Value("int32")
    for name, feature in features.items():
        if name == "label":
            assert isinstance(feature, datasets.ClassLabel) and feature.names == LABELS[task]
        elif name in ("entities", "answers"):
            assert feature == datasets.Sequence(string)
        elif name.endswith("idx"):
            assert feature == int32
        else:
            assert feature == string
    assert ("label" in features) == (task != "record")


def test_unknown_task() -> None:
    with pytest.raises(PeltError) as excinfo:
        superglue_features("axb")
    assert "unknown SuperGLUE task 'axb'; known tasks: boolq, cb, copa, multirc, record, wic, superglue-rte" \
        in one_line(excinfo)
    with pytest.raises(PeltError, match="GLUE's rte is a different task, use superglue-rte"):
        load_superglue("rte", None, BOTH)
    assert list(superglue_features("SuperGLUE_RTE")) == COLUMNS["superglue-rte"]


# ---------------------------------------------------------------------------------------------------
# Local loading: contents


@pytest.mark.parametrize("task", list(EXPECTED))
def test_load_every_task(superglue_dir: Path, task: str) -> None:
    data = load_superglue(task, superglue_dir, BOTH)
    assert list(data) == ["train", "validation"]
    for split, expected in EXPECTED[task].items():
        assert data[split].features == superglue_features(task)
        assert data[split].column_names == COLUMNS[task]
        assert rows(data[split]) == expected


def test_requested_splits_only(superglue_dir: Path) -> None:
    data = load_superglue("cb", superglue_dir, ["validation"])
    assert list(data) == ["validation"]
    assert list(load_superglue("cb", superglue_dir, "train")) == ["train"]


@pytest.mark.parametrize("split", ["test", "dev", "validation_matched"])
def test_unknown_split_is_rejected(superglue_dir: Path, split: str) -> None:
    with pytest.raises(PeltError) as excinfo:
        load_superglue("cb", superglue_dir, ["train", split])
    message = one_line(excinfo)
    assert f"task cb has no split {split!r}; choose from: train, validation" in message
    assert ("only labeled splits can be used" in message) == (split == "test")
    with pytest.raises(PeltError, match="no splits requested for task cb"):
        load_superglue("cb", superglue_dir, [])


@pytest.mark.parametrize(
    ("folder", "task", "value", "label"),
    [
        ("BoolQ", "boolq", True, 1), ("BoolQ", "boolq", "False", 0), ("BoolQ", "boolq", 1, 1),
        ("WiC", "wic", "True", 1), ("WiC", "wic", 0, 0),
        ("CB", "cb", "neutral", 2), ("CB", "cb", 1, 1),
        ("RTE", "superglue-rte", 0, 0),
        ("COPA", "copa", "choice2", 1), ("COPA", "copa", 0, 0),
    ],
)
def test_label_name_and_id_are_accepted(tmp_path: Path, folder: str, task: str, value: Any,
                                        label: int) -> None:
    first = json.loads(TINY[folder]["val.jsonl"])
    first["label"] = value
    write_task(tmp_path, folder, {"val.jsonl": jsonl(first)})
    assert load_superglue(task, tmp_path, ["validation"])["validation"]["label"] == [label]


def test_multirc_answer_labels_accept_bools_and_names(tmp_path: Path) -> None:
    line = json.loads(TINY["MultiRC"]["val.jsonl"])
    line["passage"]["questions"][0]["answers"] = [
        {"text": "a", "idx": 0, "label": True}, {"text": "b", "idx": 1, "label": "False"},
    ]
    write_task(tmp_path, "MultiRC", {"val.jsonl": jsonl(line)})
    assert load_superglue("multirc", tmp_path, ["validation"])["validation"]["label"] == [1, 0]


def test_blank_lines_crlf_and_bom_are_tolerated(tmp_path: Path) -> None:
    text = TINY["CB"]["train.jsonl"].replace("\n", "\r\n\r\n")
    task_dir = write_task(tmp_path, "CB", {"val.jsonl": "\ufeff" + text + "  \n"})
    assert rows(load_superglue("cb", tmp_path, ["validation"])["validation"]) == EXPECTED["cb"]["train"]
    (task_dir / "val.jsonl").write_text("\n" + TINY["CB"]["val.jsonl"] + "{\n")
    with pytest.raises(PeltError, match=r"val\.jsonl:3: not valid JSON"):  # blank lines still count
        load_superglue("cb", tmp_path, ["validation"])


# ---------------------------------------------------------------------------------------------------
# Folder layouts


def test_superglue_folder(superglue_dir: Path) -> None:
    assert len(load_superglue("multirc", superglue_dir, ["train"])["train"]) == 5


@pytest.mark.parametrize("nested", ["superglue", "SuperGLUE", "super_glue", "Super-GLUE"])
def test_data_root_holding_superglue_and_glue(tmp_path: Path, nested: str) -> None:
    write_task(tmp_path / "glue", "RTE", {"train.tsv": "index\tsentence1\tsentence2\tlabel\n"})
    write_task(tmp_path / nested, "RTE")
    write_task(tmp_path / nested, "ReCoRD")
    data = load_superglue("superglue-rte", tmp_path, BOTH)
    assert rows(data["validation"]) == EXPECTED["superglue-rte"]["validation"]
    assert rows(load_superglue("record", tmp_path, ["validation"])["validation"]) == \
        EXPECTED["record"]["validation"]


@pytest.mark.parametrize("task", ["copa", "record", "multirc"])
def test_task_folder_itself(superglue_dir: Path, task: str) -> None:
    data = load_superglue(task, str(superglue_dir / SUPERGLUE_TASKS[task]), BOTH)
    for split, expected in EXPECTED[task].items():
        assert rows(data[split]) == expected


@pytest.mark.parametrize(("folder", "task"), [("multi_rc", "multirc"), ("Re-CoRD", "record"),
                                               ("wic", "wic"), ("rte", "superglue-rte")])
def test_task_folder_name_is_matched_loosely(tmp_path: Path, folder: str, task: str) -> None:
    write_task(tmp_path / "super_glue", folder)
    assert rows(load_superglue(task, tmp_path, ["validation"])["validation"]) == \
        EXPECTED[task]["validation"]


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PeltError) as excinfo:
        load_superglue("cb", missing, BOTH)
    message = one_line(excinfo)
    assert f"data folder {missing} does not exist" in message
    assert "--data-dir" in message and "hub" in message
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeltError, match="is not a folder"):
        load_superglue("cb", tmp_path / "file", BOTH)
    with pytest.raises(PeltError, match="data folder is an empty path"):
        load_superglue("cb", "", BOTH)


def test_folder_without_the_task(tmp_path: Path) -> None:
    write_task(tmp_path, "CB")
    with pytest.raises(PeltError) as excinfo:
        load_superglue("wic", tmp_path, BOTH)
    message = one_line(excinfo)
    assert f"data folder {tmp_path} has neither a WiC/ subfolder nor the WiC files " \
           "(train.jsonl, val.jsonl)" in message
    assert "also looked in" not in message
    write_task(tmp_path / "superglue", "BoolQ")
    with pytest.raises(PeltError) as excinfo:
        load_superglue("wic", tmp_path, BOTH)
    assert f"(also looked in {tmp_path / 'superglue'})" in one_line(excinfo)


def test_task_folder_of_another_task(superglue_dir: Path) -> None:
    with pytest.raises(PeltError) as excinfo:
        load_superglue("boolq", superglue_dir / "COPA", BOTH)
    message = one_line(excinfo)
    assert "looks like the COPA folder but task boolq was requested" in message
    assert "point --data-dir at the BoolQ folder or its parent" in message


def test_missing_split_file(tmp_path: Path) -> None:
    # The local BoolQ download has only val.jsonl.
    task_dir = write_task(tmp_path, "BoolQ", {"val.jsonl": TINY["BoolQ"]["val.jsonl"]})
    assert len(load_superglue("boolq", tmp_path, ["validation"])["validation"]) == 1
    with pytest.raises(PeltError) as excinfo:
        load_superglue("boolq", tmp_path, BOTH)
    message = one_line(excinfo)
    assert f"split file {task_dir / 'train.jsonl'} not found" in message
    assert "the train split of BoolQ must be in train.jsonl" in message
    assert "GLUE TSV" not in message


def test_glue_folder_given_for_superglue_rte(tmp_path: Path) -> None:
    write_task(tmp_path, "RTE", {"train.tsv": "index\tsentence1\tsentence2\tlabel\n",
                                 "dev.tsv": "index\tsentence1\tsentence2\tlabel\n"})
    with pytest.raises(PeltError) as excinfo:
        load_superglue("superglue-rte", tmp_path, BOTH)
    assert "holds GLUE TSV files, SuperGLUE needs the official JSONL files" in one_line(excinfo)


# ---------------------------------------------------------------------------------------------------
# Local loading: bad files


def broken(tmp_path: Path, folder: str, val_text: str) -> Path:
    """A task folder whose val.jsonl is ``val_text``; returns the file's path."""
    return write_task(tmp_path, folder, {"val.jsonl": val_text}) / "val.jsonl"


@pytest.mark.parametrize(
    ("folder", "task", "text", "expected"),
    [
        ("CB", "cb", TINY["CB"]["train.jsonl"] + '{"premise": "a", "hypothesis": "b",\n',
         ":3: not valid JSON"),
        ("RTE", "superglue-rte", "[1, 2]\n", ":1: expected a JSON object, got list"),
        ("COPA", "copa", '"just a string"\n', ":1: expected a JSON object, got str"),
    ],
)
def test_bad_json_lines(tmp_path: Path, folder: str, task: str, text: str, expected: str) -> None:
    path = broken(tmp_path, folder, text)
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, tmp_path, ["validation"])
    message = one_line(excinfo)
    assert f"{path}{expected}" in message
    assert f"the file must be the official SuperGLUE {folder} JSONL" in message


def multirc_line(**answer: Any) -> dict[str, Any]:
    return {"idx": 0, "version": 1.1, "passage": {"text": "P.", "questions": [
        {"question": "Q?", "idx": 0, "answers": [answer]}]}}


@pytest.mark.parametrize(
    ("folder", "task", "obj", "field"),
    [
        ("CB", "cb", {"premise": "p", "label": "neutral", "idx": 0}, "'hypothesis'"),
        ("WiC", "wic", {"word": "w", "sentence1": "a", "sentence2": "b", "label": True}, "'idx'"),
        ("MultiRC", "multirc", multirc_line(idx=0, label=1), "'passage.questions[0].answers[0].text'"),
        ("MultiRC", "multirc", {"idx": 0, "version": 1.1, "passage": {"text": "P."}},
         "'passage.questions'"),
        ("ReCoRD", "record", {"idx": 0, "passage": {"text": "Ann.", "entities": [{"start": 0}]}, "qas": []},
         "'passage.entities[0].end'"),
        ("ReCoRD", "record", {"idx": 0, "passage": {"text": "Ann.", "entities": []}}, "'qas'"),
    ],
)
def test_missing_field(tmp_path: Path, folder: str, task: str, obj: dict[str, Any], field: str) -> None:
    path = broken(tmp_path, folder, jsonl(obj))
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, tmp_path, ["validation"])
    message = one_line(excinfo)
    assert f"{path}:1: missing field {field}" in message
    assert f"the file must be the official SuperGLUE {folder} JSONL" in message


@pytest.mark.parametrize(
    ("folder", "task", "obj", "expected"),
    [
        ("BoolQ", "boolq", {"question": 5, "passage": "p", "idx": 0, "label": True},
         "field 'question' must be a string, got int"),
        ("CB", "cb", {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": "0"},
         "field 'idx' must be an integer, got str"),
        ("CB", "cb", {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": True},
         "field 'idx' must be an integer, got bool"),
        ("MultiRC", "multirc", {"idx": 0, "passage": {"text": "P.", "questions": {}}},
         "field 'passage.questions' must be a list, got dict"),
        ("MultiRC", "multirc", {"idx": 0, "passage": {"text": "P.", "questions": ["Q?"]}},
         "passage.questions[0] must be an object"),
        ("MultiRC", "multirc", {"idx": 0, "passage": {"text": "P.", "questions": []}},
         "passage.questions is empty"),  # its rows would vanish without a word
        ("MultiRC", "multirc", {"idx": 0, "passage": {"text": "P.", "questions": [
            {"question": "Q?", "idx": 0, "answers": []}]}}, "passage.questions[0].answers is empty"),
    ],
)
def test_wrongly_typed_field(tmp_path: Path, folder: str, task: str, obj: dict[str, Any],
                             expected: str) -> None:
    path = broken(tmp_path, folder, jsonl(obj))
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, tmp_path, ["validation"])
    assert f"{path}:1: {expected}" in one_line(excinfo)


@pytest.mark.parametrize(
    ("folder", "task", "value", "allowed"),
    [
        ("BoolQ", "boolq", "yes", 'false, true, 0, 1, "False", "True"'),
        ("BoolQ", "boolq", "true", 'false, true, 0, 1, "False", "True"'),
        ("WiC", "wic", 2, 'false, true, 0, 1, "False", "True"'),
        ("CB", "cb", "Entails", '0, 1, 2, "entailment", "contradiction", "neutral"'),
        ("CB", "cb", True, '0, 1, 2, "entailment", "contradiction", "neutral"'),
        ("RTE", "superglue-rte", -1, '0, 1, "entailment", "not_entailment"'),
        ("COPA", "copa", "1", '0, 1, "choice1", "choice2"'),
        ("COPA", "copa", 1.0, '0, 1, "choice1", "choice2"'),
        ("COPA", "copa", None, '0, 1, "choice1", "choice2"'),
    ],
)
def test_unknown_label(tmp_path: Path, folder: str, task: str, value: Any, allowed: str) -> None:
    second = json.loads(TINY[folder]["val.jsonl"])
    second["label"] = value
    path = broken(tmp_path, folder, TINY[folder]["val.jsonl"] + jsonl(second))
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, tmp_path, ["validation"])
    message = one_line(excinfo)
    assert f"{path}:2: unknown label {value!r} for task {task}; allowed values: {allowed}" in message


def test_unknown_multirc_answer_label(tmp_path: Path) -> None:
    path = broken(tmp_path, "MultiRC", jsonl(multirc_line(text="a", idx=0, label=2)))
    with pytest.raises(PeltError) as excinfo:
        load_superglue("multirc", tmp_path, ["validation"])
    assert f"{path}:1: unknown label 2 for task multirc" in one_line(excinfo)


def test_copa_question_must_be_cause_or_effect(tmp_path: Path) -> None:
    line = json.loads(TINY["COPA"]["val.jsonl"])
    line["question"] = "reason"
    path = broken(tmp_path, "COPA", jsonl(line))
    with pytest.raises(PeltError) as excinfo:
        load_superglue("copa", tmp_path, ["validation"])
    assert f"{path}:1: field 'question' is 'reason'; COPA questions must be 'cause' or 'effect'" \
        in one_line(excinfo)


def record_line(**changes: Any) -> dict[str, Any]:
    line = json.loads(TINY["ReCoRD"]["val.jsonl"])
    qa = line["qas"][0]
    for key, value in changes.items():
        if key == "entities":
            line["passage"]["entities"] = value
        elif value is None:
            del qa[key]
        else:
            qa[key] = value
    return line


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"query": "Ann met Bob."}, "qas[0].query has no @placeholder"),
        ({"entities": [{"start": 8, "end": 12}]},
         "passage.entities[0] span [8, 12] is outside the passage (length 12)"),
        ({"entities": [{"start": 3, "end": 2}]}, "passage.entities[0] span [3, 2] is outside"),
        ({"answers": [{"start": 8, "end": 10}]}, "missing field 'qas[0].answers[0].text'"),
    ],
)
def test_bad_record_line(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    path = broken(tmp_path, "ReCoRD", jsonl(record_line(**changes)))
    with pytest.raises(PeltError) as excinfo:
        load_superglue("record", tmp_path, ["validation"])
    assert f"{path}:1: {expected}" in one_line(excinfo)


@pytest.mark.parametrize(
    ("folder", "task", "text", "what"),
    [
        ("CB", "cb", jsonl({"premise": "p", "hypothesis": "h", "idx": 0}), "no 'label' field"),
        ("MultiRC", "multirc", jsonl(multirc_line(text="a", idx=0)),
         "no 'passage.questions[0].answers[0].label' field"),
        ("ReCoRD", "record", jsonl(record_line(answers=None)), "qas[0] has no 'answers' field"),
        ("ReCoRD", "record", jsonl(record_line(answers=[])), "qas[0].answers is empty"),
    ],
)
def test_unlabeled_test_file(tmp_path: Path, folder: str, task: str, text: str, what: str) -> None:
    path = broken(tmp_path, folder, text)
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, tmp_path, ["validation"])
    message = one_line(excinfo)
    assert f"{path}:1: {what} (an unlabeled test file?)" in message
    assert "only labeled splits can be used" in message


@pytest.mark.parametrize(
    ("folder", "task", "text", "expected"),
    [
        ("CB", "cb", "", "is empty; expected the official SuperGLUE CB JSONL"),
        ("WiC", "wic", "\n  \n", "is empty; expected the official SuperGLUE WiC JSONL"),
        ("ReCoRD", "record", jsonl({"idx": 0, "passage": {"text": "P.", "entities": []}, "qas": []}),
         "has no examples; expected the official SuperGLUE ReCoRD JSONL"),
    ],
)
def test_file_without_examples(tmp_path: Path, folder: str, task: str, text: str, expected: str) -> None:
    path = broken(tmp_path, folder, text)
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, tmp_path, ["validation"])
    assert f"{path} {expected}" in one_line(excinfo)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = write_task(tmp_path, "CB", {"val.jsonl": ""}) / "val.jsonl"
    path.write_bytes(b'{"premise": "caf\xe9", "hypothesis": "h", "label": 0, "idx": 0}\n')
    with pytest.raises(PeltError) as excinfo:
        load_superglue("cb", tmp_path, ["validation"])
    assert f"{path}: not valid UTF-8" in one_line(excinfo)


# ---------------------------------------------------------------------------------------------------
# Hub loading (stubbed: no network)

STRING = datasets.Value("string")
INT32 = datasets.Value("int32")


def hub_split(features: dict[str, Any], data: dict[str, list]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def hub_simple(task: str, split: str, unlabeled: bool = False) -> datasets.Dataset:
    """A hub split built from the expected rows, with the hub's extra columns (WiC offsets)."""
    expected = EXPECTED[task][split]
    fields = [name for name in COLUMNS[task] if name not in ("label", "idx")]
    features: dict[str, Any] = {name: STRING for name in fields}
    data: dict[str, list] = {name: [row[name] for row in expected] for name in fields}
    if task == "wic":
        for extra in ("start1", "start2", "end1", "end2"):
            features[extra] = INT32
            data[extra] = [0] * len(expected)
    features["idx"] = INT32
    data["idx"] = [row["idx"] for row in expected]
    features["label"] = datasets.ClassLabel(names=LABELS[task])
    data["label"] = [-1 if unlabeled else row["label"] for row in expected]
    return hub_split(features, data)


def hub_multirc(split: str, unlabeled: bool = False) -> datasets.Dataset:
    expected = EXPECTED["multirc"][split]
    return hub_split(
        {"paragraph": STRING, "question": STRING, "answer": STRING,
         "idx": {"paragraph": INT32, "question": INT32, "answer": INT32},
         "label": datasets.ClassLabel(names=["False", "True"])},
        {"paragraph": [row["paragraph"] for row in expected],
         "question": [row["question"] for row in expected],
         "answer": [row["answer"] for row in expected],
         "idx": [{"paragraph": row["paragraph_idx"], "question": row["question_idx"],
                  "answer": row["answer_idx"]} for row in expected],
         "label": [-1 if unlabeled else row["label"] for row in expected]},
    )


def hub_record(split: str, unlabeled: bool = False) -> datasets.Dataset:
    """Hub ReCoRD: entities is an unordered set, entity_spans (exclusive ends) is in passage order."""
    line = json.loads(TINY["ReCoRD"]["train.jsonl" if split == "train" else "val.jsonl"])
    text = line["passage"]["text"]
    spans = sorted(line["passage"]["entities"], key=lambda span: span["start"])
    span_columns = {"text": [text[s["start"]:s["end"] + 1] for s in spans],
                    "start": [s["start"] for s in spans], "end": [s["end"] + 1 for s in spans]}
    qas = line["qas"]
    return hub_split(
        {"passage": STRING, "query": STRING, "entities": datasets.Sequence(STRING),
         "entity_spans": datasets.Sequence({"text": STRING, "start": INT32, "end": INT32}),
         "answers": datasets.Sequence(STRING), "idx": {"passage": INT32, "query": INT32}},
        {"passage": [text] * len(qas), "query": [qa["query"] for qa in qas],
         "entities": [sorted(set(span_columns["text"]), reverse=True)] * len(qas),
         "entity_spans": [span_columns] * len(qas),
         "answers": [[] if unlabeled else sorted({a["text"] for a in qa["answers"]}) for qa in qas],
         "idx": [{"passage": line["idx"], "query": qa["idx"]} for qa in qas]},
    )


def hub_dataset(task: str) -> datasets.DatasetDict:
    """train, validation and an unlabeled test split, as ``aps/super_glue`` has them."""
    build = {"multirc": hub_multirc, "record": hub_record}.get(task)

    def split(name: str, unlabeled: bool = False) -> datasets.Dataset:
        return build(name, unlabeled) if build else hub_simple(task, name, unlabeled)

    return datasets.DatasetDict({"train": split("train"), "validation": split("validation"),
                                 "test": split("validation", unlabeled=True)})


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    configs = {"rte": "superglue-rte"}

    def fake_load(path: str, name: str, **kwargs: Any) -> datasets.DatasetDict:
        calls.append((path, name))
        return hub_dataset(configs.get(name, name))

    monkeypatch.setattr(superglue_module.datasets, "load_dataset", fake_load)
    return calls


@pytest.mark.parametrize("task", list(EXPECTED))
def test_hub_rows_match_local_rows(fake_hub: list[tuple[str, str]], task: str) -> None:
    data = load_superglue(task, None, BOTH)
    assert fake_hub == [("aps/super_glue", "rte" if task == "superglue-rte" else task)]
    assert list(data) == ["train", "validation"]  # the hub's test split is left out
    for split, expected in EXPECTED[task].items():
        assert data[split].features == superglue_features(task)
        assert rows(data[split]) == expected


def test_hub_requested_splits_only(fake_hub: list[tuple[str, str]]) -> None:
    data = load_superglue("wic", None, ["validation"])
    assert list(data) == ["validation"] and data["validation"].column_names == COLUMNS["wic"]


def test_hub_test_split_is_refused(fake_hub: list[tuple[str, str]]) -> None:
    with pytest.raises(PeltError) as excinfo:
        load_superglue("boolq", None, ["test"])
    assert "only labeled splits can be used" in one_line(excinfo)
    assert fake_hub == []  # refused before touching the hub


@pytest.mark.parametrize("task", ["cb", "multirc", "record"])
def test_hub_unlabeled_rows_are_refused(monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    hub = hub_dataset(task)
    hub["validation"] = hub["test"]  # labels -1 (ReCoRD: no answers), as in the hub's test split

    monkeypatch.setattr(superglue_module.datasets, "load_dataset", lambda *args, **kwargs: hub)
    assert len(load_superglue(task, None, ["train"])["train"]) == len(EXPECTED[task]["train"])
    with pytest.raises(PeltError) as excinfo:
        load_superglue(task, None, BOTH)
    message = one_line(excinfo)
    assert f"hub split validation of aps/super_glue/{task} has" in message
    assert "unlabeled" in message and "only labeled splits" in message


def test_hub_failure_becomes_pelt_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> datasets.DatasetDict:
        raise ConnectionError("Couldn't reach 'aps/super_glue' on the Hub (OfflineModeIsEnabled)\nretry")

    monkeypatch.setattr(superglue_module.datasets, "load_dataset", unreachable)
    with pytest.raises(PeltError) as excinfo:
        load_superglue("superglue-rte", None, BOTH)
    message = one_line(excinfo)
    assert "could not load superglue-rte from the hub (aps/super_glue" in message
    assert "ConnectionError: Couldn't reach 'aps/super_glue' on the Hub (OfflineModeIsEnabled) retry" \
        in message
    assert message.endswith("pass --data-dir pointing at a local SuperGLUE folder instead")


def test_hub_with_an_unexpected_layout_becomes_pelt_error(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.DatasetDict({"train": hub_simple("cb", "train")})  # no validation split
    monkeypatch.setattr(superglue_module.datasets, "load_dataset", lambda *args, **kwargs: hub)
    with pytest.raises(PeltError) as excinfo:
        load_superglue("cb", None, BOTH)
    assert "could not load cb from the hub (aps/super_glue" in one_line(excinfo)


# ---------------------------------------------------------------------------------------------------
# Real data (PELT_SUPERGLUE_DIR points at a SuperGLUE folder)

REAL_ROWS = {
    "boolq": {"validation": 3270},
    "cb": {"train": 250, "validation": 56},
    "copa": {"train": 400, "validation": 100},
    "superglue-rte": {"train": 2490, "validation": 277},
    "multirc": {"train": 27243, "validation": 4848},
}
REAL_MULTIRC = {"train": (5131, 456), "validation": (953, 83)}  # (questions, paragraphs)


def test_real_superglue_row_counts() -> None:
    root = os.environ.get("PELT_SUPERGLUE_DIR") or str(SHARED_DATA / "superglue")  # beside the clone, as in CI
    if not Path(root).is_dir():
        pytest.skip("set PELT_SUPERGLUE_DIR to a SuperGLUE folder to run this test")
    present = [task for task in REAL_ROWS if (Path(root) / SUPERGLUE_TASKS[task]).is_dir()]
    if not present:
        pytest.skip(f"no known SuperGLUE task folder in {root}")
    for task in present:
        expected = REAL_ROWS[task]
        data = load_superglue(task, root, list(expected))
        assert {split: len(ds) for split, ds in data.items()} == expected, task
        for split, ds in data.items():
            assert ds.features == superglue_features(task)
            assert set(ds["label"]) == set(range(len(LABELS[task]))), task  # every class occurs
            if task == "multirc":
                questions = set(zip(ds["paragraph_idx"], ds["question_idx"]))
                assert (len(questions), len(set(ds["paragraph_idx"]))) == REAL_MULTIRC[split]
