"""Run a grid: one `pelt train` process per run, results appended to one JSON-lines file as they come.

One process per run keeps each run's memory figure clean and a crash contained. Runs with a record are skipped,
so a killed grid restarts where it stopped; a failed run is recorded with its error and the grid goes on
(`retry_failed` runs it again). A run stopped from outside (Ctrl-C, SIGTERM, a closed terminal) is not a failure:
it leaves no record and stops the grid, so the restart runs it again. Several runs may go at once (`jobs`, each
job slot optionally on its own GPU): worker threads wait on the children, and the calling thread alone starts
runs and writes records, so a stop is seen before any further run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pelt.errors import EXIT_INTERRUPTED, PeltError
from pelt.files import strict_json
from pelt.harness.grid import GridSettings, RunSpec, read_records
from pelt.methods.base import format_option

__all__ = ["RESULTS_NAME", "run_grid", "sigterm_as_interrupt"]

RESULTS_NAME = "results.jsonl"
RUNS_DIR = "runs"
LOCK_NAME = ".sweep.lock"  # held by the sweep running in a grid folder (holds its pid)
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
           "--overwrite", "--split-protocol", settings.split_protocol]  # the run's folder is the grid's own
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


def child_dies_with_parent() -> Callable[[], None] | None:
    """What a child process runs before its program so that it is interrupted when its parent dies (a `kill -9`
    of the sweep leaves no `pelt train` running into its folders): Linux's parent-death signal, which fires when
    the thread that started the child ends, so the thread must wait for it (as `_run_process` does). None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl, set_disposition = libc.prctl, libc.signal
    except (OSError, AttributeError):
        return None
    set_disposition.restype = ctypes.c_void_p
    set_disposition.argtypes = [ctypes.c_int, ctypes.c_void_p]
    parent = os.getpid()
    set_parent_death_signal, default_action = 1, 0  # PR_SET_PDEATHSIG, SIG_DFL

    def arm() -> None:  # in the child, between fork and exec: nothing that takes a lock
        # A sweep started in the background by a shell without job control has SIGINT ignored, and its children
        # would inherit that; the default lets the child's Python turn SIGINT into KeyboardInterrupt again.
        set_disposition(signal.SIGINT, default_action)
        prctl(set_parent_death_signal, signal.SIGINT)  # an interrupt: the run stops as on Ctrl-C, and cleans up
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(EXIT_INTERRUPTED)

    return arm


class _Children:
    """The `pelt train` processes a grid has running, so that a stopped grid can end them, and start no more."""

    def __init__(self) -> None:
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self, cmd: list[str], **popen: Any) -> subprocess.Popen | None:
        """The started process, or None once the grid is stopping (checked with the start, so none slips past)."""
        with self._lock:
            if self._stopping:
                return None
            process = subprocess.Popen(cmd, preexec_fn=child_dies_with_parent(), **popen)
            self._processes.add(process)
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def alive(self) -> list[subprocess.Popen]:
        with self._lock:
            return [p for p in self._processes if p.poll() is None]

    def stop(self, grace: float = 2.0, cleanup: float = 10.0) -> None:
        """A Ctrl-C reached the children too, so give them `grace` seconds to stop on their own; then interrupt
        the rest and kill what is left after `cleanup` more (also if this wait is itself interrupted)."""
        with self._lock:
            self._stopping = True
        try:
            for wait_for, action in ((grace, None), (cleanup, signal.SIGINT)):
                alive = self.alive()
                if not alive:
                    return
                if action is not None:
                    for process in alive:
                        process.send_signal(action)
                end = time.time() + wait_for
                for process in alive:
                    try:
                        process.wait(timeout=max(0.0, end - time.time()))
                    except subprocess.TimeoutExpired:
                        pass
        finally:
            for process in self.alive():
                process.kill()


def _run_process(cmd: list[str], output_dir: Path, env: dict[str, str] | None = None,
                 children: _Children | None = None) -> tuple[int, str]:
    """Run `pelt train` (with `env` added to the environment), its output in the run's folder (train.log,
    train.err); return the exit code and stderr. A grid that is stopping starts nothing: the run comes back
    interrupted."""
    output_dir.mkdir(parents=True, exist_ok=True)
    children = children or _Children()
    with open(output_dir / "train.log", "w") as out, open(output_dir / "train.err", "w") as err:
        process = children.start(cmd, stdout=out, stderr=err, env={**os.environ, **env} if env else None)
        if process is None:
            return EXIT_INTERRUPTED, ""
        try:
            code = process.wait()
        finally:
            children.finished(process)
    err = output_dir / "train.err"
    return code, err.read_text(errors="replace") if err.exists() else ""  # the folder may have been removed


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler's preemption, `timeout`, `kill`) stops a grid as Ctrl-C does: its
    running children are interrupted and leave no record. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drop_cut_short_record(path: Path) -> bool:
    """Remove a last line that a kill cut short (a record is written whole, newline last), so that the next record
    starts on a line of its own; True if there was one."""
    if not path.exists():
        return False
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return False
        handle.truncate(data.rfind(b"\n") + 1)
    return True


def _append(path: Path, record: dict[str, Any]) -> None:
    """One line per record, flushed to disk before the next run starts."""
    with open(path, "a") as handle:
        handle.write(strict_json(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """What a report needs from a run's results.json (the full file stays in the run's folder)."""
    keep = ("metrics", "main_metric", "selection_split", "best_checkpoint", "history", "parameters",
            "train_seconds", "optimizer_steps", "ms_per_step", "peak_memory_mb", "memory_kind", "split_sizes",
            "train_samples", "device", "versions")
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


# What `pelt sweep` sets for every run, whether or not a run's command names it: --train-args must leave these alone.
_OWNED_FLAGS = frozenset({"model", "data-dir", "output-dir"})


def _flag(token: str) -> str:
    """The setting a flag names: `--no-train-bias` and `--train-bias=x` -> `train-bias`."""
    name = token.split("=", 1)[0][2:]
    return name[3:] if name.startswith("no-") else name


def _check_extra_args(specs: list[RunSpec], settings: GridSettings) -> None:
    """A flag among the extra `pelt train` arguments that the grid also sets would win (the last one does) and
    make a run train other than its key and report say: refuse it. (`pelt train` takes no abbreviations.)"""
    given = [t for t in settings.extra_args if t.startswith("--") and len(t) > 2]
    if not given:
        return
    plain = GridSettings(split_protocol=settings.split_protocol)
    owned = set(_OWNED_FLAGS) | {_flag(t) for spec in specs for t in _command(spec, plain, Path("run"))
                                 if t.startswith("--")}
    clash = sorted({t.split("=", 1)[0] for t in given if _flag(t) in owned})
    if clash:
        raise PeltError(f"the extra `pelt train` flags set {', '.join(clash)}, which the grid sets for each run; "
                        "set it through the grid instead (a method's options as NAME:key=value, learning rates, "
                        "seeds, training-set sizes, evaluation steps, model, data folder, split protocol)")


_SETTING_NAMES = {"model": "model", "split_protocol": "split protocol", "train_args": "`pelt train` flags",
                  "epochs": "epochs", "eval_steps": "evaluation every N steps"}


def _check_same_settings(specs: list[RunSpec], done: dict[str, dict[str, Any]], shared: dict[str, Any],
                         folder: Path, retry_failed: bool) -> None:
    """A run is skipped when its key has a record, and the key does not hold every setting: a resumed grid run
    with other settings would mix two experiments under one name. Refuse it (a failed run about to be retried
    is replaced, so it may differ)."""
    def shown(name: str, value: Any) -> str:
        if value is None:
            return "every epoch" if name == "eval_steps" else "the default"
        return repr(value) if name == "train_args" else str(value)

    for spec in specs:
        record = done.get(spec.key)
        if record is None or (retry_failed and record.get("status") == "failed"):
            continue
        recorded = record.get("settings") or {}
        differences = [(name, recorded[name], shared[name]) for name in ("model", "split_protocol", "train_args")
                       if name in recorded and recorded[name] != shared[name]]
        differences += [(name, record[name], getattr(spec, name)) for name in ("epochs", "eval_steps")
                        if name in record and record[name] != getattr(spec, name)]
        if differences:
            name, old, new = differences[0]
            raise PeltError(f"the grid folder {folder} holds run {spec.key} made with {_SETTING_NAMES[name]} "
                            f"{shown(name, old)}, and this grid asks for {shown(name, new)}; resume a grid with the "
                            "settings it was run with, or give this one another folder")


@contextlib.contextmanager
def _grid_lock(folder: Path) -> Iterator[None]:
    """One sweep per grid folder: two would run the same runs into the same folders and both append."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unguarded
        yield
        return
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: another sweep
            handle.seek(0)
            holder = handle.read().strip()
            raise PeltError(f"another pelt sweep{f' (pid {holder})' if holder.isdigit() else ''} is running in the "
                            f"grid folder {folder}; wait for it to end, or give this grid another folder") from None
        except OSError:  # a file system without locks (some network mounts): run unguarded
            yield
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_grid(
    specs: list[RunSpec],
    grid_dir: str | os.PathLike,
    settings: GridSettings,
    *,
    retry_failed: bool = False,
    jobs: int = 1,
    devices: list[str] | None = None,
    runner: Callable[[list[str], Path, dict[str, str]], tuple[int, str]] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every spec that has no record yet, `jobs` at a time; return all records of the grid (old and new).
    With `devices` (CUDA device ids), job slot i runs its runs on devices[i % len(devices)] alone
    (CUDA_VISIBLE_DEVICES), so several GPUs share the grid. Runs side by side get an equal share of the cores
    (OMP_NUM_THREADS) unless it is set already.

    This process alone writes the results file, one line per finished run, in the order runs finish. Once a run
    comes back interrupted no further run starts; the ones already running are waited for (recorded if they
    finish), then KeyboardInterrupt is raised."""
    if jobs < 1:
        raise PeltError(f"jobs must be at least 1, got {jobs}")
    if devices is not None and (not devices or not all(str(d).strip() for d in devices)):
        raise PeltError(f"devices must be a non-empty list of CUDA device ids, got {devices}")
    folder = Path(grid_dir)
    if folder.exists() and not folder.is_dir():
        raise PeltError(f"the grid folder {folder} is a file; pass a folder (it is created if missing)")
    if settings.data_dir and not Path(settings.data_dir).exists():
        raise PeltError(f"data folder {settings.data_dir} does not exist; pass --data-dir a folder holding glue/ "
                        "(or the task folders)")
    _check_extra_args(specs, settings)
    shared = {"model": settings.model or "bundled all-MiniLM-L6-v2", "split_protocol": settings.split_protocol,
              "train_args": " ".join(settings.extra_args)}
    (folder / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    with _grid_lock(folder):
        results_file = folder / RESULTS_NAME
        done = {r["key"]: r for r in read_records(results_file)}
        _check_same_settings(specs, done, shared, folder, retry_failed)
        if _drop_cut_short_record(results_file):
            log(f"dropped the last line of {results_file}: a record cut short when the grid was killed")
        todo = [s for s in specs if s.key not in done or (retry_failed and done[s.key]["status"] == "failed")]
        log(f"grid: {len(specs)} runs, {len(specs) - len(todo)} already recorded, {len(todo)} to run"
            + (f", {jobs} at a time" if jobs > 1 else ""))
        if jobs > 1:  # the runs' times and throughput were measured side by side
            shared["jobs"] = jobs
        return _run_todo(todo, folder, results_file, done, settings, shared, jobs, devices, runner, log)


def _run_todo(todo: list[RunSpec], folder: Path, results_file: Path, done: dict[str, dict[str, Any]],
              settings: GridSettings, shared: dict[str, Any], jobs: int, devices: list[str] | None,
              runner: Callable[[list[str], Path, dict[str, str]], tuple[int, str]] | None,
              log: Callable[[str], None]) -> list[dict[str, Any]]:
    """`run_grid`'s work once the grid folder is locked: the runs without a record, `jobs` at a time."""
    children = _Children()
    run = runner or (lambda cmd, output_dir, env: _run_process(cmd, output_dir, env, children))
    # Side by side, each run's torch would take every core: give each its share, unless the caller chose.
    shared_env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))} \
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ else {}
    free_slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(jobs):
        free_slots.put(slot)

    def execute(number: int, spec: RunSpec) -> tuple[int, str, float]:
        output_dir = folder / RUNS_DIR / spec.folder_name
        slot = free_slots.get()  # never waits: at most `jobs` runs hold one
        try:
            env = dict(shared_env)
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = str(devices[slot % len(devices)]).strip()
            log(f"[{number}/{len(todo)}] {spec.key}" + (f" (device {env['CUDA_VISIBLE_DEVICES']})" if devices else ""))
            started = time.time()
            code, stderr = run(_command(spec, settings, output_dir), output_dir, env)
            return code, stderr, time.time() - started
        finally:
            free_slots.put(slot)

    waiting = iter(enumerate(todo, 1))
    interrupted = False
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, RunSpec] = {}
        try:
            while True:
                while not interrupted and len(running) < jobs:  # started here, one at a time: none slips past a stop
                    item = next(waiting, None)
                    if item is None:
                        break
                    running[pool.submit(execute, *item)] = item[1]
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = running.pop(future)
                    record = _finished_record(future, spec, folder / RUNS_DIR / spec.folder_name, shared)
                    if record is None:
                        log(f"  {spec.key} interrupted: not recorded; rerun the same command to resume")
                        interrupted = True  # no further run starts; the running ones finish or stop themselves
                        continue
                    if record["status"] == "failed":
                        log(f"  {spec.key} failed: {record['error']}")
                    _append(results_file, record)
                    done[spec.key] = record
        except BaseException as stop:
            if isinstance(stop, KeyboardInterrupt):
                log("interrupted: the runs in progress are stopped, not recorded; rerun the same command to resume")
            pool.shutdown(wait=False, cancel_futures=True)
            children.stop()
            raise
    if interrupted:
        raise KeyboardInterrupt
    return list(done.values())


def _finished_record(future: Future, spec: RunSpec, output_dir: Path,
                     settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished run, or None when it was interrupted (to run again). A run whose runner or
    results broke is a failure of that run alone: its siblings are still recorded."""
    try:
        code, stderr, seconds = future.result()
        if code in INTERRUPTED_CODES:
            return None
        return _record(spec, code, stderr, seconds, output_dir, settings)
    except Exception as error:  # KeyboardInterrupt is not an Exception: it stops the grid
        return {"key": spec.key, **spec.to_dict(), "seconds": 0.0, "settings": dict(settings), "status": "failed",
                "exit_code": None, "error": f"{type(error).__name__}: {error}"[:500]}


def _record(spec: RunSpec, code: int, stderr: str, seconds: float, output_dir: Path,
            settings: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"key": spec.key, **spec.to_dict(), "seconds": round(seconds, 1),
                              "settings": dict(settings)}
    results_json = output_dir / "results.json"
    if code == 0 and results_json.exists():
        return record | {"status": "ok", **_summary(json.loads(results_json.read_text()))}
    return record | {"status": "failed", "exit_code": code, "error": _error_line(stderr, code)}
