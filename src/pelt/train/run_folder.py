"""A training run's output folder: held by one run at a time, and an earlier run replaced only once the new one
has finished.

Two `pelt train` into one folder would write the same checkpoints and results, the second silently replacing the
first; a run holds its folder from its first check to its results (`pelt.files.hold_folder`). With `overwrite`,
the earlier run's results and checkpoints move aside into a hidden folder and come back if the new run fails, is
interrupted or is killed (the next run into the folder puts them back), so a full disk or a typo never costs a
finished run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pelt.errors import PeltError
from pelt.files import hold_folder, make_writable_folder

RESULTS_FILE = "results.json"
ADAPTER_DIR = "adapter"  # the best checkpoint by validation metric
LAST_DIR = "last"  # the most recent checkpoint
RUN_PARTS = (RESULTS_FILE, ADAPTER_DIR, LAST_DIR)
REPLACED_DIR = ".pelt-replaced-run"  # an earlier run, kept while a run started with overwrite is under way


def _is_main_process() -> bool:
    """Under torchrun / accelerate every rank runs the pipeline; rank 0 alone owns the folder."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _restore(folder: Path) -> None:
    """Put an earlier run back in place of a run that did not finish."""
    aside = folder / REPLACED_DIR
    for name in RUN_PARTS:
        _remove(folder / name)
    for item in aside.iterdir():
        os.replace(item, folder / item.name)
    aside.rmdir()


def _recover(folder: Path) -> None:
    """A run started with overwrite that was killed left the earlier run aside: put it back, unless the killed
    run got as far as its results."""
    aside = folder / REPLACED_DIR
    if not aside.is_dir():
        return
    if (folder / RESULTS_FILE).is_file():
        shutil.rmtree(aside)
    else:
        _restore(folder)


@contextlib.contextmanager
def claim_run_folder(output_dir: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """The run's folder, created, writable and held for the block. Without `overwrite`, a folder that holds a
    run is refused; with it, that run is replaced when the block ends with results.json written, and restored
    if it ends any other way."""
    created = not Path(output_dir).exists()
    folder = make_writable_folder(output_dir, "--output-dir")
    if not _is_main_process():
        yield folder
        return
    try:
        with _held(folder, overwrite) as held:
            yield held
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a run that failed before writing anything leaves no empty folder behind


@contextlib.contextmanager
def _held(folder: Path, overwrite: bool) -> Iterator[Path]:
    refusal = (f"{folder} is in use: another pelt train is writing into it; wait for it to end, or pass another "
               "--output-dir")
    with hold_folder(folder, refusal):
        if (folder / REPLACED_DIR).exists() and not _claimed_here(folder):
            _recover(folder)
        if _claimed_here(folder):  # an outer claim of this process (finetune, then train_model) did the rest
            yield folder
            return
        earlier = [name for name in RUN_PARTS if (folder / name).exists()]
        if earlier and not overwrite:
            raise PeltError(f"{folder} already holds a run ({', '.join(earlier)}); pass another output folder, or "
                            "--overwrite (overwrite=True) to replace it")
        aside = folder / REPLACED_DIR
        if earlier:
            aside.mkdir()
            for name in earlier:
                os.replace(folder / name, aside / name)
        _claims.add(folder.resolve())
        finished = False
        try:
            yield folder
            finished = (folder / RESULTS_FILE).is_file()
        finally:
            _claims.discard(folder.resolve())
            if aside.is_dir():
                if finished:
                    shutil.rmtree(aside)
                else:
                    _restore(folder)


_claims: set[Path] = set()  # run folders claimed by this process


def _claimed_here(folder: Path) -> bool:
    return folder.resolve() in _claims
