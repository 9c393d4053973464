"""The experiment harness: grid expansion, resumable runs with recorded failures, selection by validation,
reports and figures."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
from conftest import separable_rows, write_sst2

from pelt.cli import main
from pelt.errors import PeltError
from pelt.harness import GridSettings, expand_grid, read_records, run_grid, select_best, write_report
from pelt.harness.grid import LOW_RESOURCE_EPOCHS, parse_variant, resolve_lr


def test_grid_expansion_and_reference_learning_rates() -> None:
    specs = expand_grid(["full", "prompt-tuning:init=vocab"], ["rte", "SST-2"], ["ref", "ref/10"], [1, 2],
                        {"sst2": [2000]})
    assert len(specs) == 2 * 2 * 2 * 2
    assert [s.task for s in specs[:8]] == ["rte"] * 8  # tasks outermost
    lrs = {(s.variant, s.learning_rate) for s in specs}
    assert lrs == {("full", 3e-4), ("full", 3e-5), ("prompt-tuning:init=vocab", 0.3),
                   ("prompt-tuning:init=vocab", 0.03)}
    assert {s.train_size for s in specs if s.task == "sst2"} == {2000}
    assert {s.train_size for s in specs if s.task == "rte"} == {None}
    assert len({s.key for s in specs}) == len(specs)
    assert resolve_lr("ref*10", "compacter++", {}) == 0.03
    assert resolve_lr("3e-4", "hadamard", {}) == 3e-4
    # a duplicate (ref/10 of prompt T is 3e-2, also listed as a number) runs once
    assert len(expand_grid(["prompt-tuning:init=vocab"], ["rte"], ["ref/10", "0.03"], [42], [None])) == 1


def test_low_resource_schedule() -> None:
    specs = expand_grid(["hadamard"], ["sst2"], ["ref"], [42], [100, 500, 1000, 2000, 4000], low_resource=True,
                        eval_steps=250)
    assert [(s.train_size, s.epochs) for s in specs] == list(LOW_RESOURCE_EPOCHS.items())
    assert {s.eval_steps for s in specs} == {250}
    with pytest.raises(PeltError, match="not 300"):
        expand_grid(["hadamard"], ["sst2"], ["ref"], [42], [300], low_resource=True)


@pytest.mark.parametrize(
    ("methods", "lrs", "message"),
    [
        (["nope"], ["ref"], "unknown method 'nope'"),
        (["lora:rank"], ["ref"], "must look like key=value"),
        (["lora:rank=0"], ["ref"], "rank"),
        (["lora"], ["fast"], "neither a number nor ref"),
        (["lora"], ["ref+1"], r"write ref, ref\*10 or ref/10"),
        (["lora"], ["-1e-3"], "must be a positive number"),
        (["lora"], ["inf"], "must be a positive number"),
        (["lora"], ["nan"], "must be a positive number"),
        (["compacter:n=2:rank=1", "compacter:rank=1:n=2"], ["ref"], "are the same configuration; list it once"),
        (["lora", "lora:rank=8"], ["ref"], "'lora' and 'lora:rank=8' are the same configuration"),
    ],
)
def test_bad_grids_fail_before_any_run(methods, lrs, message) -> None:
    with pytest.raises(PeltError, match=message):
        expand_grid(methods, ["rte"], lrs, [42], [None])


@pytest.mark.parametrize(("sizes", "seeds", "eval_steps", "message"), [
    ([0], [42], None, "a training-set size must be at least 1, got 0"),
    ({"rte": [100, -5]}, [42], None, "a training-set size must be at least 1, got -5"),
    ([None], [-1], None, "a seed must be at least 0, got -1"),
    ([None], [42], 0, "evaluation every 0 steps: it must be at least 1"),
])
def test_impossible_sizes_seeds_and_evaluation_steps_fail_before_any_run(sizes, seeds, eval_steps, message) -> None:
    with pytest.raises(PeltError, match=message):
        expand_grid(["lora"], ["rte"], ["ref"], seeds, sizes, eval_steps=eval_steps)


def test_a_method_is_labelled_by_its_registry_name() -> None:
    (spec,) = expand_grid(["LoRA:rank=4"], ["rte"], ["ref"], [42], [None])
    assert (spec.variant, spec.key) == ("lora:rank=4", "rte/lora:rank=4/lr0.0005/seed42/nall")
    assert len(expand_grid(["lora", "LoRA"], ["rte"], ["ref"], [42], [None])) == 1


def test_parse_variant_types_options() -> None:
    assert parse_variant("compacter++:n=2:rank=1") == ("compacter++", {"n": 2, "rank": 1})
    assert parse_variant("hadamard:train_layernorm=false") == ("hadamard", {"train_layernorm": False})


# ---- running: a fake `pelt train` so the bookkeeping is tested in milliseconds ---------------------------------


def _fake_results(spec_lr: float) -> dict:
    return {"metrics": {"validation": {"accuracy": 0.5 + spec_lr}, "test": {"accuracy": 0.4}},
            "main_metric": "accuracy", "selection_split": "validation", "parameters": {"method_percent": 0.1},
            "peak_memory_mb": 100.0, "ms_per_step": 5.0}


class FakeTrain:
    """Stands in for `pelt train`: writes results.json, fails on demand, can be 'killed' at a given call."""

    def __init__(self, fail_lr: float | None = None, kill_at: int | None = None,
                 ends: dict[int, tuple[int, str]] | None = None) -> None:
        self.calls: list[str] = []
        self.fail_lr, self.kill_at, self.ends = fail_lr, kill_at, ends or {}

    def __call__(self, cmd: list[str], output_dir: Path, env: dict | None = None) -> tuple[int, str]:
        lr = float(cmd[cmd.index("--lr") + 1])
        self.calls.append(f"{cmd[cmd.index('--task') + 1]}/{lr:g}")
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        if len(self.calls) in self.ends:  # the child process ended this way (exit code, stderr)
            return self.ends[len(self.calls)]
        if lr == self.fail_lr:
            return 2, "some warning\npelt: error: n=3 does not divide the hidden size (32)\n"
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(_fake_results(lr)))
        return 0, ""


def test_a_failed_run_is_recorded_and_the_grid_goes_on(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard"], ["rte", "mrpc"], ["1e-3", "1e-2", "1e-1"], [42], [None])
    fake = FakeTrain(fail_lr=1e-2)
    records = run_grid(specs, tmp_path, GridSettings(), runner=fake, log=lambda _: None)
    assert len(fake.calls) == 6
    failed = [r for r in records if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["rte/hadamard/lr0.01/seed42/nall", "mrpc/hadamard/lr0.01/seed42/nall"]
    assert failed[0]["error"] == "pelt: error: n=3 does not divide the hidden size (32)"
    assert failed[0]["exit_code"] == 2
    assert sum(r["status"] == "ok" for r in records) == 4
    assert len(read_records(tmp_path / "results.jsonl")) == 6
    # a restart runs nothing; --retry-failed reruns only the failures
    again = FakeTrain(fail_lr=1e-2)
    run_grid(specs, tmp_path, GridSettings(), runner=again, log=lambda _: None)
    assert again.calls == []
    retry = FakeTrain()
    records = run_grid(specs, tmp_path, GridSettings(), runner=retry, retry_failed=True, log=lambda _: None)
    assert retry.calls == ["rte/0.01", "mrpc/0.01"]
    assert all(r["status"] == "ok" for r in records) and len(records) == 6


def test_a_killed_grid_restarts_with_only_what_is_missing(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3", "1e-2", "1e-1"], [42], [None])
    killed = FakeTrain(kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_grid(specs, tmp_path, GridSettings(), runner=killed, log=lambda _: None)
    assert len(read_records(tmp_path / "results.jsonl")) == 2
    with open(tmp_path / "results.jsonl", "a") as handle:
        handle.write('{"key": "rte/hadamard/lr0.01')  # a record cut short by the kill
    resumed = FakeTrain()
    records = run_grid(specs, tmp_path, GridSettings(), runner=resumed, log=lambda _: None)
    assert resumed.calls == ["rte/0.01", "rte/0.1"]
    assert len(records) == 4
    # the cut-short line is gone, not glued to the next record: the file reads whole and a restart runs nothing
    assert [r["learning_rate"] for r in read_records(tmp_path / "results.jsonl")] == [1e-4, 1e-3, 1e-2, 1e-1]
    again = FakeTrain()
    run_grid(specs, tmp_path, GridSettings(), runner=again, log=lambda _: None)
    assert again.calls == []


class Together:
    """A runner whose first `parties` runs can only finish once all of them are running at the same time."""

    def __init__(self, parties: int, ends: dict[str, tuple[int, str]] | None = None,
                 hold: dict[str, threading.Event] | None = None) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.parties, self.ends, self.hold, self.started = parties, ends or {}, hold or {}, []
        self.envs: dict[str, dict] = {}
        self.fake = FakeTrain()

    def __call__(self, cmd: list[str], output_dir: Path, env: dict | None = None) -> tuple[int, str]:
        lr = f"{float(cmd[cmd.index('--lr') + 1]):g}"
        self.started.append(lr)
        self.envs[lr] = dict(env or {})
        if len(self.started) <= self.parties:
            self.barrier.wait()  # BrokenBarrierError (a failed record) if the runs were not side by side
        if lr in self.hold:  # this run ends only once the event is set
            assert self.hold[lr].wait(timeout=10)
        if lr in self.ends:
            return self.ends[lr]
        return self.fake(cmd, output_dir)


def test_jobs_run_side_by_side_and_each_result_is_recorded(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3", "1e-2", "1e-1"], [42], [None])
    runner = Together(3, ends={"0.01": (2, "pelt: error: bad\n")})
    records = run_grid(specs, tmp_path, GridSettings(), jobs=3, runner=runner, log=lambda _: None)
    assert sorted(runner.started) == ["0.0001", "0.001", "0.01", "0.1"]
    saved = {r["learning_rate"]: r for r in read_records(tmp_path / "results.jsonl")}
    assert len(saved) == 4 and len(records) == 4
    assert saved[0.01]["status"] == "failed" and saved[0.01]["error"] == "pelt: error: bad"
    assert all(r["status"] == "ok" for lr, r in saved.items() if lr != 0.01)
    assert all(r["settings"]["jobs"] == 3 for r in saved.values())  # the report says times were side by side
    with pytest.raises(PeltError, match="jobs must be at least 1"):
        run_grid(specs, tmp_path, GridSettings(), jobs=0, runner=runner, log=lambda _: None)


def test_each_job_slot_runs_on_its_own_device(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # chosen by the caller: left alone
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3", "1e-2", "1e-1"], [42], [None])
    runner = Together(2)
    run_grid(specs, tmp_path, GridSettings(), jobs=2, devices=["0", "1"], runner=runner, log=lambda _: None)
    first_two = {runner.envs[lr]["CUDA_VISIBLE_DEVICES"] for lr in runner.started[:2]}
    assert first_two == {"0", "1"}  # side by side, so on different devices
    assert all(env["CUDA_VISIBLE_DEVICES"] in {"0", "1"} for env in runner.envs.values())
    alone = FakeTrain()
    seen: list[dict] = []
    run_grid(specs, tmp_path / "b", GridSettings(), jobs=3, devices=["3"], log=lambda _: None,
             runner=lambda cmd, out, env: (seen.append(env), alone(cmd, out))[1])
    assert seen == [{"CUDA_VISIBLE_DEVICES": "3"}] * 4
    plain: list[dict] = []
    run_grid(specs, tmp_path / "c", GridSettings(), log=lambda _: None,
             runner=lambda cmd, out, env: (plain.append(env), alone(cmd, out))[1])
    assert plain == [{}] * 4  # without devices the environment is left alone
    with pytest.raises(PeltError, match="devices must be a non-empty list"):
        run_grid(specs, tmp_path, GridSettings(), devices=[], runner=runner, log=lambda _: None)


def test_runs_side_by_side_share_the_cores_unless_told(tmp_path: Path, monkeypatch) -> None:
    import os

    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3"], [42], [None])
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen: list[dict] = []
    fake = FakeTrain()
    run_grid(specs, tmp_path / "a", GridSettings(), jobs=4, devices=["0"], log=lambda _: None,
             runner=lambda cmd, out, env: (seen.append(env), fake(cmd, out))[1])
    assert seen == [{"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0"}] * 2
    seen.clear()
    run_grid(specs, tmp_path / "d", GridSettings(), jobs=2, log=lambda _: None,
             runner=lambda cmd, out, env: (seen.append(env), fake(cmd, out))[1])
    assert seen == [{"OMP_NUM_THREADS": "8"}] * 2  # no devices: the cores only
    seen.clear()
    run_grid(specs, tmp_path / "b", GridSettings(), log=lambda _: None,
             runner=lambda cmd, out, env: (seen.append(env), fake(cmd, out))[1])
    assert seen == [{}] * 2  # one at a time: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    seen.clear()
    run_grid(specs, tmp_path / "c", GridSettings(), jobs=4, log=lambda _: None,
             runner=lambda cmd, out, env: (seen.append(env), fake(cmd, out))[1])
    assert seen == [{}] * 2  # the caller's choice is inherited


def test_a_device_reaches_the_real_child_process(tmp_path: Path) -> None:
    import sys

    from pelt.harness.sweep import _run_process

    show = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('PATH') is not None)"
    assert _run_process([sys.executable, "-c", show], tmp_path / "run", {"CUDA_VISIBLE_DEVICES": "5"})[0] == 0
    assert (tmp_path / "run" / "train.log").read_text().split() == ["5", "True"]  # added to, not replacing, the env


def test_an_interrupted_job_stops_new_runs_and_keeps_the_finished_ones(tmp_path: Path) -> None:
    """Run 1 is interrupted while run 2 is running: run 2 is still recorded, runs 3 and 4 never start."""
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3", "1e-2", "1e-1"], [42], [None])
    stop_seen = threading.Event()  # run 2 ends after the grid has taken in run 1's interruption
    runner = Together(2, ends={"0.0001": (130, "")}, hold={"0.001": stop_seen})
    with pytest.raises(KeyboardInterrupt):
        run_grid(specs, tmp_path, GridSettings(), jobs=2, runner=runner,
                 log=lambda line: stop_seen.set() if "interrupted" in line else None)
    assert sorted(runner.started) == ["0.0001", "0.001"]
    assert [r["learning_rate"] for r in read_records(tmp_path / "results.jsonl")] == [0.001]
    resumed = FakeTrain()
    run_grid(specs, tmp_path, GridSettings(), jobs=2, runner=resumed, log=lambda _: None)
    assert sorted(resumed.calls) == ["rte/0.0001", "rte/0.01", "rte/0.1"]


def test_an_interrupted_grid_stops_its_running_children_and_starts_no_more(tmp_path: Path) -> None:
    """A grid stopped itself (KeyboardInterrupt in the sweep, its children spared) interrupts the runs still going,
    and a run whose turn comes after the stop never starts."""
    import sys
    import time

    from pelt.harness.sweep import INTERRUPTED_CODES, _Children, _run_process

    children = _Children()
    codes: list[int] = []
    child = threading.Thread(target=lambda: codes.append(_run_process(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "run", children=children)[0]))
    child.start()
    deadline = time.time() + 30
    while not children.alive() and time.time() < deadline:
        time.sleep(0.05)
    assert children.alive(), "the child never started"
    started = time.time()
    children.stop(grace=0.1, cleanup=5.0)
    child.join(timeout=10)
    assert not child.is_alive() and codes and codes[0] in INTERRUPTED_CODES
    assert time.time() - started < 10
    marker = tmp_path / "started"
    late = _run_process([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], tmp_path / "late", children=children)
    assert late[0] in INTERRUPTED_CODES and not marker.exists()


def test_a_broken_run_is_its_own_failure_and_its_siblings_are_recorded(tmp_path: Path) -> None:
    """A runner that raises, or a run that leaves a truncated results.json, fails alone; runs beside it count."""
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3", "1e-2"], [42], [None])
    fake = FakeTrain()

    def runner(cmd: list[str], output_dir: Path, env: dict) -> tuple[int, str]:
        lr = float(cmd[cmd.index("--lr") + 1])
        if lr == 1e-4:
            raise OSError("No space left on device")
        if lr == 1e-3:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "results.json").write_text('{"metrics": ')
            return 0, ""
        return fake(cmd, output_dir)

    records = run_grid(specs, tmp_path, GridSettings(), jobs=2, runner=runner, log=lambda _: None)
    saved = {r["learning_rate"]: r for r in read_records(tmp_path / "results.jsonl")}
    assert len(records) == 3 and saved[0.01]["status"] == "ok"
    assert saved[0.0001]["status"] == "failed" and saved[0.0001]["error"] == "OSError: No space left on device"
    assert saved[0.001]["status"] == "failed" and saved[0.001]["error"].startswith("JSONDecodeError")


def test_cli_refuses_no_jobs(capsys) -> None:
    assert main(["sweep", "--grid-dir", "g", "--methods", "hadamard", "--tasks", "rte", "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "pelt: error: --jobs must be at least 1, got 0"


PROGRESS = " 37%|███▋      | 70/189 [01:02<01:45,  1.13it/s]"


@pytest.mark.parametrize("code", [130, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM])
def test_a_run_stopped_from_outside_leaves_no_record_and_stops_the_grid(tmp_path: Path, code: int) -> None:
    """Ctrl-C or SIGTERM reaching the `pelt train` child is an interruption, not a failure to skip on restart."""
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3", "1e-2"], [42], [None])
    logged: list[str] = []
    stopped = FakeTrain(ends={2: (code, "epoch 1\n" + PROGRESS)})
    with pytest.raises(KeyboardInterrupt):
        run_grid(specs, tmp_path, GridSettings(), runner=stopped, log=logged.append)
    assert stopped.calls == ["rte/0.0001", "rte/0.001"]  # the third run never started
    assert [r["key"] for r in read_records(tmp_path / "results.jsonl")] == ["rte/hadamard/lr0.0001/seed42/nall"]
    assert "not recorded; rerun the same command to resume" in logged[-1]
    resumed = FakeTrain()
    run_grid(specs, tmp_path, GridSettings(), runner=resumed, log=lambda _: None)
    assert resumed.calls == ["rte/0.001", "rte/0.01"]


def test_a_run_killed_by_sigkill_is_a_recorded_failure_named_by_its_signal(tmp_path: Path) -> None:
    """The out-of-memory killer's SIGKILL is a failure (retrying it forever would not help); the reason is the
    signal, not the progress bar the run last printed."""
    specs = expand_grid(["hadamard"], ["rte"], ["1e-4", "1e-3"], [42], [None])
    records = run_grid(specs, tmp_path, GridSettings(), runner=FakeTrain(ends={1: (-signal.SIGKILL, PROGRESS)}),
                       log=lambda _: None)
    assert [r["status"] for r in records] == ["failed", "ok"]
    assert records[0]["error"] == "killed by SIGKILL (out of memory?)" and records[0]["exit_code"] == -9


@pytest.mark.parametrize("stderr, code, expected", [
    ("Traceback (most recent call last):\n  x\nRuntimeError: boom\n" + PROGRESS, 1, "RuntimeError: boom"),
    ("loading\n" + PROGRESS + "\r" + PROGRESS, 1, "loading"),
    (PROGRESS, 1, "exit code 1"),
    ("", -signal.SIGSEGV, "killed by SIGSEGV"),
    ("loading\n" + PROGRESS + "pelt: error: 140 input tokens", 2, "pelt: error: 140 input tokens"),
    ("Map:  50%|█████     | 5/10 [00:00<00:00, 100.00 examples/s]\n70it [00:01, 50.0it/s]", 1, "exit code 1"),
    ("pelt: error: bad\n", -signal.SIGKILL, "pelt: error: bad"),
])
def test_the_error_line_skips_progress_bars(stderr: str, code: int, expected: str) -> None:
    from pelt.harness.sweep import _error_line

    assert _error_line(stderr, code) == expected


def test_a_child_killed_by_a_signal_reports_the_negative_code(tmp_path: Path) -> None:
    import sys

    from pelt.harness.sweep import INTERRUPTED_CODES, _run_process

    terminate_self = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    code, _ = _run_process([sys.executable, "-c", terminate_self], tmp_path / "run")
    assert code == -signal.SIGTERM and code in INTERRUPTED_CODES


def test_run_command_carries_the_spec(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard:top_k=2:train_layernorm=false"], ["sst2"], ["1e-3"], [7], [100],
                        low_resource=True, eval_steps=250)
    seen: list[list[str]] = []
    (tmp_path / "data").mkdir()
    run_grid(specs, tmp_path, GridSettings(str(tmp_path / "data"), "model-dir", "compacter", ["--batch-size", "8"]),
             runner=lambda cmd, out, env: (seen.append(cmd), (1, ""))[1], log=lambda _: None)
    cmd = " ".join(seen[0])
    for part in ("--task sst2", "--method hadamard", "--lr 0.001", "--seed 7", "--split-protocol compacter",
                 "--top-k 2", "--no-train-layernorm", "--max-train-samples 100", "--epochs 1000", "--eval-steps 250",
                 f"--data-dir {tmp_path / 'data'}", "--model model-dir", "--batch-size 8"):
        assert part in cmd


# ---- selection, report and figures --------------------------------------------------------------------------------


def _record(variant: str, task: str, lr: float, validation: float, test: float, *, seed: int = 42,
            size: int | None = None, percent: float = 0.1, metric: str = "accuracy") -> dict:
    return {"key": f"{task}/{variant}/lr{lr:g}/seed{seed}/n{size}", "status": "ok", "variant": variant,
            "method": variant, "task": task, "learning_rate": lr, "seed": seed, "train_size": size,
            "main_metric": metric, "selection_split": "validation",
            "metrics": {"validation": {metric: validation}, "test": {metric: test}},
            "parameters": {"method_percent": percent}, "peak_memory_mb": 1000.0, "ms_per_step": 100.0}


def test_learning_rate_is_picked_on_validation_not_test() -> None:
    records = [
        _record("hadamard", "rte", 1e-3, validation=0.60, test=0.70),  # best test, worse validation
        _record("hadamard", "rte", 1e-2, validation=0.65, test=0.55),  # best validation: this one is reported
        _record("hadamard", "rte", 1e-1, validation=0.50, test=0.80),
        {"key": "rte/hadamard/lr1/seed42/nNone", "status": "failed", "variant": "hadamard", "task": "rte",
         "learning_rate": 1.0, "seed": 42, "train_size": None, "error": "boom"},
    ]
    (pick,) = select_best(records)
    assert (pick.learning_rate, pick.validation, pick.test) == (1e-2, 0.65, {"accuracy": 0.55})


def test_one_learning_rate_per_method_and_task_is_picked_on_the_seeds_mean() -> None:
    # picked seed by seed, seed 1 would take 1e-4 (test 0.6) and seed 2 1e-3 (test 0.7): 0.65 belongs to no rate
    records = [
        _record("full", "rte", 1e-4, 0.9, 0.60, seed=1), _record("full", "rte", 1e-3, 0.6, 0.90, seed=1),
        _record("full", "rte", 1e-4, 0.5, 0.10, seed=2), _record("full", "rte", 1e-3, 0.6, 0.70, seed=2),
    ]
    (pick,) = select_best(records)
    assert pick.learning_rate == 1e-4 and pick.validation == pytest.approx(0.7)
    assert pick.test["accuracy"] == pytest.approx(0.35) and pick.seeds == 2


def test_a_retried_run_counts_once_and_a_failed_candidate_is_marked(tmp_path: Path) -> None:
    failed = {"key": "rte/full/lr0.001/seed42/nNone", "status": "failed", "variant": "full", "task": "rte",
              "learning_rate": 1e-3, "seed": 42, "train_size": None, "error": "boom"}
    retried = _record("full", "rte", 1e-3, 0.8, 0.7)
    retried["key"] = failed["key"]
    other = _record("full", "rte", 1e-4, 0.6, 0.5)
    (pick,) = select_best([failed, other, retried])
    assert (pick.learning_rate, pick.failed) == (1e-3, 0)
    text = write_report([failed, other, retried], tmp_path).read_text()
    assert "Failed runs" not in text and "†" not in text and "| full | 0.1000 | 70.0 | 70.0 |" in text
    (pick,) = select_best([other, failed])
    assert (pick.learning_rate, pick.failed) == (1e-4, 1)
    text = write_report([other, failed], tmp_path).read_text()
    assert "| 50.0 † |" in text and "† a run of this method and task failed" in text
    assert "- `rte/full/lr0.001/seed42/nNone`: boom" in text


def test_the_papers_one_rate_per_method_summary(tmp_path: Path) -> None:
    # per task, rte prefers 1e-3 and mrpc 1e-4; over both tasks 1e-4 wins (mean validation 0.65 against 0.6)
    records = [_record("lora", "rte", 1e-3, 0.61, 0.5), _record("lora", "rte", 1e-4, 0.60, 0.4),
               _record("lora", "mrpc", 1e-3, 0.59, 0.3), _record("lora", "mrpc", 1e-4, 0.70, 0.6),
               _record("lora", "rte", 1e-2, 0.99, 0.9),  # not run on mrpc: does not compete
               _record("lora", "cola", 1e-3, 0.99, 0.9)]  # a task outside the summary: not counted
    from pelt.harness import select_per_method

    picks = {(s.task, s.learning_rate) for s in select_per_method(records, {"rte": None, "mrpc": None})}
    assert picks == {("rte", 1e-4), ("mrpc", 1e-4)}
    text = write_report(records[:4], tmp_path).read_text()  # per task: rte 1e-3, mrpc 1e-4
    assert "| lora | 0.1000 | 50.0 | 60.0 | 55.0 |" in text  # per task: rte 1e-3, mrpc 1e-4
    assert "## Summary, one learning rate per method" in text
    assert "| lora | 0.1000 | 0.0001 | 40.0 | 60.0 | 50.0 |" in text
    same = write_report([_record("lora", t, 1e-3, 0.6, 0.5) for t in ("rte", "mrpc")], tmp_path).read_text()
    assert "one learning rate per method" not in same  # nothing to add when both rules agree


def _hand_made_grid(folder: Path) -> Path:
    records = []
    for variant, percent, base in (("full", 100.0, 0.8), ("hadamard", 0.04, 0.75), ("compacter++", 0.05, 0.7)):
        for task in ("rte", "mrpc"):
            for lr, bump in ((1e-3, 0.0), (1e-2, 0.01)):
                records.append(_record(variant, task, lr, base + bump, base + bump - 0.02, percent=percent))
        for size in (100, 500, 1000, 2000):
            records.append(_record(variant, "sst2", 1e-3, base, base - 0.1 + size / 1e4, size=size, percent=percent))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_report_tables_and_both_figures_from_a_results_file(tmp_path: Path) -> None:
    folder = _hand_made_grid(tmp_path / "grid")
    report = write_report(read_records(folder / "results.jsonl"), folder, title="Hand-made")
    text = report.read_text()
    assert "| method | % trained | rte | mrpc | sst2 (n=2,000) | average |" in text
    # full: rte 0.79, mrpc 0.79, sst2 (largest size 2000) 0.7 + 0.2 = 0.9 -> average 82.7
    assert "| full | 100.0000 | 79.0 | 79.0 | 90.0 | 82.7 |" in text
    # hadamard on sst2: 0.75 - 0.1 + n / 1e4 for n = 100, 500, 1000, 2000
    assert "## Score vs training-set size" in text and "| sst2 | hadamard | 66.0 | 70.0 | 75.0 | 85.0 |" in text
    # every learning rate's validation score, the pick in bold; none for sst2, run at one learning rate
    rte = text[text.index("## rte"):text.index("## mrpc")]
    assert "| method | 0.01 | 0.001 |" in rte and "| full | **81.0** | 80.0 |" in rte
    assert "| compacter++ | **71.0** | 70.0 |" in rte
    assert "at each learning rate" not in text[text.index("## sst2"):]
    for figure in ("scores_vs_params.png", "scores_vs_train_size.png"):
        data = (folder / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"![{figure}]({figure})" in text


def test_report_command_and_its_errors(tmp_path: Path, capsys) -> None:
    folder = _hand_made_grid(tmp_path / "grid")
    assert main(["report", "--grid-dir", str(folder)]) == 0
    assert (folder / "report.md").exists()
    assert main(["report", "--grid-dir", str(tmp_path / "none")]) == 2
    assert "results.jsonl not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.jsonl").write_text("")
    assert main(["report", "--grid-dir", str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize("jobs", [1, 2])
def test_cli_sweep_runs_real_processes_and_records_a_failure(tmp_path: Path, tiny_model_dir: Path, capsys,
                                                             jobs: int) -> None:
    """Two real `pelt train` processes on a tiny model, one after the other or side by side: one trains, one
    fails (n=3 cannot divide hidden 32)."""
    data = write_sst2(tmp_path / "glue", separable_rows(40), separable_rows(20, seed=1))
    grid = tmp_path / "grid"
    code = main(["sweep", "--grid-dir", str(grid), "--methods", "hadamard", "compacter:n=3", "--tasks", "sst2",
                 "--lrs", "1e-2", "--model", str(tiny_model_dir), "--data-dir", str(data), "--jobs", str(jobs),
                 "--split-protocol", "standard", "--train-args", "--epochs 1 --batch-size 8"])
    assert code == 3  # a run failed: the grid went on, and the exit code says so
    records = {r["variant"]: r for r in read_records(grid / "results.jsonl")}
    assert records["hadamard"]["status"] == "ok" and "validation" in records["hadamard"]["metrics"]
    assert records["compacter:n=3"]["status"] == "failed"
    assert "n=3 does not divide" in records["compacter:n=3"]["error"]
    assert records["hadamard"]["settings"] == {"model": str(tiny_model_dir), "split_protocol": "standard",
                                                "train_args": "--epochs 1 --batch-size 8"} | (
        {"jobs": 2} if jobs == 2 else {})
    report = (grid / "report.md").read_text()
    assert report.startswith("# Grid grid\n")
    assert f"Runs: {tiny_model_dir}, split protocol standard, `pelt train --epochs 1 --batch-size 8`" in report
    assert "the scores are the **validation** metrics" in report  # no test split under standard
    output = capsys.readouterr()
    assert "report:" in output.out
    assert output.err.strip().endswith(f"pelt: 1 of 2 runs failed (their errors are in {grid / 'report.md'}); "
                                       "fix the cause and rerun the command with --retry-failed")


def test_a_run_whose_folder_vanishes_is_reported_not_a_crash(tmp_path: Path) -> None:
    import sys

    from pelt.harness.sweep import _run_process

    out = tmp_path / "run"
    remove_own_folder = "import shutil, sys; sys.stderr.write('bye'); shutil.rmtree(sys.argv[1]); sys.exit(3)"
    assert _run_process([sys.executable, "-c", remove_own_folder, str(out)], out) == (3, "")
    assert _run_process([sys.executable, "-c", "import sys; sys.stderr.write('pelt: error: x')"], out) == (
        0, "pelt: error: x")


def test_report_says_once_when_runs_were_timed_side_by_side() -> None:
    from pelt.harness.report import _settings_lines

    shared = {"model": "m", "split_protocol": "compacter", "train_args": "--epochs 3"}
    records = [{"settings": shared | {"jobs": 14}, "device": "cuda (H200)"},
               {"settings": shared | {"jobs": 15}, "device": "cuda (H200)"},
               {"settings": shared, "device": "cpu (2 cores, x86_64)"},
               {"settings": shared | {"train_args": ""}, "device": "cpu (2 cores, x86_64)"},
               {"settings": shared | {"train_args": ""}}]
    assert _settings_lines(records) == [
        "Runs: m, split protocol compacter; on cpu (2 cores, x86_64).",
        "Runs: m, split protocol compacter, `pelt train --epochs 3`; on cuda (H200) (2 runs), cpu (2 cores, x86_64) "
        "(1 run); with up to 15 runs at a time (`--jobs 15`), so times and ms/step may have been measured side by "
        "side.",
        "",
    ]


def test_a_curve_shows_a_method_with_one_size_so_far_but_a_fixed_size_grid_has_none() -> None:
    from pelt.harness.report import _curves

    records = [_record("full", "sst2", 1e-3, 0.8, 0.7 + n / 1e4, size=n) for n in (100, 500)]
    records.append(_record("hadamard", "sst2", 1e-3, 0.8, 0.6, size=100))
    curves = _curves(select_best(records))
    assert curves["sizes"] == [100, 500]
    assert curves["lines"][("sst2", "hadamard")] == {100: pytest.approx(0.6)}
    assert _curves(select_best([_record("full", "sst2", 1e-3, 0.8, 0.7, size=2000),
                                _record("hadamard", "sst2", 1e-3, 0.8, 0.6, size=2000)])) == {}
    # asked for 4,000 of a task with 2,490 training examples: the point sits where the training did
    whole = [_record("full", "rte", 1e-3, 0.8, 0.7, size=n) | {"train_samples": min(n, 2490)} for n in (1000, 4000)]
    assert _curves(select_best(whole))["sizes"] == [1000, 2490]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (read from /proc: no extra dependency)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
@pytest.mark.parametrize("to_group, stop, jobs", [(False, signal.SIGTERM, 1), (True, signal.SIGINT, 2)],
                         ids=["sigterm-to-the-sweep", "ctrl-c-to-the-terminal-with-jobs"])
def test_a_stopped_sweep_ends_its_runs_and_records_nothing(tmp_path: Path, tiny_model_dir: Path, to_group: bool,
                                                           stop: int, jobs: int) -> None:
    """A scheduler's SIGTERM reaches the sweep alone; a Ctrl-C reaches the sweep and every child. Either way
    the running `pelt train` children end, nothing is recorded for them, and the sweep exits as after Ctrl-C
    (130), so the restart runs them again."""
    import os
    import subprocess
    import sys
    import time

    data = write_sst2(tmp_path / "glue", separable_rows(40), separable_rows(20, seed=1))
    grid = tmp_path / "grid"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "pelt.cli", "sweep", "--grid-dir", str(grid), "--methods", "hadamard", "bitfit",
         "--tasks", "sst2", "--lrs", "1e-2", "--model", str(tiny_model_dir), "--data-dir", str(data),
         "--split-protocol", "standard", "--jobs", str(jobs), "--train-args", "--epochs 500 --batch-size 2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_dir = str(grid / "runs")
    deadline = time.time() + 60
    while len(_processes_mentioning(run_dir)) < jobs and time.time() < deadline:
        time.sleep(0.2)
    assert len(_processes_mentioning(run_dir)) == jobs, "the pelt train children never started"
    time.sleep(2)
    if to_group:
        os.killpg(sweep.pid, stop)  # the sweep leads its own session, as a shell's foreground job would
    else:
        sweep.send_signal(stop)
    try:
        output, _ = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
        leftover = _processes_mentioning(run_dir)
        for pid in leftover:  # what a failing sweep left behind must not outlive the test
            os.kill(pid, signal.SIGKILL)
    assert leftover == []
    assert sweep.returncode == 130, output
    assert "interrupted: the runs in progress are stopped, not recorded; rerun the same command" in output
    assert not read_records(grid / "results.jsonl")


def test_the_pick_is_bold_in_the_learning_rate_table(tmp_path: Path) -> None:
    records = [_record("full", "rte", 1e-4, 0.8, 0.6, seed=1), _record("full", "rte", 1e-3, 0.6, 0.6, seed=1),
               _record("full", "rte", 1e-4, 0.5, 0.6, seed=2), _record("full", "rte", 1e-3, 0.6, 0.6, seed=2),
               _record("hadamard", "rte", 1e-4, 0.5, 0.6), _record("hadamard", "rte", 1e-3, 0.6, 0.6)]
    text = write_report(records, tmp_path).read_text()
    assert "| method | 0.001 | 0.0001 |" in text
    assert "| full | 60.0 | **65.0** |" in text and "| hadamard | **60.0** | 50.0 |" in text


def test_low_resource_sweep_defaults_to_the_papers_sizes_and_evaluation_steps() -> None:
    from pelt.cli import _build_parser, _sweep_specs

    def specs(*extra: str) -> list:
        args = _build_parser(None).parse_args(["sweep", "--grid-dir", "g", "--methods", "hadamard", "--tasks",
                                               "sst2", *extra])
        return _sweep_specs(args)

    paper = specs("--low-resource")
    assert [(s.train_size, s.epochs, s.eval_steps) for s in paper] == [
        (100, 1000.0, 250), (500, 200.0, 250), (1000, 100.0, 250), (2000, 50.0, 250), (4000, 25.0, 250)]
    chosen = specs("--low-resource", "--train-sizes", "100", "500", "--eval-steps", "50")
    assert [(s.train_size, s.eval_steps) for s in chosen] == [(100, 50), (500, 50)]
    plain = specs()
    assert [(s.train_size, s.epochs, s.eval_steps) for s in plain] == [(None, None, None)]


@pytest.mark.parametrize(("extra", "low_resource", "clash"), [
    (["--epochs", "3"], True, "--epochs"),  # the low-resource schedule sets the epochs of each size
    (["--lr=0.1"], False, "--lr"),
    (["--model", "x"], False, "--model"),
    (["--no-train-bias"], False, "--no-train-bias"),  # the variant sets it
])
def test_train_args_may_not_set_what_the_grid_sets(tmp_path: Path, extra: list[str], low_resource: bool,
                                                   clash: str) -> None:
    specs = expand_grid(["hadamard:train_bias=true"], ["sst2"], ["ref"], [42], [100], low_resource=low_resource)
    fake = FakeTrain()
    with pytest.raises(PeltError, match=f"the extra `pelt train` flags set {clash}, which the grid sets for each run"):
        run_grid(specs, tmp_path, GridSettings(extra_args=extra), runner=fake, log=lambda _: None)
    assert fake.calls == [] and not (tmp_path / "results.jsonl").exists()
    # flags the grid leaves alone pass through
    run_grid(specs, tmp_path, GridSettings(extra_args=["--epochs", "3", "--eval-batch-size", "8"] if not low_resource
                                           else ["--eval-batch-size", "8"]), runner=fake, log=lambda _: None)
    assert len(fake.calls) == 1


def test_a_grid_resumed_with_other_settings_is_refused(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard"], ["rte"], ["1e-3", "1e-2"], [42], [None])
    run_grid(specs[:1], tmp_path, GridSettings(extra_args=["--epochs", "3"]), runner=FakeTrain(), log=lambda _: None)
    before = (tmp_path / "results.jsonl").read_bytes()
    for settings, message in (
            (GridSettings(extra_args=["--epochs", "20"]), "`pelt train` flags '--epochs 3', and this grid asks for "
                                                          "'--epochs 20'"),
            (GridSettings(model="other", extra_args=["--epochs", "3"]), "model bundled all-MiniLM-L6-v2, and this "
                                                                        "grid asks for other"),
            (GridSettings(split_protocol="standard", extra_args=["--epochs", "3"]), "split protocol compacter")):
        fake = FakeTrain()
        with pytest.raises(PeltError, match=f"holds run rte/hadamard/lr0.001/seed42/nall made with {message}"):
            run_grid(specs, tmp_path, settings, runner=fake, log=lambda _: None)
        assert fake.calls == []
    assert (tmp_path / "results.jsonl").read_bytes() == before
    # the same grid at other epochs or evaluation steps is another experiment too
    with pytest.raises(PeltError, match="made with evaluation every N steps every epoch, and this grid asks for 50"):
        run_grid(expand_grid(["hadamard"], ["rte"], ["1e-3"], [42], [None], eval_steps=50), tmp_path,
                 GridSettings(extra_args=["--epochs", "3"]), runner=FakeTrain(), log=lambda _: None)
    resumed = FakeTrain()
    run_grid(specs, tmp_path, GridSettings(extra_args=["--epochs", "3"]), runner=resumed, log=lambda _: None)
    assert resumed.calls == ["rte/0.01"]
    # a failed run retried with the fix (other flags) replaces its record: not a mix
    run_grid(specs, tmp_path / "f", GridSettings(), runner=FakeTrain(fail_lr=1e-3), log=lambda _: None)
    fixed = FakeTrain()
    with pytest.raises(PeltError, match="made with `pelt train` flags ''"):  # the 1e-2 run finished: kept as it is
        run_grid(specs, tmp_path / "f", GridSettings(extra_args=["--batch-size", "8"]), runner=fixed,
                 retry_failed=True, log=lambda _: None)
    run_grid(specs[:1], tmp_path / "f", GridSettings(extra_args=["--batch-size", "8"]), runner=fixed,
             retry_failed=True, log=lambda _: None)
    assert fixed.calls == ["rte/0.001"]


def test_one_sweep_at_a_time_per_grid_folder(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard"], ["rte"], ["1e-3", "1e-2"], [42], [None])
    inner: list[str] = []

    def runner(cmd: list[str], output_dir: Path, env: dict) -> tuple[int, str]:
        if not inner:  # a second sweep on the same folder while this one runs
            with pytest.raises(PeltError, match=r"another pelt sweep \(pid \d+\) is running in"):
                run_grid(specs, tmp_path, GridSettings(), runner=FakeTrain(), log=lambda _: None)
            inner.append("refused")
        return FakeTrain()(cmd, output_dir)

    run_grid(specs, tmp_path, GridSettings(), runner=runner, log=lambda _: None)
    assert inner == ["refused"] and len(read_records(tmp_path / "results.jsonl")) == 2
    run_grid(specs, tmp_path, GridSettings(), runner=FakeTrain(), log=lambda _: None)  # released at the end


def test_bad_grid_folders_data_folders_and_results_files(tmp_path: Path) -> None:
    specs = expand_grid(["hadamard"], ["rte"], ["1e-3"], [42], [None])
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeltError, match="is a file; pass a folder"):
        run_grid(specs, tmp_path / "file", GridSettings(), runner=FakeTrain(), log=lambda _: None)
    with pytest.raises(PeltError, match="data folder .*missing does not exist; pass --data-dir"):
        run_grid(specs, tmp_path / "g", GridSettings(data_dir=str(tmp_path / "missing")), runner=FakeTrain(),
                 log=lambda _: None)
    (tmp_path / "results.jsonl").write_text('[1, 2]\n{"key": "a"}\n')
    with pytest.raises(PeltError, match=r"results.jsonl:1 is not a run record; the results file is damaged"):
        read_records(tmp_path / "results.jsonl")


@pytest.mark.parametrize(("train_args", "message"), [
    ("--epochs 'three", "--train-args \"--epochs 'three\": No closing quotation; give the flags as one quoted"),
    ("--epochs 3x", "--train-args for method hadamard: argument --epochs: invalid float value: '3x'"),
    ("--rank 4", "--train-args for method hadamard: unrecognized arguments: --rank 4"),
    ("--se 7", "--train-args for method hadamard: unrecognized arguments: --se 7"),  # no abbreviations
    ("--help", "--train-args cannot hold --help"),
])
def test_cli_sweep_checks_train_args_before_any_run(tmp_path: Path, train_args: str, message: str, capsys) -> None:
    code = main(["sweep", "--grid-dir", str(tmp_path / "g"), "--methods", "hadamard", "--tasks", "rte",
                 f"--train-args={train_args}"])
    assert code == 2
    assert capsys.readouterr().err.strip().startswith(f"pelt: error: {message}")
    assert not (tmp_path / "g").exists()
