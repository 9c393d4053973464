"""Run a grid: one `pelt train` process per run, results appended to one JSON-lines file as they come.

One process per run keeps each run's memory figure clean and a crash contained. Runs with a record are skipped,
so a killed grid restarts where it stopped; a failed run is recorded with its error and the grid goes on
(`retry_failed` runs it again). A run stopped from outside (Ctrl-C, SIGTERM, a closed terminal) is not a failure:
it leaves no record and stops the grid, so the restart runs it again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pelt.errors import EXIT_INTERRUPTED
from pelt.harness.grid import GridSettings, RunSpec, read_records
from pelt.methods.base import format_option

__all__ = ["RESULTS_NAME", "run_grid"]

RESULTS_NAME = "results.jsonl"
RUNS_DIR = "runs"
# How a `pelt train` stopped from outside ends: its own exit code on Ctrl-C, a signal's negative code when
# it had no time to clean up, or 128 + the signal through a shell. SIGKILL is not here: the kernel's out-of-memory
# killer sends it, and a run that does not fit in memory is a failure to record, not one to retry forever.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTED_CODES = frozenset({EXIT_INTERRUPTED, *(-s for s in _STOP_SIGNALS), *(128 + s for s in _STOP_SIGNALS)})
# A progress bar ("Map:  37%|███▋ | 70/189 [01:02<01:45, 1.13it/s]", or "70it [00:01, 50.0it/s]" without a total):
# tqdm ends none with a newline, so an error printed after one shares its line.
_PROGRESS_BAR = re.compile(r"[^|\n]*\d+%\|[^|\n]*\|[^\[\n]*\[[^\]\n]*\]|\d+it \[[^\]\n]*\]")


def _command(spec: RunSpec, settings: GridSettings, output_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pelt.cli", "train", "--task", spec.task, "--method", spec.method,
           "--lr", repr(spec.learning_rate), "--seed", str(spec.seed), "--output-dir", str(output_dir),
           "--split-protocol", settings.split_protocol]
    for key, value in spec.options:
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else [f"--no-{key.replace('_', '-')}"] if value is False else [flag, format_option(value)]
    if spec.train_size is not None:
        cmd += ["--max-train-samples", str(spec.train_size)]
    if spec.epochs is not None:
        cmd += ["--epochs", f"{spec.epochs:g}"]
    if spec.eval_steps is not None:
        cmd += ["--eval-steps", str(spec.eval_steps)]
    if settings.data_dir:
        cmd += ["--data-dir", str(settings.data_dir)]
    if settings.model:
        cmd += ["--model", str(settings.model)]
    return cmd + list(settings.extra_args)


def _run_process(cmd: list[str], output_dir: Path) -> tuple[int, str]:
    """Run `pelt train`, its output in the run's folder (train.log, train.err); return the exit code and stderr."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "train.log", "w") as out, open(output_dir / "train.err", "w") as err:
        code = subprocess.run(cmd, stdout=out, stderr=err).returncode
    err = output_dir / "train.err"
    return code, err.read_text(errors="replace") if err.exists() else ""  # the folder may have been removed


def _append(path: Path, record: dict[str, Any]) -> None:
    """One line per record, flushed to disk before the next run starts."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """What a report needs from a run's results.json (the full file stays in the run's folder)."""
    keep = ("metrics", "main_metric", "selection_split", "best_checkpoint", "history", "parameters",
            "train_seconds", "optimizer_steps", "ms_per_step", "peak_memory_mb", "memory_kind", "split_sizes",
            "train_samples", "device")
    return {k: results.get(k) for k in keep}


def _error_line(stderr: str, code: int) -> str:
    """The line that says why a run failed: pelt's own error, else an exception, else the signal, else the last words.

    Progress bars are not reasons (a run killed mid-epoch leaves one as its last line of stderr): they are cut out.
    """
    lines = [text for line in stderr.splitlines() if (text := _PROGRESS_BAR.sub("", line).strip())]
    errors = [line for line in lines if line.startswith("pelt: error:") or "Error" in line.split(":")[0]]
    if errors:
        return errors[-1][:500]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return (lines or [f"exit code {code}"])[-1][:500]


def run_grid(
    specs: list[RunSpec],
    grid_dir: str | os.PathLike,
    settings: GridSettings,
    *,
    retry_failed: bool = False,
    runner: Callable[[list[str], Path], tuple[int, str]] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every spec that has no record yet; return all records of the grid (old and new)."""
    folder = Path(grid_dir)
    (folder / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    results_file = folder / RESULTS_NAME
    done = {r["key"]: r for r in read_records(results_file)}
    run = runner or _run_process
    todo = [s for s in specs if s.key not in done or (retry_failed and done[s.key]["status"] == "failed")]
    log(f"grid: {len(specs)} runs, {len(specs) - len(todo)} already recorded, {len(todo)} to run")
    for number, spec in enumerate(todo, 1):
        output_dir = folder / RUNS_DIR / spec.folder_name
        cmd = _command(spec, settings, output_dir)
        log(f"[{number}/{len(todo)}] {spec.key}")
        started = time.time()
        code, stderr = run(cmd, output_dir)
        if code in INTERRUPTED_CODES:
            log(f"  interrupted (exit code {code}): not recorded; rerun the same command to resume")
            raise KeyboardInterrupt
        record: dict[str, Any] = {"key": spec.key, **spec.to_dict(), "seconds": round(time.time() - started, 1),
                                  "settings": {"model": settings.model or "bundled all-MiniLM-L6-v2",
                                               "split_protocol": settings.split_protocol,
                                               "train_args": " ".join(settings.extra_args)}}
        results_json = output_dir / "results.json"
        if code == 0 and results_json.exists():
            record |= {"status": "ok", **_summary(json.loads(results_json.read_text()))}
        else:
            record |= {"status": "failed", "exit_code": code, "error": _error_line(stderr, code)}
            log(f"  failed: {record['error']}")
        _append(results_file, record)
        done[spec.key] = record
    return list(done.values())
