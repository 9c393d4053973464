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
