"""What pelt writes to disk: whole or not at all, strict JSON, with the process's normal file mode, one writer
per folder, and every file-system fault said in one line."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pelt.errors import PeltError


def finite_or_none(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no such numbers (Python's `NaN` and
    `Infinity` are not JSON, and most readers refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, **options: Any) -> str:
    """JSON any reader accepts: non-finite numbers become null."""
    return json.dumps(finite_or_none(value), allow_nan=False, **options)


def default_file_mode() -> int:
    """The mode a plain open() would give a new file (0644 under the usual umask): files written through a
    temporary (mkstemp's are private) must stay readable to whoever reads the folder."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write beside `path`, then rename over it: a kill or a full disk mid-write leaves the previous file."""
    target = Path(path)
    handle, staged = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(staged, default_file_mode())
        os.replace(staged, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise
    return target


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write(folder)` fills a folder beside `target`, which is then swapped in: an interrupted save never
    damages what exists (cut between the two renames, the previous folder is `.<name>.old`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(staging)
        mode = default_file_mode()
        for file in staging.iterdir():  # on disk before the swap: a power cut cannot leave empty files behind
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
            file.chmod(mode)  # as a plain open() would make it (safetensors writes its file private)
        staging.chmod(mode | (mode & 0o444) >> 2)  # as a plain mkdir would make it (mkdtemp's is private)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """A results file: strict JSON, indented, written whole or not at all."""
    return write_text_atomically(path, strict_json(value, indent=2) + "\n")


def os_error_line(error: OSError) -> str:
    """An OS error as one line a user can act on: what failed, on which path, and the usual cure."""
    reason = error.strerror or str(error) or type(error).__name__
    paths = [str(p) for p in (error.filename, error.filename2) if p]
    where = f" ({' -> '.join(paths)})" if paths else ""
    advice = {errno.ENOSPC: "; free some space or write elsewhere",
              errno.EDQUOT: "; free some space or write elsewhere",
              errno.EACCES: "; choose a folder you can write to",
              errno.EPERM: "; choose a folder you can write to",
              errno.EROFS: "; choose a folder on a writable file system"}.get(error.errno or 0, "")
    return f"{reason}{where}{advice}"


def check_output_folder(path: str | os.PathLike | None, flag: str) -> Path:
    """Refuse, before any work, an output folder that cannot be one: empty, a file, or under a file."""
    if path is None or not str(path).strip():
        raise PeltError(f"{flag} is empty; give the folder to write into")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise PeltError(f"{flag} {folder} is a file; give a folder (existing or new)")
    for parent in folder.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise PeltError(f"{flag} {folder} lies under {parent}, which is a file; give a folder elsewhere")
            break
    return folder


def make_writable_folder(path: str | os.PathLike, flag: str) -> Path:
    """Create the folder (and its parents) and prove it takes a file, so that a run does not find out only when
    it saves its first checkpoint."""
    folder = check_output_folder(path, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".pelt-write-test.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        raise PeltError(f"cannot write into {flag} {folder}: {os_error_line(e)}") from None
    return folder


_held: dict[tuple[int, int], int] = {}  # folders this process holds: (device, inode) -> how many holds
_held_guard = threading.Lock()


@contextlib.contextmanager
def hold_folder(folder: Path, refusal: str, *, reentrant: bool = True) -> Iterator[None]:
    """Hold `folder` for this process: another process asking for it is refused with `refusal`.

    The lock is the operating system's (flock on the folder itself), so it goes with the process, `kill -9`
    included, and leaves no file behind. Holds nest within one process (a pipeline and the trainer it calls);
    with `reentrant=False` a second hold in this process is refused too (two servers on one state folder).
    File systems without locks (some network mounts) run unguarded.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    info = folder.stat()
    key = (info.st_dev, info.st_ino)
    with _held_guard:
        if key in _held and not reentrant:
            raise PeltError(refusal)
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PeltError(refusal) from None
        except OSError:
            pass  # no locks on this file system
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(handle)  # releases the lock
