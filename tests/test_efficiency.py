"""pelt bench: per-method step time, throughput, peak memory and largest batch in a budget, in clean processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pelt.cli import main
from pelt.harness.efficiency import FROZEN, StepMeasure, efficiency_table, largest_batch, measure_step


def _measure(batch: int, peak: float) -> StepMeasure:
    return StepMeasure("x", batch, 16, 10.0, 100.0, peak, "peak_rss", 0.1, 10, "cpu", 1)


def test_largest_batch_extrapolates_then_checks_by_measurement() -> None:
    # memory = 500 + 10 * batch: budget 1000 -> 50 fits exactly
    line = lambda b: _measure(b, 500 + 10 * b)  # noqa: E731
    asked: list[int] = []
    batch, peak = largest_batch(line(8), line(16), 1000, lambda b: (asked.append(b), line(b))[1])
    assert (batch, peak, asked) == (50, 1000, [50])
    # the real curve jumps up: the prediction does not fit, and the bracket closes in on the largest that does
    bent = lambda b: _measure(b, 500 + 10 * b + (200 if b > 40 else 0))  # noqa: E731
    asked.clear()
    batch, _ = largest_batch(bent(8), bent(16), 1000, lambda b: (asked.append(b), bent(b))[1])
    assert asked == [50, 37, 42, 39, 40, 41] and batch == 40
    # memory that hardly grows at small batches and fast at large ones (a forward pass with no gradients): the
    # straight line overshoots tenfold; the search still ends within 2% of the true largest batch, 636
    convex = lambda b: _measure(b, 800 + 2 * b + b * b / 200)  # noqa: E731
    asked.clear()
    batch, peak = largest_batch(convex(32), convex(64), 4096, lambda b: (asked.append(b), convex(b))[1])
    assert 623 <= batch <= 636 and peak <= 4096 and len(asked) <= 8 and asked[0] > 1000
    # nothing fits: 0
    batch, peak = largest_batch(line(8), line(16), 400, lambda b: line(b))
    assert batch == 0 and math.isnan(peak)
    # flat memory (no growth measured): capped, not infinite
    flat = lambda b: _measure(b, 600)  # noqa: E731
    assert largest_batch(flat(8), flat(16), 1000, flat, max_batch=256)[0] == 256


def test_efficiency_table_measures_each_method_in_its_own_process(tiny_model_dir: Path) -> None:
    rows = efficiency_table(["full", "hadamard", FROZEN], str(tiny_model_dir), batch_size=4, seq_len=16, steps=2,
                            warmup=1, epoch_examples=100, log=lambda _: None)
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["full", "hadamard", FROZEN]
    full, hadamard, frozen = by_name["full"], by_name["hadamard"], by_name[FROZEN]
    assert full["ms_per_step_vs_full"] == 1.0 and full["peak_memory_mb_vs_full"] == 1.0
    # the tiny BERT (hidden 32, 3 layers): its classifier 32·2 + 2; the Hadamard adapter's W, b and attention
    # LayerNorm, 4·32 a layer; full fine-tuning every weight of the 32,064-parameter backbone as well
    head = 32 * 2 + 2
    assert (frozen["trained_params"], hadamard["trained_params"], full["trained_params"]) == \
        (head, 3 * 4 * 32 + head, 32_064 + head)
    assert frozen["method_percent"] == 0.0
    assert hadamard["method_percent"] == pytest.approx(100 * 3 * 4 * 32 / 32_064)
    for row in rows:
        assert row["peak_memory_mb"] > 0 and row["examples_per_second"] == pytest.approx(
            4 / (row["ms_per_step"] / 1000), rel=0.05)
        assert row["epoch_minutes"] == pytest.approx(row["ms_per_step"] * 25 / 60000, abs=0.01)
        assert "largest_batch" not in row  # no memory budget asked


def test_the_largest_batch_is_searched_in_real_processes(tiny_model_dir: Path) -> None:
    """The search's arithmetic is tested with made-up peaks below; here its probes run as real processes."""
    asked: list[str] = []
    [row] = efficiency_table(["hadamard"], str(tiny_model_dir), batch_size=4, seq_len=16, steps=1, warmup=1,
                             memory_budget_mb=5000, log=asked.append)
    probes = [line for line in asked if "peak at batch" in line]
    assert probes[0].endswith("peak at batch 8")  # twice the batch: the second point of the line
    assert 1 <= row["largest_batch"] <= 4096 and row["largest_batch_peak_mb"] <= 5000


def test_bench_command_writes_tables_and_refuses_bad_input(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["bench", "--methods", "full", "bitfit", "--model", str(tiny_model_dir), "--batch-size", "2",
                 "--seq-len", "8", "--steps", "1", "--warmup", "0", "--train-pooler", "--output-dir", str(tmp_path)])
    assert code == 0
    assert "| bitfit |" in capsys.readouterr().out
    rows = json.loads((tmp_path / "efficiency.json").read_text())
    assert [r["variant"] for r in rows] == ["full", "bitfit"]
    text = (tmp_path / "efficiency.md").read_text()
    assert "| full | 96.7066 |" in text  # with the pooler (1,056 of 32,064) counted in the head, not the method
    assert text.startswith(f"Produced by `pelt bench --methods full bitfit --model {tiny_model_dir} --batch-size 2")
    assert "--output-dir" not in text.splitlines()[0]
    assert main(["bench", "--methods", "nope", "--model", str(tiny_model_dir)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["bench", "--methods", "full", "--batch-size", "0"]) == 2


def test_bench_can_train_the_pooler_with_the_head(tiny_model_dir: Path) -> None:
    with_pooler = measure_step("bitfit", str(tiny_model_dir), 2, 8, steps=1, warmup=0, train_pooler=True)
    without = measure_step("bitfit", str(tiny_model_dir), 2, 8, steps=1, warmup=0)
    assert with_pooler.trained_params - without.trained_params == 32 * 32  # its weight; BitFit trains its bias


def test_bench_can_replace_the_pooler(tiny_model_dir: Path, capsys) -> None:
    """With --pooling the pooler is gone, so BitFit no longer trains its bias (measured in the worker process)."""
    from pelt.harness.efficiency import measure_in_subprocess

    with_pooler = measure_step("bitfit", str(tiny_model_dir), 2, 8, steps=1, warmup=0)
    pooled = measure_in_subprocess("bitfit", str(tiny_model_dir), 2, 8, 1, 0, pooling="mean")
    assert with_pooler.trained_params - pooled.trained_params == 32
    assert main(["bench", "--methods", "full", "--model", str(tiny_model_dir), "--train-pooler",
                 "--pooling", "cls"]) == 2
    assert capsys.readouterr().err.strip() == ("pelt: error: --train-pooler trains BERT's pooler and --pooling cls "
                                               "removes it; pick one")


def test_a_batch_that_cannot_run_counts_as_not_fitting() -> None:
    """Out of memory, a probe reports no peak at all (inf): the search halves the bracket instead."""
    crashes = lambda b: _measure(b, math.inf if b > 60 else 500 + 10 * b)  # noqa: E731
    asked: list[int] = []
    batch, peak = largest_batch(crashes(8), crashes(16), 2000, lambda b: (asked.append(b), crashes(b))[1])
    assert asked[:2] == [150, 83] and 57 <= batch <= 60 and peak == 500 + 10 * batch
    # the second point of the line already failed: bisect between the first and it
    asked.clear()
    batch, _ = largest_batch(crashes(40), crashes(80), 2000, lambda b: (asked.append(b), crashes(b))[1])
    assert asked[0] == 60 and batch == 60
    # the first batch is over the budget and the second cannot run: the search starts below the first
    asked.clear()
    batch, _ = largest_batch(crashes(16), crashes(64), 600, lambda b: (asked.append(b), crashes(b))[1])
    assert asked[0] == 8 and batch == 10


def _fake_measure(fail: set[tuple[str, int]]):
    def measure(variant: str, model, batch: int, seq_len: int, steps: int, warmup: int, **_) -> StepMeasure:
        from pelt.errors import PeltError

        if (variant, batch) in fail or (variant, 0) in fail:
            raise PeltError(f"measuring {variant} at batch {batch} failed: CUDA out of memory")
        assert warmup >= 1  # a probe's peak includes the optimizer state, as every step after the first does
        return StepMeasure(variant, batch, seq_len, 10.0, 100.0, 100.0 + batch, "cuda_allocator", 1.0, 10, "cuda", 1)
    return measure


def test_bench_survives_failed_probes_and_keeps_what_it_measured(monkeypatch, tmp_path: Path, capsys) -> None:
    import pelt.harness.efficiency as efficiency

    # Full is full (the ratios find it); a probe out of memory counts as not fitting; nothing fitting is null
    monkeypatch.setattr(efficiency, "measure_in_subprocess", _fake_measure({("full", 64), ("bitfit", 64)}))
    seen: list[int] = []
    rows = efficiency_table(["Full", "bitfit"], None, batch_size=32, memory_budget_mb=150, log=lambda _: None,
                            on_row=lambda so_far: seen.append(len(so_far)))
    assert seen == [1, 2] and [r["variant"] for r in rows] == ["full", "bitfit"]
    assert rows[0]["largest_batch"] == 50 and rows[1]["largest_batch_vs_full"] == 1.0
    rows = efficiency_table(["full"], None, batch_size=32, memory_budget_mb=100, log=lambda _: None)
    assert rows[0]["largest_batch"] == 0 and rows[0]["largest_batch_peak_mb"] is None
    json.dumps(rows, allow_nan=False)  # valid JSON: no NaN
    # a method whose own measurement fails stops the bench, and the table written so far stays
    monkeypatch.setattr(efficiency, "measure_in_subprocess", _fake_measure({("bitfit", 0)}))
    assert main(["bench", "--methods", "full", "bitfit", "--output-dir", str(tmp_path)]) == 2
    assert "measuring bitfit at batch 32 failed: CUDA out of memory" in capsys.readouterr().err
    text = (tmp_path / "efficiency.md").read_text()
    assert "Partial: 1 of 2 methods measured so far." in text and "| full |" in text and "bitfit" not in text.split(
        "\n", 1)[1]
    assert [r["variant"] for r in json.loads((tmp_path / "efficiency.json").read_text())] == ["full"]


@pytest.mark.parametrize("flags, message", [
    (["--memory-budget-mb", "0"], "the memory budget must be a positive number of MB, got 0.0"),
    (["--epoch-examples", "0"], "the examples per epoch must be at least 1, got 0"),
    (["--warmup", "-1"], "the warm-up steps must be at least 0, got -1"),
    (["--seq-len", "0"], "the sequence length must be at least 1, got 0"),
])
def test_bench_refuses_impossible_settings_before_measuring(flags: list[str], message: str, monkeypatch,
                                                            capsys) -> None:
    import pelt.harness.efficiency as efficiency

    monkeypatch.setattr(efficiency, "measure_in_subprocess", _fake_measure(set()))
    assert main(["bench", "--methods", "full", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"pelt: error: {message}"
