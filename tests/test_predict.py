"""`pelt predict`: answers equal to each adapter loaded alone, several tasks per batch, and bad input refused."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_bad_input, perturb_trainable, run

import pelt
from pelt.methods import make_config
from pelt.models import load_pretrained
from pelt.tasks import get_task
from pelt.tasks.formats import copa_choices, encoder_segments, t5_input

LABELS = {"sst2": ["negative", "positive"], "mrpc": ["not_equivalent", "equivalent"], "stsb": [],
          "copa": ["choice1", "choice2"], "rte": ["entailment", "not_entailment"],
          "cb": ["entailment", "contradiction", "neutral"], "record": []}
KINDS = {"copa": "multiple-choice"}


def make_adapter(folder: Path, model_dir: Path, task: str, method: str, seed: int, *, scale: float = 1.0,
                 **options) -> torch.nn.Module:
    """An adapter as `pelt train` writes it (metadata included), with trained-looking weights."""
    spec = get_task(task)
    text_to_text = "t5" in model_dir.name
    kind = "text-to-text" if text_to_text else KINDS.get(task, "sequence-classification")
    torch.manual_seed(seed)
    model, _ = load_pretrained(str(model_dir), spec.num_labels, label_names=LABELS[task] or None, kind=kind)
    pelt.apply_method(model, make_config(method, **options))
    perturb_trainable(model, seed=seed)
    if scale != 1.0:
        with torch.no_grad():
            for name in model.pelt_state.trainable:
                model.get_parameter(name).mul_(scale)
    pelt.save_adapter(model, folder, metadata={"task": task, "label_names": LABELS[task], "max_length": 24,
                                               "formulation": kind, "model": str(model_dir)})
    return model.eval()


@pytest.fixture
def adapters(tmp_path: Path, tiny_model_dir: Path) -> dict[str, tuple[Path, torch.nn.Module]]:
    made = {}
    for task, method, options in (("sst2", "hadamard", {}), ("mrpc", "lora", {}), ("stsb", "bitfit", {}),
                                  ("copa", "compacter", {"bottleneck": 8})):
        folder = tmp_path / f"{task}-adapter"
        made[task] = (folder, make_adapter(folder, tiny_model_dir, task, method, seed=len(made) + 1, **options))
    return made


def expected(model: torch.nn.Module, tokenizer, task: str, example: dict) -> dict:
    """The answer computed from the adapter loaded alone, one example at a time."""
    spec = get_task(task)
    with torch.no_grad():
        if task == "copa":
            texts = copa_choices(spec, example)
            enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], truncation=True, max_length=24,
                            padding=True, return_tensors="pt")
            logits = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits[0]
        else:
            enc = tokenizer(*encoder_segments(spec, example), truncation=True, max_length=24, return_tensors="pt")
            logits = model(**enc).logits[0]
    if task == "stsb":
        return {"score": float(logits[0])}
    return {"label": LABELS[task][int(logits.argmax())],
            "probabilities": dict(zip(LABELS[task], torch.softmax(logits, -1).tolist()))}


def assert_answers_match(got: dict, want: dict) -> None:
    assert set(got) - {"task", "id"} == set(want)
    if "score" in want:
        assert abs(got["score"] - want["score"]) < 1e-5
        return
    assert got["label"] == want["label"]
    for label, p in want["probabilities"].items():
        assert abs(got["probabilities"][label] - p) < 1e-5


EXAMPLES = {
    "sst2": [{"sentence": "w5 w6 w7 w8"}, {"sentence": "w60 w61"}, {"sentence": " ".join(["w70"] * 40)}],
    "mrpc": [{"sentence1": "w5 w9 w10", "sentence2": "w11 w12"}, {"sentence1": "w50", "sentence2": "w51 w52 w53"}],
    "stsb": [{"sentence1": "w20 w21", "sentence2": "w20 w22"}],
    "copa": [{"premise": "w30 w31", "choice1": "w32", "choice2": "w33 w34", "question": "cause"},
             {"premise": "w40", "choice1": "w41 w42", "choice2": "w43", "question": "effect"}],
}


def test_several_adapters_in_one_file_match_each_adapter_alone(
        capsys: pytest.CaptureFixture, tmp_path: Path, adapters: dict, tiny_model_dir: Path, tokenizer) -> None:
    lines = [{"id": f"{task}-{i}", "task": task, **ex} for task, exs in EXAMPLES.items() for i, ex in enumerate(exs)]
    lines = lines[::2] + lines[1::2]  # tasks interleaved in the file
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = ["predict", "--input", source, "--output", tmp_path / "out.jsonl", "--batch-size", "3"]
    for folder, _ in adapters.values():
        argv += ["--adapter", folder]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    answers = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == [line["id"] for line in lines]  # input order, though batched by length
    for line, answer in zip(lines, answers):
        assert answer["task"] == line["task"]
        example = {k: v for k, v in line.items() if k not in ("id", "task")}
        assert_answers_match(answer, expected(adapters[line["task"]][1], tokenizer, line["task"], example))


def test_one_adapter_reads_tsv_and_stdin_and_writes_stdout(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                            adapters: dict, tokenizer, monkeypatch) -> None:
    folder, model = adapters["mrpc"]
    rows = EXAMPLES["mrpc"]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("sentence1\tsentence2\n" + "".join(f"{r['sentence1']}\t{r['sentence2']}\n" for r in rows))
    rc, out, err = run(capsys, "predict", "--adapter", f"para={folder}", "--input", tsv)
    assert rc == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["task"] for a in answers] == ["para", "para"]
    for row, answer in zip(rows, answers):
        assert_answers_match(answer, expected(model, tokenizer, "mrpc", row))

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(tsv.read_bytes())))
    rc, again, err = run(capsys, "predict", "--adapter", folder, "--input", "-")
    assert rc == 0, err
    assert [json.loads(line)["label"] for line in again.splitlines()] == [a["label"] for a in answers]


def test_text_to_text_tasks_generate_with_their_own_adapters(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                             tiny_t5_dir: Path) -> None:
    from pelt.models import load_pretrained as load

    rte = make_adapter(tmp_path / "rte", tiny_t5_dir, "rte", "lora", seed=1, scale=30.0)
    cb = make_adapter(tmp_path / "cb", tiny_t5_dir, "cb", "prompt-tuning", seed=2, num_tokens=3)
    _, tokenizer = load(str(tiny_t5_dir), 0, kind="text-to-text")
    examples = [{"task": "rte", "sentence1": "w1 w2", "sentence2": "w3"},
                {"task": "cb", "premise": "w4 w5", "hypothesis": "w6"},
                {"task": "rte", "sentence1": "w7", "sentence2": "w8 w9 w10"}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in examples))
    rc, out, err = run(capsys, "predict", "--adapter", tmp_path / "rte", "--adapter", tmp_path / "cb",
                       "--input", source, "--num-beams", "2")
    assert rc == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    for example, answer in zip(examples, answers):
        model, spec = (rte, get_task("rte")) if example["task"] == "rte" else (cb, get_task("cb"))
        enc = tokenizer(t5_input(spec, example), return_tensors="pt", truncation=True, max_length=24)
        with torch.no_grad():
            # the longest label (one word here), its end of sequence and one token more
            ids = model.generate(**enc, num_beams=2, do_sample=False, max_new_tokens=3)
        text = tokenizer.decode(ids[0], skip_special_tokens=True).strip()
        assert answer["text"] == text
        assert answer["label"] == (text if text in spec.label_names else None)


def test_bad_input_is_one_line_naming_file_and_line(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                    adapters: dict, tiny_model_dir: Path) -> None:
    sst2, mrpc = adapters["sst2"][0], adapters["mrpc"][0]
    output = tmp_path / "out.jsonl"

    def refused(content: bytes, *facts: str, folders: tuple[Path, ...] = (sst2, mrpc), name: str = "in.jsonl",
                extra: tuple = ()) -> None:
        source = tmp_path / name
        source.write_bytes(content)
        argv = ["predict", "--input", source, "--output", output, *extra]
        for folder in folders:
            argv += ["--adapter", folder]
        assert_bad_input(capsys, argv, *facts)
        assert not output.exists() and not list(tmp_path.glob(".out.jsonl*")), "no output may be left behind"

    ok = b'{"task": "sst2", "sentence": "w5"}\n'
    refused(ok + b'{"task": "mrpc", "sentence1": "w5"}\n', "in.jsonl line 2", "missing field 'sentence2'",
            "task mrpc")
    refused(b'{"task": "qnli", "question": "w5"}\n', "in.jsonl line 1", "unknown task 'qnli'", "sst2, mrpc")
    refused(ok + b"\n" + ok, "in.jsonl line 2", "empty line")
    refused(ok + ok + b'{"task": "sst2", "sentence": "\xff\xfe"}\n', "in.jsonl line 3", "not UTF-8")
    refused(b'{"sentence": "w5"}\n', "in.jsonl line 1", "no 'task' field", "sst2, mrpc")
    refused(ok + b'{"task": "sst2", "sentence": "w5"\n', "in.jsonl line 2", "not valid JSON")
    refused(b'["w5"]\n', "in.jsonl line 1", "JSON list")
    refused(b'{"task": "sst2", "sentence": 5}\n', "line 1", "field 'sentence' must be a non-empty string")
    refused(b"sentence\tlabel\nw5\t1\nw6\n", "in.tsv line 3", "1 columns, the header has 2", folders=(sst2,),
            name="in.tsv")
    refused(b'{"task": ["sst2"], "sentence": "w5"}\n', "line 1", "'task' field must be a task name")
    refused(b'{"task": "sst2", "sentence": "w5", "id": NaN}\n', "line 1", "NaN is not a JSON value")
    refused(ok, "--batch-size must be at least 1", extra=("--batch-size", "0"))
    refused(ok, "--device 'gpu'", extra=("--device", "gpu"))

    full = tmp_path / "full-adapter"
    make_adapter(full, tiny_model_dir, "sst2", "full", seed=5)
    refused(ok, "full", "cannot share a backbone", folders=(full, mrpc))
    t5_like = tmp_path / "t5-adapter"  # an adapter of another base: refused after reading, nothing written
    config = json.loads((sst2 / "adapter_config.json").read_text())
    t5_like.mkdir()
    (t5_like / "adapter_model.safetensors").write_bytes((sst2 / "adapter_model.safetensors").read_bytes())
    config["base_model"]["hidden_size"] = 64
    config["task"] = "rte"
    (t5_like / "adapter_config.json").write_text(json.dumps(config))
    refused(ok, "was trained on", "hidden 64", folders=(sst2, t5_like))

    for argv, fact in ((["--output", ""], "--output is empty"), (["--output", tmp_path], "is a folder")):
        assert_bad_input(capsys, ["predict", "--adapter", sst2, "--input", tmp_path / "in.jsonl", *argv], fact)
    assert_bad_input(capsys, ["predict", "--adapter", sst2, "--input", tmp_path], "is a folder")

    output.write_text("kept\n")  # an existing answer file is kept unless --overwrite
    assert_bad_input(capsys, ["predict", "--adapter", sst2, "--input", tmp_path / "in.jsonl", "--output", output],
                     "exists", "--overwrite")
    assert output.read_text() == "kept\n"
    (tmp_path / "in.jsonl").write_bytes(ok)
    rc, _, err = run(capsys, "predict", "--adapter", sst2, "--input", tmp_path / "in.jsonl", "--output", output,
                     "--overwrite")
    assert rc == 0, err
    assert json.loads(output.read_text())["task"] == "sst2"


def test_two_adapters_of_one_task_must_be_named(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                adapters: dict, tiny_model_dir: Path) -> None:
    first = adapters["sst2"][0]
    second = tmp_path / "sst2-other"
    make_adapter(second, tiny_model_dir, "sst2", "ia3", seed=9)
    source = tmp_path / "in.jsonl"
    source.write_text('{"task": "b", "sentence": "w5"}\n')
    assert_bad_input(capsys, ["predict", "--adapter", first, "--adapter", second, "--input", source],
                     "both for task 'sst2'", "NAME=DIR")
    rc, out, err = run(capsys, "predict", "--adapter", f"a={first}", "--adapter", f"b={second}", "--input", source)
    assert rc == 0, err
    assert json.loads(out)["task"] == "b"


def test_record_answers_with_the_best_scoring_entity(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                     tiny_model_dir: Path, tokenizer) -> None:
    from pelt.tasks.formats import record_candidates

    model = make_adapter(tmp_path / "record", tiny_model_dir, "record", "hadamard", seed=4)
    example = {"passage": "w5 w6 w7 w8", "query": "w9 @placeholder w10", "entities": ["w11", "w12 w13", "w14"]}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(example) + "\n")
    rc, out, err = run(capsys, "predict", "--adapter", tmp_path / "record", "--input", source)
    assert rc == 0, err
    answer = json.loads(out)
    scores = {}
    for texts, entity, _ in record_candidates(get_task("record"), {**example, "answers": []}):
        with torch.no_grad():
            logits = model(**tokenizer(*texts, truncation=True, max_length=24, return_tensors="pt")).logits[0]
        scores[entity] = float(logits[1] - logits[0])
    assert answer["answer"] == max(scores, key=scores.get)
    assert answer["scores"] == pytest.approx(scores, abs=1e-5)
    source.write_text(json.dumps({**example, "entities": []}) + "\n")
    assert_bad_input(capsys, ["predict", "--adapter", tmp_path / "record", "--input", source],
                     "line 1", "'entities' must be a non-empty list")


def test_batches_are_sorted_by_length_and_keep_one_generation_budget() -> None:
    from pelt.multitask.predict import _batches

    encoded = [{"length": n, "target_tokens": b} for n, b in ((5, 3), (9, 3), (7, 4), (2, 3), (8, 4), (6, 3))]
    batches = _batches(encoded, 3)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) <= 3 and len({encoded[i]["target_tokens"] for i in batch}) == 1
        assert [encoded[i]["length"] for i in batch] == sorted((encoded[i]["length"] for i in batch), reverse=True)
    assert [[encoded[i]["length"] for i in b] for b in batches] == [[9, 6, 5], [2], [8, 7]]
