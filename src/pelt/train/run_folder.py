"""A training run's output folder: held by one run at a time, and an earlier run replaced only once the new one
has finished.

Two `pelt train` into one folder would write the same checkpoints and results, the second silently replacing the
first; a run holds its folder from its first check to its results (`pelt.files.hold_folder`). With `overwrite`,
the earlier run's results and checkpoints move aside into a hidden folder and come back if the new run fails, is
interrupted or is killed (the next run into the folder puts them back), so a full disk or a typo never costs a
finished run.

Every step survives a kill at any point: the earlier run moves into `.pelt-replacing-run` and that folder is
renamed `.pelt-replaced-run` once it holds everything; a restore first removes the unfinished run's parts, then
renames the aside folder `.pelt-restoring-run` and moves its contents back. The next run into the folder finishes
whichever step a kill interrupted (`_recover`), and removes checkpoint saves a kill cut short.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from pelt.errors import PeltError
from pelt.files import hold_folder, make_writable_folder

RESULTS_FILE = "results.json"
ADAPTER_DIR = "adapter"  # the best checkpoint by validation metric
LAST_DIR = "last"  # the most recent checkpoint
RUN_PARTS = (RESULTS_FILE, ADAPTER_DIR, LAST_DIR)
MOVING_ASIDE = ".pelt-replacing-run"  # an earlier run being moved aside (incomplete)
ASIDE = ".pelt-replaced-run"  # an earlier run, whole, kept while a run started with overwrite is under way
RESTORING = ".pelt-restoring-run"  # an earlier run being put back (the unfinished run's parts already gone)


def is_main_process() -> bool:
    """Under torchrun / accelerate every rank runs the pipeline; rank 0 alone writes (and holds) the folder."""
    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "").strip()
        return int(text) if text.isdigit() else default
    return number("WORLD_SIZE", 1) <= 1 or number("RANK", 0) == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_back(folder: Path, source: Path) -> None:
    """Everything in `source` back into `folder`."""
    for item in source.iterdir():
        os.replace(item, folder / item.name)
    source.rmdir()


def _restore(folder: Path, parts: Sequence[str]) -> None:
    """Put the earlier run back in place of a run that did not finish."""
    for name in parts:
        _remove(folder / name)
    os.replace(folder / ASIDE, folder / RESTORING)
    _move_back(folder, folder / RESTORING)


def _recover(folder: Path, parts: Sequence[str]) -> None:
    """Finish what a killed process left half done, so that the folder holds one whole run (or none)."""
    if (folder / MOVING_ASIDE).is_dir():  # killed while moving aside: nothing new was written yet
        _move_back(folder, folder / MOVING_ASIDE)
    if (folder / RESTORING).is_dir():  # killed while putting back: the unfinished run's parts are already gone
        _move_back(folder, folder / RESTORING)
    if (folder / ASIDE).is_dir():
        if (folder / RESULTS_FILE).is_file():  # the run that replaced it finished; only the cleanup was cut
            shutil.rmtree(folder / ASIDE)
        else:
            _restore(folder, parts)
    for name in (ADAPTER_DIR, LAST_DIR):  # a checkpoint save cut between its two renames
        previous = folder / f".{name}.old"
        if previous.is_dir() and not (folder / name).exists():
            os.replace(previous, folder / name)
    for staging in folder.glob(".*.*"):  # a save cut while writing (no one else writes here now)
        if staging.is_dir() and staging.name.split(".")[1] in (ADAPTER_DIR, LAST_DIR):
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.is_file() and staging.name.startswith(f".{RESULTS_FILE}.") and staging.name.endswith(".tmp"):
            staging.unlink()


@contextlib.contextmanager
def claim_run_folder(output_dir: str | os.PathLike, *, overwrite: bool,
                     parts: Sequence[str] = RUN_PARTS) -> Iterator[Path]:
    """The run's folder, created, writable and held for the block. Without `overwrite`, a folder that holds a
    run (any of `parts`, results.json among them) is refused; with it, that run is replaced when the block ends
    with results.json written, and restored if it ends any other way."""
    created = not Path(output_dir).exists()
    folder = make_writable_folder(output_dir, "--output-dir")
    if not is_main_process():  # rank 0 holds the folder; every rank refuses a run in the way
        if not overwrite:
            _refuse_earlier_run(folder, parts)
        yield folder
        return
    refusal = (f"{folder} is in use: another pelt train is writing into it; wait for it to end, or pass another "
               "--output-dir")
    with hold_folder(folder, refusal):
        key = folder.resolve()
        if key in _claims:  # an outer claim of this process (finetune, then train_model) did the rest
            yield folder
            return
        try:
            _recover(folder, parts)
            with _replacing(folder, overwrite, parts):
                _claims.add(key)
                try:
                    yield folder
                finally:
                    _claims.discard(key)
        finally:
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a run that failed before writing anything leaves no empty folder behind


def _refuse_earlier_run(folder: Path, parts: Sequence[str]) -> list[str]:
    earlier = [name for name in parts if (folder / name).exists()]
    if earlier:
        raise PeltError(f"{folder} already holds a run ({', '.join(earlier)}); pass another output folder, or "
                        "--overwrite (overwrite=True) to replace it")
    return earlier


@contextlib.contextmanager
def _replacing(folder: Path, overwrite: bool, parts: Sequence[str]) -> Iterator[None]:
    earlier = [name for name in parts if (folder / name).exists()] if overwrite else _refuse_earlier_run(folder, parts)
    if earlier:
        moving = folder / MOVING_ASIDE
        moving.mkdir()
        for name in earlier:
            os.replace(folder / name, moving / name)
        os.replace(moving, folder / ASIDE)  # whole: from here on, a restore has everything
    finished = False
    try:
        yield
        finished = (folder / RESULTS_FILE).is_file()
    finally:
        if earlier:
            if finished:
                shutil.rmtree(folder / ASIDE)
            else:
                _restore(folder, parts)


_claims: set[Path] = set()  # run folders claimed by this process
