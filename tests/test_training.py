"""Training end to end on a tiny model: the pipeline (two-stage recipe included) fits 32 examples exactly."""

from __future__ import annotations

from pathlib import Path

from conftest import separable_rows, write_sst2

import pelt
from pelt.pipeline import finetune
from pelt.train import TrainConfig


def test_two_stage_run_overfits_32_examples(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = separable_rows(32, seed=7)
    data = write_sst2(tmp_path / "glue", rows, rows)  # evaluate on the training examples themselves
    config = TrainConfig(output_dir=str(tmp_path / "out"), epochs=25, learning_rate=3e-3, batch_size=8,
                         recipe="two-stage", head_epochs=2, head_learning_rate=3e-2, warmup_ratio=0.0,
                         logging_steps=1000)
    results = finetune("sst2", pelt.make_config("full"), config, model=str(tiny_model_dir), data_dir=data)
    assert results["train_samples"] == 32
    assert results["metrics"]["validation"]["accuracy"] == 1.0
    assert results["train_config"]["recipe"] == "two-stage"
    assert [h["stage"] for h in results["history"]] == ["head"] * 2 + ["method"] * 25


def test_the_two_stage_recipe_trains_the_head_alone_first(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Stage (a) moves the classifier only: the Hadamard W and b stay 1 and 0, its LayerNorms at the checkpoint's
    values; stage (b) moves them too. Snapshots at each evaluation, the last of each stage compared."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from pelt.train import trainer as trainer_module

    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    real = trainer_module._CheckpointCallback.on_evaluate

    def snapshot(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        snapshots[self.stage] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        return real(self, args, state, control, metrics=metrics, **kwargs)
    monkeypatch.setattr(trainer_module._CheckpointCallback, "on_evaluate", snapshot)
    rows = separable_rows(32, seed=3)
    data = write_sst2(tmp_path / "glue", rows, rows[:8])
    config = TrainConfig(output_dir=str(tmp_path / "out"), epochs=1, learning_rate=5e-2, batch_size=8,
                         recipe="auto", head_epochs=1, head_learning_rate=5e-2, warmup_steps=0, max_length=32)
    finetune("sst2", pelt.make_config("hadamard"), config, model=str(tiny_model_dir), data_dir=data)  # its default
    base = dict(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).named_parameters())
    head = {n for n in snapshots["head"] if n.startswith("classifier.")}
    hadamard = {n for n in snapshots["head"] if ".hadamard_" in n}
    norms = {n for n in snapshots["head"] if n.endswith(("attention.output.LayerNorm.weight",
                                                         "attention.output.LayerNorm.bias"))}
    assert len(hadamard) == 2 * 3 and len(norms) == 2 * 3 and head == {"classifier.weight", "classifier.bias"}
    after_a, after_b = snapshots["head"], snapshots["method"]
    for name in hadamard:
        start = torch.ones_like(after_a[name]) if name.endswith("weight") else torch.zeros_like(after_a[name])
        assert torch.equal(after_a[name], start), f"stage (a) moved {name}"
        assert not torch.equal(after_b[name], start), f"stage (b) left {name} at its init"
    for name in norms:
        assert torch.equal(after_a[name], base[name].detach()), f"stage (a) moved {name}"
        assert not torch.equal(after_b[name], base[name].detach()), f"stage (b) left {name}"
    for name in head:
        assert not torch.equal(after_a[name], after_b[name]), f"stage (b) froze the head ({name})"
    frozen = set(after_a) - hadamard - norms - head
    assert all(torch.equal(after_b[n], base[n].detach()) for n in frozen if n in base), "a frozen weight moved"


def test_only_the_hadamard_adapter_trains_in_two_stages_by_default(tmp_path: Path) -> None:
    from pelt.methods import METHODS
    from pelt.train.trainer import recipe_of

    auto = TrainConfig(output_dir=str(tmp_path))
    assert {m for m in METHODS if recipe_of(auto, pelt.make_config(m))[0]} == {"hadamard"}
    assert recipe_of(TrainConfig(output_dir=str(tmp_path), recipe="two-stage"), pelt.make_config("lora"))[0]
    assert recipe_of(TrainConfig(output_dir=str(tmp_path), learning_rate=0.02), pelt.make_config("lora"))[1] == 0.02


def test_the_recipe_stages_in_order_with_their_learning_rates(tmp_path: Path) -> None:
    from pelt.train.trainer import recipe_stages

    config = TrainConfig(output_dir=str(tmp_path), epochs=3, head_epochs=2, head_learning_rate=1e-2)
    stages = [(s.name, s.epochs, s.learning_rate, s.trains_method)
              for s in recipe_stages(config, pelt.make_config("hadamard"))]
    assert stages == [("head", 2, 1e-2, False), ("method", 3, 5e-3, True)]  # the Hadamard adapter's own rate
    no_head = recipe_stages(config, pelt.make_config("hadamard"), has_head=False)  # text to text
    assert [(s.name, s.learning_rate) for s in no_head] == [("method", 5e-3)]
    joint = recipe_stages(TrainConfig(output_dir=str(tmp_path), epochs=1, learning_rate=0.02), pelt.make_config("lora"))
    assert [(s.name, s.epochs, s.learning_rate) for s in joint] == [("method", 1, 0.02)]


def test_interleaved_batches_hold_one_task_each_and_every_example_once_an_epoch() -> None:
    from pelt.train.interleaved import _TaskBatches

    lengths = [[5, 9, 3, 7, 4], [2, 8, 6]]  # task 0: examples 0-4, task 1: examples 5-7 of the joined dataset
    batches = _TaskBatches(lengths, batch_size=2, seed=0)
    assert len(batches) == 3 + 2
    orders = []
    for _ in range(3):
        epoch = list(batches)
        assert len(epoch) == 5
        assert sorted(i for batch in epoch for i in batch) == list(range(8))
        assert all(set(batch) <= {0, 1, 2, 3, 4} or set(batch) <= {5, 6, 7} for batch in epoch), epoch
        orders.append(epoch)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # shuffled anew each epoch
    tasks_first = [0 if batch[0] < 5 else 1 for batch in orders[0]]
    assert tasks_first.count(0) == 3 and tasks_first.count(1) == 2  # in proportion to the tasks' sizes


def test_the_shared_adapter_checks_its_weights_before_each_epochs_save() -> None:
    """Above the size checked every step, the guard runs at logging steps only: the epoch's end (where the best
    adapter is saved) checks the weights first, so a diverged adapter is never what the epoch saves."""
    from types import SimpleNamespace

    from pelt.train.interleaved import _AtEpochEnd
    from pelt.train.trainer import Stage

    calls: list[tuple] = []
    guard = SimpleNamespace(check_weights=lambda step: calls.append(("check", step)))
    stage = Stage("method", 1.0, 1e-3, trains_method=True)
    at_end = _AtEpochEnd(stage, guard, lambda s, epoch: calls.append(("save", s.name, epoch)))
    at_end.on_epoch_end(None, SimpleNamespace(global_step=7), None)
    at_end.on_epoch_end(None, SimpleNamespace(global_step=14), None)
    assert calls == [("check", 7), ("save", "method", 1), ("check", 14), ("save", "method", 2)]


def test_run_settings_take_keyword_fields_and_refuse_unknown_ones(tmp_path: Path) -> None:
    from pelt.errors import PeltError
    from pelt.run_settings import RunSettings, run_settings

    base = RunSettings(model="m", split_protocol="compacter")
    assert run_settings(base, {"split_seed": 7}) == RunSettings(model="m", split_protocol="compacter", split_seed=7)
    assert run_settings(None, {}, split_protocol="compacter").split_protocol == "compacter"  # the caller's default
    assert run_settings(None, {"split_protocol": "standard"}, split_protocol="compacter").split_protocol == "standard"
    assert RunSettings(max_train_samples={"sst2": 30}).train_size("sst2") == 30
    assert RunSettings(max_train_samples={"sst2": 30}).train_size("rte") is None
    try:
        finetune("sst2", pelt.make_config("hadamard"), TrainConfig(output_dir=str(tmp_path)), modle="typo")
    except PeltError as e:
        assert "unknown run setting(s) modle" in str(e)
    else:
        raise AssertionError("an unknown run setting was accepted")
