"""Faults a user meets: never exit 0 after training garbage, never lose a run, one line for every bad input.

Each test goes through the CLI where the user meets the fault (real processes where two must run at once).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_bad_input, run, separable_rows, tiny_model, write_sst2
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

import pelt
import pelt.adapter_files
from pelt.cli import EXIT_INTERRUPTED

SRC = Path(pelt.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def train_args(model: Path, data: Path, output: Path, *extra: object) -> list[object]:
    return ["train", "--model", model, "--task", "sst2", "--data-dir", data, "--output-dir", output,
            "--epochs", 1, "--head-epochs", 0, "--batch-size", 8, "--lr", 0.05, "--max-length", 32, *extra]


def trained_run(capsys: pytest.CaptureFixture, model: Path, data: Path, output: Path, *extra: object) -> bytes:
    rc, _, err = run(capsys, *train_args(model, data, output, *extra))
    assert rc == 0, err
    return (output / "results.json").read_bytes()


def pelt_process(*argv: object, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "pelt.cli", *map(str, argv)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def assert_error_after_training_started(capsys: pytest.CaptureFixture, argv: list[object], *facts: str) -> str:
    """rc 2 and one 'pelt: error: ...' line of its own (the progress bars before it closed), no traceback."""
    rc, out, err = run(capsys, *argv)
    assert "Traceback" not in out + err
    assert rc == 2, (rc, out, err)
    errors = [line for line in err.split("\n") if "pelt: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("pelt: error: "), err
    assert err.endswith(errors[0] + "\n"), "nothing is drawn after the error"
    for fact in facts:
        assert fact in errors[0], f"{fact!r} not in {errors[0]!r}"
    return errors[0]


def strict_json(path: Path) -> object:
    """Parse as a strict reader would: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- 1. one run per output folder ---------------------------------------------------------------------------


def test_a_second_training_into_a_busy_folder_is_refused_and_the_first_finishes(tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "out"
    first = pelt_process(*train_args(tiny_model_dir, tiny_glue, out))
    try:
        for line in first.stdout:  # the parameter table is printed once the run holds its folder
            if line.startswith("trainable parameters"):
                break
        else:
            pytest.fail(f"the first run ended early: {first.stderr.read()}")
        first.send_signal(signal.SIGSTOP)  # frozen while it holds the folder: no race on who is faster
        second = pelt_process(*train_args(tiny_model_dir, tiny_glue, out, "--seed", 7))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert err.strip().splitlines() == [f"pelt: error: {out} is in use: another pelt train is writing into it; "
                                            "wait for it to end, or pass another --output-dir"]
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
    assert json.loads((out / "results.json").read_text())["train_config"]["seed"] == 42  # the first run's


def test_a_killed_run_leaves_no_stale_lock(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "out"
    victim = pelt_process(*train_args(tiny_model_dir, tiny_glue, out))
    for line in victim.stdout:
        if line.startswith("trainable parameters"):
            break
    victim.kill()  # kill -9 while it holds the folder
    victim.wait(timeout=60)
    trained_run(capsys, tiny_model_dir, tiny_glue, out, "--overwrite")


# ---- 2. non-finite values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "fact"), [
    (["--lr", "inf"], "learning_rate must be a finite number, got inf"),
    (["--lr", "nan"], "learning_rate must be a finite number, got nan"),
    (["--epochs", "inf"], "epochs must be a finite number, got inf"),
    (["--warmup-ratio", "nan"], "warmup_ratio must be a finite number, got nan"),
    (["--head-lr=-inf"], "head_learning_rate must be a finite number, got -inf"),
    (["--method", "lora", "--alpha", "nan"], "alpha must be a finite number (an option of method 'lora'), got nan"),
    (["--method", "adapter", "--init-std", "inf"], "init_std must be a finite number"),
    (["--weight-decay=-1"], "weight_decay must be >= 0, got -1.0"),
])
def test_non_finite_and_negative_options_are_refused(capsys, tiny_model_dir, tiny_glue, tmp_path, flags, fact):
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out", *flags), fact)
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_a_diverging_run_stops_at_the_step_and_saves_nothing(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "out"
    line = assert_error_after_training_started(capsys, train_args(tiny_model_dir, tiny_glue, out, "--lr", "1e38"),
                                               "training diverged at step", "(method stage, learning rate 1e+38)", "lower the learning rate")
    step = int(line.split("at step ")[1].split()[0])
    assert 1 <= step < 4  # within the first epoch (4 steps), before its evaluation
    assert not (out / "adapter").exists() and not (out / "last").exists() and not (out / "results.json").exists()


def test_a_non_finite_model_is_never_saved(tiny_model_dir, tmp_path):
    model = pelt.apply_method(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), pelt.HadamardConfig())
    name = model.pelt_state.added[0]
    with torch.no_grad():
        model.get_parameter(name)[0] = float("nan")
    with pytest.raises(pelt.PeltError, match=f"hold NaN or infinite values \\({name}, ...\\); the training diverged"):
        pelt.save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_results_files_are_strict_json(tmp_path):
    from pelt.files import write_json

    write_json(tmp_path / "results.json", {"pearson": math.nan, "history": [math.inf, 0.5]})
    assert strict_json(tmp_path / "results.json") == {"pearson": None, "history": [None, 0.5]}


def test_an_evaluation_that_is_not_a_number_ranks_last_but_still_gives_a_best_checkpoint(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from pelt.train.trainer import _CheckpointCallback

    model = pelt.apply_method(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), pelt.HadamardConfig())
    callback = _CheckpointCallback(model, tmp_path, "eval_pearson", {"task": "stsb"})
    for epoch, value in ((1, math.nan), (2, -0.5), (3, math.nan)):
        state = SimpleNamespace(epoch=epoch, is_world_process_zero=True)
        callback.on_evaluate(None, state, None, metrics={"eval_pearson": value})
        if epoch == 1:
            assert callback.best_epoch["epoch"] == 1 and (tmp_path / "adapter").is_dir()
    assert callback.best_epoch["epoch"] == 2  # a number beats no number, later NaNs do not replace it


# ---- 3, 4. base models that would train on nothing -----------------------------------------------------------


def test_a_model_folder_without_tokenizer_files_is_refused(capsys, tiny_glue, tmp_path):
    folder = tmp_path / "no-tokenizer"
    tiny_model("bert").save_pretrained(folder)
    assert_bad_input(capsys, train_args(folder, tiny_glue, tmp_path / "out"), f"no tokenizer files in {folder}")
    assert not (tmp_path / "out").exists()


def test_a_config_that_disagrees_with_its_weights_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    config_file = tiny_model_dir / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "hidden_size": 64, "intermediate_size": 128}))
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out"),
                     f"the weights in {tiny_model_dir} do not fit its config.json", "is saved as (",
                     "the config makes it (")


def test_a_checkpoint_missing_backbone_tensors_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    weights = tiny_model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    dropped = "bert.encoder.layer.1.attention.self.query.weight"
    del tensors[dropped]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out"), f"lack {dropped}")


def test_a_new_task_head_is_not_a_mismatch(capsys, tiny_model_dir, tmp_path):
    """The one tensor allowed to be new or resized: a 2-label checkpoint trains a 3-label task."""
    from conftest import cb_rows, write_jsonl

    data = write_jsonl(tmp_path / "data" / "CB", {"train": cb_rows(12), "val": cb_rows(6, seed=1)})
    argv = train_args(tiny_model_dir, data.parent, tmp_path / "out")
    argv[argv.index("sst2")] = "cb"
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err


def test_a_truncated_base_model_is_one_line(capsys, tiny_model_dir, tiny_glue, tmp_path):
    weights = tiny_model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out"),
                     f"cannot read the weights in {tiny_model_dir}", "damaged or incomplete")


# ---- 5, 6. adapters used for what they are not ---------------------------------------------------------------


def _saved_adapter(model_dir: Path, folder: Path, task: str, labels: list[str]) -> Path:
    model = pelt.apply_method(AutoModelForSequenceClassification.from_pretrained(model_dir), pelt.HadamardConfig())
    return pelt.save_adapter(model, folder, metadata={"task": task, "label_names": labels, "model": str(model_dir),
                                                        "max_length": 32})


def test_evaluating_an_adapter_on_a_task_with_other_labels_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--task", "cola", "--data-dir", tiny_glue],
                     f"adapter {adapter} was trained on sst2 (labels negative, positive), but cola asks for labels "
                     "unacceptable, acceptable", "evaluate it on sst2, or train an adapter for cola")
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--task", "stsb", "--data-dir", tiny_glue],
                     "but stsb asks for a regression score")


def test_evaluating_an_adapter_on_a_task_with_the_same_labels_warns(capsys, tiny_model_dir, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "qnli", ["entailment", "not_entailment"])
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    labels = ["entailment", "not_entailment"]
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\tw{5 + i} w9\tw{6 + i}\t{labels[i % 2]}\n" for i in range(6)))
    rc, out, err = run(capsys, "eval", "--adapter", adapter, "--task", "rte", "--data-dir", tmp_path / "glue")
    assert rc == 0, err
    assert f"pelt: warning: adapter {adapter} was trained on qnli; rte has the same labels" in err
    assert out.startswith("validation: accuracy")


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x40  # a byte of the last tensor's data: the header still parses
    file.write_bytes(bytes(data))


def test_an_adapter_with_a_flipped_byte_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    _flip_last_byte(adapter / "adapter_model.safetensors")
    load_file(str(adapter / "adapter_model.safetensors"))  # still a well-formed file: only the checksum can tell
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--data-dir", tiny_glue],
                     f"{adapter / 'adapter_model.safetensors'} does not match the checksum its adapter_config.json "
                     "records")
    (tmp_path / "in.jsonl").write_text('{"sentence": "w5 w6"}\n')
    assert_bad_input(capsys, ["predict", "--adapter", adapter, "--input", tmp_path / "in.jsonl"],
                     "does not match the checksum")


def test_an_adapter_of_nan_values_is_refused_even_with_a_matching_checksum(capsys, tiny_model_dir, tiny_glue, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    weights = adapter / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, math.nan) for k, v in load_file(str(weights)).items()}, str(weights))
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["weights_sha256"] = pelt.adapter_files.weights_checksum(weights)
    config_file.write_text(json.dumps(config))
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--data-dir", tiny_glue],
                     "tensors hold NaN or infinite values", "a diverged training")


def test_adapter_files_are_readable_by_the_folder_s_readers(tiny_model_dir, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert stat.S_IMODE((adapter / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.parametrize(("change", "fact"), [
    ({"top_k": "two"}, "top_k must be an integer (an option of method 'hadamard'), got 'two'"),
    ({"layers": [0, "x"]}, "layers must be a list of integers"),
    ({"train_bias": "yes"}, "train_bias must be true or false"),
])
def test_adapter_config_values_are_type_checked_on_load(capsys, tiny_model_dir, tiny_glue, tmp_path, change, fact):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["method_config"].update(change)
    config_file.write_text(json.dumps(config))
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--data-dir", tiny_glue], fact)


def test_the_python_api_says_what_it_takes():
    with pytest.raises(pelt.PeltError, match="load_adapter takes a transformers model .*got object"):
        pelt.load_adapter(object(), "adapter")
    with pytest.raises(pelt.PeltError, match="top_k must be an integer .*got '3'"):
        pelt.HadamardConfig(top_k="3")
    with pytest.raises(pelt.PeltError, match="apply_method takes a method config"):
        pelt.apply_method(tiny_model("bert"), {"method": "hadamard"})
    with pytest.raises(pelt.PeltError, match="reading an adapter takes a folder path"):
        pelt.read_adapter_config(3)
    assert pelt.LoRAConfig(alpha=16).alpha == 16.0 and isinstance(pelt.LoRAConfig(alpha=16).alpha, float)


# ---- 7, 8. checked before anything is touched ----------------------------------------------------------------


@pytest.mark.parametrize(("method", "fact"), [
    ("hadamard", "max length 65 exceeds this model's 64 positions; use --max-length 64 or less"),
    ("lora", "max length 65 exceeds this model's 64 positions"),
    ("bitfit", "max length 65 exceeds this model's 64 positions"),
])
def test_a_max_length_beyond_the_positions_keeps_the_earlier_run(capsys, tiny_model_dir, tiny_glue, tmp_path,
                                                                  method, fact):
    out = tmp_path / "out"
    before = trained_run(capsys, tiny_model_dir, tiny_glue, out)
    argv = train_args(tiny_model_dir, tiny_glue, out, "--method", method, "--overwrite")
    argv[argv.index("--max-length") + 1] = "65"
    assert_bad_input(capsys, argv, fact)
    assert (out / "results.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "last", "results.json"]


def test_a_protocol_default_beyond_the_positions_is_cut_with_a_note(capsys, tiny_model_dir, tiny_glue, tmp_path):
    argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out")
    del argv[argv.index("--max-length"):argv.index("--max-length") + 2]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "pelt: max length 64: the task's default of 128 tokens exceeds this model's 64 positions" in out
    assert json.loads((tmp_path / "out" / "results.json").read_text())["train_config"]["max_length"] == 64


@pytest.mark.parametrize("case", ["file", "under-file", "empty"])
def test_impossible_output_folders(capsys, tiny_model_dir, tiny_glue, tmp_path, case):
    (tmp_path / "a-file").write_text("keep me\n")
    output, fact = {"file": (tmp_path / "a-file", f"--output-dir {tmp_path / 'a-file'} is a file"),
                    "under-file": (tmp_path / "a-file" / "run", f"lies under {tmp_path / 'a-file'}, which is a file"),
                    "empty": ("", "the output folder (--output-dir) is empty")}[case]
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, output), fact)
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_an_unwritable_output_folder_is_found_before_training(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the file system refuse as it would for a user
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder / ".pelt-write-test.x"))
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    trained = []
    monkeypatch.setattr("pelt.pipeline.load_splits", lambda *a, **k: trained.append(1))
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, folder / "run"),
                     f"cannot write into --output-dir {folder / 'run'}: Permission denied",
                     "choose a folder you can write to")
    assert trained == []


def test_a_full_disk_with_overwrite_keeps_the_earlier_run(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "out"
    before = trained_run(capsys, tiny_model_dir, tiny_glue, out)
    adapter_before = (out / "adapter" / "adapter_model.safetensors").read_bytes()

    def full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x00" * 8)
        raise OSError(errno.ENOSPC, "No space left on device", filename)
    monkeypatch.setattr(pelt.adapter_files, "save_file", full)
    assert_error_after_training_started(capsys, train_args(tiny_model_dir, tiny_glue, out, "--overwrite", "--seed", 7),
                                        "No space left on device", "free some space or write elsewhere")
    assert (out / "results.json").read_bytes() == before
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == adapter_before
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "last", "results.json"]


def test_an_interrupted_overwrite_puts_the_earlier_run_back(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "out"
    before = trained_run(capsys, tiny_model_dir, tiny_glue, out)
    real = pelt.adapter_files.save_file
    calls = []

    def interrupt_second(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(tensors, filename, *args, **kwargs)
    monkeypatch.setattr(pelt.adapter_files, "save_file", interrupt_second)
    rc, _, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out, "--overwrite", "--seed", 7))
    assert rc == EXIT_INTERRUPTED
    assert f"{out} holds the run it held before" in err
    assert (out / "results.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "last", "results.json"]


def test_a_run_killed_while_overwriting_gets_the_earlier_run_back_on_the_next_start(capsys, tiny_model_dir,
                                                                                     tiny_glue, tmp_path):
    """What a `kill -9` mid-overwrite leaves: the earlier run aside, a partial new checkpoint in place."""
    out = tmp_path / "out"
    before = trained_run(capsys, tiny_model_dir, tiny_glue, out)
    aside = out / ".pelt-replaced-run"
    aside.mkdir()
    for name in ("results.json", "adapter", "last"):
        os.replace(out / name, aside / name)
    (out / "last").mkdir()  # the killed run's partial checkpoint
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, out), f"{out} already holds a run")
    assert (out / "results.json").read_bytes() == before and not aside.exists()


# ---- 9, 10. tracebacks that became lines ---------------------------------------------------------------------


def test_params_of_an_impossible_config_is_one_line(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4,
                                  "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 100}))
    assert_bad_input(capsys, ["params", "--model", config], "impossible model configuration", "30")


def test_similarity_of_damaged_or_foreign_adapters_is_one_line(capsys, tiny_model_dir, tmp_path):
    rte = _saved_adapter(tiny_model_dir, tmp_path / "rte", "rte", ["entailment", "not_entailment"])
    cola = _saved_adapter(tiny_model_dir, tmp_path / "cola", "cola", ["unacceptable", "acceptable"])
    other = tmp_path / "other-model"
    torch.manual_seed(0)
    from conftest import tiny_config

    config = tiny_config("bert")
    config.num_hidden_layers = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(other)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            (other / name).write_bytes((tiny_model_dir / name).read_bytes())
    foreign = _saved_adapter(other, tmp_path / "foreign", "sst2", ["negative", "positive"])
    assert_bad_input(capsys, ["analyze", "similarity", "--adapters", f"rte={rte}", f"sst2={foreign}",
                              "--output-dir", tmp_path / "sim"], "adapters rte and sst2 were trained on different "
                     "base models")
    _flip_last_byte(cola / "adapter_model.safetensors")
    assert_bad_input(capsys, ["analyze", "similarity", "--adapters", f"rte={rte}", f"cola={cola}",
                              "--output-dir", tmp_path / "sim"], "does not match the checksum")


def test_bench_into_a_file_is_refused_before_measuring(capsys, tmp_path):
    (tmp_path / "table").write_text("")
    assert_bad_input(capsys, ["bench", "--methods", "hadamard", "--output-dir", tmp_path / "table"],
                     f"--output-dir {tmp_path / 'table'} is a file")


def test_tasks_with_a_missing_data_dir_exits_2_and_cells_say_why(capsys, tmp_path):
    assert_bad_input(capsys, ["tasks", "--data-dir", tmp_path / "typo"], f"--data-dir {tmp_path / 'typo'} does not exist")
    write_sst2(tmp_path / "glue", separable_rows(4), [])
    (tmp_path / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nw5 w6\t7\n")
    rc, out, err = run(capsys, "tasks", "--data-dir", tmp_path / "glue", "--task", "sst2", "--task", "cola")
    assert rc == 2 and "unknown label '7'" in err  # asked for by name: the exact fault
    rc, out, _ = run(capsys, "tasks", "--data-dir", tmp_path / "glue")
    assert rc == 0
    sst2 = next(line for line in out.splitlines() if line.startswith("sst2 "))
    assert "train 4" in sst2 and "validation unreadable (" in sst2 and "unknown label '7'" in sst2


# ---- 11. smaller -----------------------------------------------------------------------------------------------


def test_messages_name_the_real_cause(capsys, tiny_model_dir, tiny_glue, tmp_path):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    assert_bad_input(capsys, train_args(empty, tiny_glue, tmp_path / "out"), f"{empty} has no config.json")
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    assert_bad_input(capsys, ["eval", "--adapter", adapter / "adapter_config.json", "--data-dir", tiny_glue],
                     "is a file, not an adapter folder", f"pass its folder, {adapter}")
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "model": str(tmp_path / "moved-away")}))
    line = assert_bad_input(capsys, ["eval", "--adapter", adapter, "--data-dir", tiny_glue],
                            f"trained on the local model {tmp_path / 'moved-away'}, which is not on this machine",
                            "pass --model")
    assert "omit --model" not in line


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell without job control starts a job with `&`


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("started", ["foreground", "background"])
def test_a_killed_sweep_takes_its_training_with_it(tiny_model_dir, tiny_glue, tmp_path, started):
    grid = tmp_path / "grid"
    popen = {"preexec_fn": _ignore_interrupts} if started == "background" else {}
    sweep = pelt_process("sweep", "--grid-dir", grid, "--methods", "hadamard", "--tasks", "sst2", "--model",
                         tiny_model_dir, "--data-dir", tiny_glue, "--split-protocol", "standard",
                         "--train-args", "--epochs 5000 --batch-size 2 --max-length 32", **popen)  # minutes
    try:
        child = None
        deadline = time.time() + 120
        while child is None and time.time() < deadline:
            children = Path(f"/proc/{sweep.pid}/task/{sweep.pid}/children")
            pids = [int(p) for task in Path(f"/proc/{sweep.pid}/task").iterdir()
                    for p in (task / "children").read_text().split()] if children.exists() else []
            child = pids[0] if pids else None
            time.sleep(0.2)
        assert child is not None, "the sweep started no run"
        time.sleep(1.0)
        sweep.kill()
        sweep.wait(timeout=30)
        deadline = time.time() + 20  # an interrupted run ends in seconds
        while Path(f"/proc/{child}").exists() and time.time() < deadline:
            status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}/status").exists() else ""
            if "State:\tZ" in status:
                break
            time.sleep(0.2)
        status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}/status").exists() else ""
        assert not status or "State:\tZ" in status, f"pelt train {child} still runs after its sweep was killed"
    finally:
        sweep.kill()
        if child is not None and Path(f"/proc/{child}").exists():
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("text", ["nan", "inf", "ref*inf", "ref/nan", "ref*0"])
def test_a_sweep_refuses_non_finite_learning_rates_before_any_run(capsys, tmp_path, text):
    assert_bad_input(capsys, ["sweep", "--grid-dir", tmp_path / "grid", "--methods", "hadamard", "--tasks", "rte",
                              "--lrs", text], "learning rate")
    assert not (tmp_path / "grid").exists()


# ---- what a review found: every rank, every kill, every folder ---------------------------------------------------


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"RANK": "abc"}, {"RANK": "1", "WORLD_SIZE": "2"}])
def test_a_rank_variable_never_skips_the_earlier_run_check(capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path,
                                                            env):
    out = tmp_path / "out"
    before = trained_run(capsys, tiny_model_dir, tiny_glue, out)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, out), f"{out} already holds a run")
    assert (out / "results.json").read_bytes() == before


def _run_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("moment", ["moving-aside", "restoring", "saving-last", "swapping-adapter"])
def test_a_kill_at_any_moment_of_a_replacement_leaves_the_earlier_run_whole(capsys, tiny_model_dir, tiny_glue,
                                                                             tmp_path, moment):
    """The states a `kill -9` can leave, built by hand; the next run into the folder puts the earlier run back."""
    out = tmp_path / "out"
    trained_run(capsys, tiny_model_dir, tiny_glue, out)
    before = _run_files(out)
    if moment == "moving-aside":  # results.json moved, the checkpoints not yet
        (out / ".pelt-replacing-run").mkdir()
        os.replace(out / "results.json", out / ".pelt-replacing-run" / "results.json")
    elif moment == "restoring":  # the unfinished run removed, results.json and last back, adapter not yet
        (out / ".pelt-restoring-run").mkdir()
        os.replace(out / "adapter", out / ".pelt-restoring-run" / "adapter")
    elif moment == "saving-last":  # a checkpoint being written
        (out / ".last.k1ll3d").mkdir()
        (out / ".last.k1ll3d" / "adapter_model.safetensors").write_bytes(b"\x00" * 8)
    else:  # a checkpoint swap cut between its two renames
        os.replace(out / "adapter", out / ".adapter.old")
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, out), f"{out} already holds a run")
    assert _run_files(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "last", "results.json"]


def test_a_sweep_checks_train_arg_values_before_any_run(capsys, tiny_model_dir, tiny_glue, tmp_path):
    assert_bad_input(capsys, ["sweep", "--grid-dir", tmp_path / "grid", "--methods", "hadamard", "lora", "--tasks",
                              "sst2", "--model", tiny_model_dir, "--data-dir", tiny_glue,
                              "--train-args=--weight-decay=-1"],
                     "--train-args for method hadamard: weight_decay must be >= 0, got -1.0")
    assert_bad_input(capsys, ["sweep", "--grid-dir", tmp_path / "grid", "--methods", "lora", "--tasks", "sst2",
                              "--train-args=--alpha nan"], "--train-args for method lora: alpha must be a finite")
    assert not (tmp_path / "grid" / "runs").exists()


def test_a_config_with_fewer_layers_than_its_weights_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    config_file = tiny_model_dir / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "num_hidden_layers": 2}))
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out"),
                     "hold 3 layers of encoder.layer, its config.json builds 2")


def test_a_tokenizer_larger_than_the_embeddings_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    from conftest import tiny_config

    folder = tmp_path / "small-vocab"
    config = tiny_config("bert")
    config.vocab_size = 60
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).exists():
            (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    assert_bad_input(capsys, train_args(folder, tiny_glue, tmp_path / "out"),
                     f"the tokenizer in {folder} has 100 tokens but the model embeds only 60")


def test_an_empty_vocabulary_is_refused(capsys, tiny_model_dir, tiny_glue, tmp_path):
    (tiny_model_dir / "tokenizer.json").unlink()
    (tiny_model_dir / "vocab.txt").write_text("")
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out"),
                     "knows no tokens besides its special ones")


def test_a_model_folder_without_weights_says_so(capsys, tiny_model_dir, tiny_glue, tmp_path):
    (tiny_model_dir / "model.safetensors").unlink()
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out"),
                     f"{tiny_model_dir} has a config.json but no weights (model.safetensors)")


@pytest.mark.parametrize(("key", "value", "fact"), [
    ("max_length", "abc", "max_length is 'abc', not a number of tokens"),
    ("max_length", None, "max_length is None, not a number of tokens"),
    ("label_names", "negative", "label_names is 'negative', not a list of label names"),
    ("weights_sha256", None, "weights_sha256 is None, not a SHA-256 in hex"),
    ("pooling", "max", "pooling is 'max', not null or one of cls, mean"),
])
def test_recorded_adapter_values_are_type_checked(capsys, tiny_model_dir, tiny_glue, tmp_path, key, value, fact):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    config_file = adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), key: value}))
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--data-dir", tiny_glue], fact, "damaged")
    (tmp_path / "in.jsonl").write_text('{"sentence": "w5 w6"}\n')
    assert_bad_input(capsys, ["predict", "--adapter", adapter, "--input", tmp_path / "in.jsonl"], fact)


def test_predict_cuts_inputs_to_the_backbone_s_positions(capsys, tiny_model_dir, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    config_file = adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "max_length": 1000}))
    (tmp_path / "in.jsonl").write_text(json.dumps({"sentence": " ".join(f"w{5 + i % 90}" for i in range(200))}) + "\n")
    rc, out, err = run(capsys, "predict", "--adapter", adapter, "--input", tmp_path / "in.jsonl")
    assert rc == 0, err
    assert json.loads(out)["label"] in ("negative", "positive")


def test_a_prompt_s_tokens_are_left_room_when_the_default_length_is_cut(capsys, tiny_model_dir, tiny_glue, tmp_path):
    argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out", "--method", "prompt-tuning", "--num-tokens", 40)
    del argv[argv.index("--max-length"):argv.index("--max-length") + 2]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "pelt: max length 24: the task's default of 128 tokens exceeds this model's 64 positions less the 40 " \
           "the method adds" in out


def test_predict_output_under_a_file_names_the_file(capsys, tiny_model_dir, tmp_path):
    adapter = _saved_adapter(tiny_model_dir, tmp_path / "adapter", "sst2", ["negative", "positive"])
    (tmp_path / "in.jsonl").write_text('{"sentence": "w5 w6"}\n')
    (tmp_path / "afile").write_text("")
    assert_bad_input(capsys, ["predict", "--adapter", adapter, "--input", tmp_path / "in.jsonl", "--output",
                              tmp_path / "afile" / "x.jsonl"], f"{tmp_path / 'afile'} is a file")


def test_non_finite_tensors_names_exactly_the_tensors_with_nan_or_infinity():
    from pelt.adapter_files import non_finite_tensors

    tensors = {"fine": torch.ones(4), "huge": torch.full((10,), 3e38),  # its sum overflows, its values do not
               "nan": torch.tensor([1.0, math.nan]), "both_infinities": torch.tensor([math.inf, -math.inf]),
               "half": torch.tensor([60000.0, 60000.0], dtype=torch.float16)}  # its float16 sum overflows, its values do not
    assert non_finite_tensors(tensors) == ["nan", "both_infinities"]
    assert non_finite_tensors({"fine": torch.ones(3), "huge": torch.full((10,), 3e38)}) == []
