"""pelt bench: per-method step time, throughput, peak memory and largest batch in a budget, in clean processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pelt.cli import main
from pelt.harness.efficiency import FROZEN, StepMeasure, efficiency_table, largest_batch


def _measure(batch: int, peak: float) -> StepMeasure:
    return StepMeasure("x", batch, 16, 10.0, 100.0, peak, "peak_rss", 0.1, 10, "cpu", 1)


def test_largest_batch_extrapolates_then_checks_by_measurement() -> None:
    # memory = 500 + 10 * batch: budget 1000 -> 50 fits exactly
    line = lambda b: _measure(b, 500 + 10 * b)  # noqa: E731
    asked: list[int] = []
    batch, peak = largest_batch(line(8), line(16), 1000, lambda b: (asked.append(b), line(b))[1])
    assert (batch, peak, asked) == (50, 1000, [50])
    # the real curve bends up: the prediction does not fit, so it steps down by 10% until one does
    bent = lambda b: _measure(b, 500 + 10 * b + (200 if b > 40 else 0))  # noqa: E731
    asked.clear()
    batch, _ = largest_batch(bent(8), bent(16), 1000, lambda b: (asked.append(b), bent(b))[1])
    assert asked == [50, 45, 40] and batch == 40
    # nothing fits: 0
    batch, peak = largest_batch(line(8), line(16), 400, lambda b: line(b))
    assert batch == 0 and math.isnan(peak)
    # flat memory (no growth measured): capped, not infinite
    flat = lambda b: _measure(b, 600)  # noqa: E731
    assert largest_batch(flat(8), flat(16), 1000, flat, max_batch=256)[0] == 256


def test_efficiency_table_measures_each_method_in_its_own_process(tiny_model_dir: Path) -> None:
    rows = efficiency_table(["full", "hadamard", FROZEN], str(tiny_model_dir), batch_size=4, seq_len=16, steps=2,
                            warmup=1, memory_budget_mb=5000, epoch_examples=100, log=lambda _: None)
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["full", "hadamard", FROZEN]
    full, hadamard, frozen = by_name["full"], by_name["hadamard"], by_name[FROZEN]
    assert full["ms_per_step_vs_full"] == 1.0 and full["peak_memory_mb_vs_full"] == 1.0
    assert hadamard["trained_params"] < full["trained_params"]
    assert frozen["method_percent"] == 0.0 and frozen["trained_params"] < hadamard["trained_params"]
    for row in rows:
        assert row["peak_memory_mb"] > 0 and row["examples_per_second"] == pytest.approx(
            4 / (row["ms_per_step"] / 1000), rel=0.05)
        assert row["epoch_minutes"] == pytest.approx(row["ms_per_step"] * 25 / 60000, abs=0.01)
        assert 1 <= row["largest_batch"] <= 4096 and row["largest_batch_peak_mb"] <= 5000


def test_bench_command_writes_tables_and_refuses_bad_input(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["bench", "--methods", "full", "bitfit", "--model", str(tiny_model_dir), "--batch-size", "2",
                 "--seq-len", "8", "--steps", "1", "--warmup", "0", "--output-dir", str(tmp_path)])
    assert code == 0
    assert "| bitfit |" in capsys.readouterr().out
    assert [r["variant"] for r in json.loads((tmp_path / "efficiency.json").read_text())] == ["full", "bitfit"]
    assert "| full | 100.0000 |" in (tmp_path / "efficiency.md").read_text()
    assert main(["bench", "--methods", "nope", "--model", str(tiny_model_dir)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["bench", "--methods", "full", "--batch-size", "0"]) == 2
